package config

import (
	"net/netip"

	"google.golang.org/protobuf/proto"

	"github.com/zmesh/zmesh/waypoint/filter/fault"
	"github.com/zmesh/zmesh/waypoint/filter/jwt"
	"github.com/zmesh/zmesh/waypoint/filter/rbac"
	"github.com/zmesh/zmesh/waypoint/route"
	"github.com/zmesh/zmesh/waypoint/upstream"
)

// Snapshot is everything a waypoint runs at one moment, compiled from one
// consistent set of Listener, RouteConfiguration, Cluster and
// ClusterLoadAssignment resources. It is never modified after it is built:
// the proxy swaps whole snapshots, and a request keeps the snapshot it
// started with.
type Snapshot struct {
	// Version names the resource versions the snapshot was built from
	// (for logs and /config_dump).
	Version string
	// Chains maps a tunnel's destination (the :authority of an HBONE
	// CONNECT: a service VIP:port, or a workload IP:port for a waypoint
	// that serves workloads) to what the waypoint does with it. A
	// destination absent from the map is refused.
	Chains map[netip.AddrPort]*Chain
	// Routes are the compiled route configurations by name.
	Routes map[string]*route.Table
	// Clusters and Assignments are keyed by cluster name and by
	// ClusterLoadAssignment cluster_name (Cluster.EDSServiceName).
	Clusters    map[string]*upstream.Cluster
	Assignments map[string]*upstream.Assignment
	// Resources are the resources the snapshot was compiled from, by type
	// URL then name, for /config_dump.
	Resources map[string]map[string]proto.Message
	// Versions are the resources' versions, by type URL then name, when
	// known (for /config_dump); may be nil.
	Versions map[string]map[string]string
}

// ChainProtocol is how a destination's bytes are handled.
type ChainProtocol uint8

const (
	// ChainTCP forwards the tunnel's bytes to TCPCluster.
	ChainTCP ChainProtocol = iota
	// ChainHTTP serves HTTP/1.1 or HTTP/2 (by the h2 preface) and routes
	// each request with RouteConfig.
	ChainHTTP
	// ChainSniff reads the first bytes: an HTTP/1.x request line or the
	// HTTP/2 preface is served as ChainHTTP, anything else as ChainTCP.
	ChainSniff
)

func (p ChainProtocol) String() string {
	switch p {
	case ChainTCP:
		return "tcp"
	case ChainHTTP:
		return "http"
	case ChainSniff:
		return "sniff"
	}
	return "unknown"
}

// Chain is one destination's compiled filter chain.
type Chain struct {
	// Name is the filter chain's name, e.g.
	// "inbound-vip|80|http|reviews.default.svc.cluster.local".
	Name     string
	Protocol ChainProtocol
	// RouteConfig names the route configuration (RDS) HTTP requests are
	// routed with; set for ChainHTTP and ChainSniff.
	RouteConfig string
	// HTTPFilters run in order before routing; set for ChainHTTP and
	// ChainSniff.
	HTTPFilters []HTTPFilter
	// TCPCluster is where non-HTTP bytes go; set for ChainTCP and
	// ChainSniff.
	TCPCluster string
	// TCPFilters check a tunnel once, before any of its bytes are
	// forwarded to TCPCluster (each has RBAC set: the network RBAC
	// filters of the TCP chain, in order); set for ChainTCP and
	// ChainSniff, where they see only the bytes that are not HTTP.
	TCPFilters []HTTPFilter
	// ConnFilters check a tunnel once, before any HTTP of it is served
	// (each has RBAC set: the network RBAC filters before the HTTP
	// connection manager, in order); set for ChainHTTP and ChainSniff,
	// where they see only the tunnels sniffed as HTTP (TCPFilters have
	// the others).
	ConnFilters []HTTPFilter
	// StatPrefix names the chain in metrics and logs.
	StatPrefix string
	// NormalizePath and MergeSlashes are the connection manager's path
	// normalisation (RFC 3986 dot segments; "//" to "/"), applied before
	// filters and routing see the path; set for ChainHTTP and ChainSniff.
	NormalizePath, MergeSlashes bool
}

// HTTPFilter is one compiled HTTP filter of a chain. Exactly one of its
// fields is set.
type HTTPFilter struct {
	Name string
	// RBAC decides whether a request may proceed (DENY/ALLOW/AUDIT
	// engines of one envoy.filters.http.rbac filter).
	RBAC *rbac.Set
	// Fault is the filter-level fault (a route's per-filter config, when
	// present, replaces it).
	Fault *fault.Fault
	// JWT verifies the request's tokens (envoy.filters.http.jwt_authn);
	// the RBAC filters after it see the verified principal and claims.
	JWT *jwt.Filter
}
