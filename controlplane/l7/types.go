package l7

import (
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"

	"github.com/zmesh/zmesh/controlplane/model"
)

// Options are the mesh settings a build depends on.
type Options struct {
	Mesh model.Mesh
	// RequireRedirectionAnnotation counts a pod as enrolled only once the
	// CNI agent has annotated it, as the ztunnel translation does.
	RequireRedirectionAnnotation bool
	// JWKS resolves RequestAuthentication jwksUris to the key sets zmeshd
	// fetched; nil: none is known, and tokens of those issuers fail.
	JWKS JWKSResolver
	// Locality is the waypoint's: load assignments are prioritised and
	// weighted relative to it (localityLbSetting). nil builds them with no
	// priorities, as for a waypoint whose locality is unknown.
	Locality *corev3.Locality
}

// Resources are what one waypoint is sent. Clusters, Endpoints and Routes
// are sorted by name; Problems by object, then field.
type Resources struct {
	// Listeners is the one listener, main_internal, with a filter chain per
	// bound Service port (none when nothing is bound).
	Listeners []*listenerv3.Listener
	// Routes has one route configuration per bound Service port that is
	// HTTP or sniffed, named like its HTTP filter chain.
	Routes    []*routev3.RouteConfiguration
	Clusters  []*clusterv3.Cluster
	Endpoints []*endpointv3.ClusterLoadAssignment
	Problems  []Problem
}

// ObjectRef names the object a problem is about.
type ObjectRef struct {
	Kind, Namespace, Name string
}

func (r ObjectRef) String() string { return r.Kind + " " + r.Namespace + "/" + r.Name }

// Problem is a field of an object that the waypoint cannot honour, or an
// object left out; it becomes a status condition on the object. For the
// routing kinds (VirtualService, HTTPRoute, GRPCRoute) an object in force
// is also reported, with Reason Accepted, so that status can say so.
type Problem struct {
	Object ObjectRef
	// Field is the field path within the object, e.g.
	// "spec.trafficPolicy.tls"; empty when the problem is the whole object.
	Field   string
	Message string
	// Reason is what the problem means for the object's status.
	Reason Reason
}

func (p Problem) String() string {
	s := p.Object.String() + " (" + string(p.Reason) + ")"
	if p.Field != "" {
		s += ": " + p.Field
	}
	return s + ": " + p.Message
}

// Reason classifies a Problem, in the vocabulary of Gateway API route
// conditions.
type Reason string

const (
	// ReasonAccepted: the object is in force on this waypoint (Accepted
	// True). Other problems of the same object may still name fields that
	// are ignored.
	ReasonAccepted Reason = "Accepted"
	// ReasonUnsupportedValue: the field is ignored (or, where ignoring it
	// would widen what the object allows, the part of the object it is in
	// is left out); the rest is in force.
	ReasonUnsupportedValue Reason = "UnsupportedValue"
	// ReasonBackendNotFound: a destination or backend does not resolve to a
	// Service port; that destination gets no traffic.
	ReasonBackendNotFound Reason = "BackendNotFound"
	// ReasonNotExported: the object is not visible to the waypoint's
	// namespace (exportTo); the whole object is ignored.
	ReasonNotExported Reason = "NotExported"
	// ReasonOverridden: another object configures the same host and wins;
	// the whole object is ignored for that host.
	ReasonOverridden Reason = "Overridden"
	// ReasonConflicted: another object configures the same host too and
	// is ignored for it; this one is in force.
	ReasonConflicted Reason = "Conflicted"
	// ReasonNoWaypoint: none of the object's hosts or parents is bound to
	// a waypoint; the object has no effect (Unbound reports it).
	ReasonNoWaypoint Reason = "NoWaypoint"
	// ReasonNotAllowed: the attachment is not allowed (a route in another
	// namespace than its parent Service); ignored.
	ReasonNotAllowed Reason = "NotAllowedByParent"
)

// Labels read besides the waypoint vocabulary of the model package.
const (
	// labelLocality is Istio's per-pod locality override,
	// "region.zone.subzone".
	labelLocality = "istio-locality"
)

// servicePort is one port of a bound Service, with what its clusters share.
type servicePort struct {
	// name is the port's name, which a Gateway API parentRef's
	// sectionName selects.
	name       string
	port       int32
	targetPort intOrName
	// protocol is "http" or "tcp", the cluster name's protocol part.
	protocol string
	// sniffed: neither appProtocol nor the port name says the protocol, so
	// the waypoint reads the first bytes; the port has an "http" and a
	// "tcp" cluster.
	sniffed bool
	// http2 tells that the port speaks HTTP/2 (appProtocol or name).
	http2 bool
}

type intOrName struct {
	num  int32
	name string
}
