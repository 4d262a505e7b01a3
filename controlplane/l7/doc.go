// Package l7 builds the Envoy v3 resources one waypoint serves: for each
// Service bound to the waypoint (istio.io/use-waypoint on the Service or its
// namespace, accepted by the waypoint's istio.io/waypoint-for), one Cluster
// per Service port and DestinationRule subset, named as istiod names a
// waypoint's clusters, and its ClusterLoadAssignment: the ready,
// mesh-enrolled pods the Service selects, each with its SPIFFE identity and
// labels in metadata, which the waypoint requires before it dials a pod.
//
// DestinationRule traffic policy (load balancing, outlier detection,
// connection pool) is merged as Istio merges it: a subset's groups replace
// the top-level ones, and port-level settings replace both for their port.
// A field the waypoint cannot honour is never dropped silently: it is
// returned as a Problem on its object.
//
// Workload-bound waypoints (pods labelled istio.io/use-waypoint) are not
// built yet: only service-bound traffic is.
//
// The package is pure: a snapshot in, resources out.
package l7
