// Package upstream holds the waypoint's compiled model of where requests
// go: clusters (load-balancing policy, outlier detection, connection
// limits, upstream protocol) and their endpoints (address, locality,
// priority, weight, health, and the SPIFFE identity the waypoint must see
// when it dials the endpoint over HBONE), and the Balancer that picks a
// request's endpoint from them as Envoy would.
//
// Clusters and assignments are built by waypoint/config from Envoy
// resources and are never modified afterwards, so any number of goroutines
// may read them. A Balancer adds the live state picks depend on (requests
// in flight, ejections), behind atomics. The package does no I/O and
// starts no goroutines. It must not import controlplane/ or ztunnel/.
package upstream
