package l7

import (
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
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
}

// Resources are what one waypoint is sent. Clusters and Endpoints are
// sorted by name; Problems by object, then field.
type Resources struct {
	Listeners []*listenerv3.Listener
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
// object left out; it becomes a status condition on the object.
type Problem struct {
	Object ObjectRef
	// Field is the field path within the object, e.g.
	// "spec.trafficPolicy.tls".
	Field   string
	Message string
}

func (p Problem) String() string {
	return p.Object.String() + ": " + p.Field + ": " + p.Message
}

// Labels read besides the waypoint vocabulary of the model package.
const (
	// labelLocality is Istio's per-pod locality override,
	// "region.zone.subzone".
	labelLocality = "istio-locality"
)

// servicePort is one port of a bound Service, with what its clusters share.
type servicePort struct {
	port       int32
	targetPort intOrName
	// protocol is "http" or "tcp", the cluster name's protocol part.
	protocol string
	// http2 tells that the port speaks HTTP/2 (appProtocol or name).
	http2 bool
}

type intOrName struct {
	num  int32
	name string
}
