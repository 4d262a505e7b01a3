package upstream

import "net/netip"

// Assignment is a cluster's compiled ClusterLoadAssignment.
type Assignment struct {
	ClusterName string
	// Priorities holds the localities of priority 0, 1, …; a priority with
	// no locality is an empty level (Envoy's rule: it has no healthy
	// endpoints, so traffic spills past it).
	Priorities [][]Locality
	// OverprovisioningFactor is a percentage: a priority whose healthy
	// share times this factor reaches 100 takes all of the traffic.
	OverprovisioningFactor uint32
}

// Locality is a group of endpoints in one region/zone/sub-zone at one
// priority.
type Locality struct {
	Region, Zone, SubZone string
	// Weight is the locality's load-balancing weight; 0 when unset, which
	// under locality-weighted load balancing means it gets no traffic.
	Weight    uint32
	Endpoints []Endpoint
}

// Health is an endpoint's EDS health status, reduced to what load
// balancing distinguishes.
type Health int

const (
	Healthy Health = iota
	Degraded
	Unhealthy
)

func (h Health) String() string {
	switch h {
	case Healthy:
		return "healthy"
	case Degraded:
		return "degraded"
	case Unhealthy:
		return "unhealthy"
	}
	return "unknown"
}

// Endpoint is one workload behind a cluster. The waypoint reaches it over
// HBONE at Addr's IP (port 15008), asking for Addr in the CONNECT, and
// accepts the peer only if it presents Identity; or, for an endpoint
// outside the mesh (Plaintext), by plain TCP to Addr.
type Endpoint struct {
	Addr   netip.AddrPort
	Health Health
	Weight uint32 // at least 1
	// Identity is the workload's SPIFFE ID ("spiffe://td/ns/x/sa/y");
	// empty exactly when Plaintext.
	Identity string
	// Plaintext: the endpoint is outside the mesh (a ServiceEntry
	// endpoint with no mesh identity) and is dialled directly, without a
	// tunnel or TLS; zmeshd says so explicitly in its metadata.
	Plaintext bool
	// Labels are the workload's labels (for subsets and telemetry); never
	// modified after compilation.
	Labels map[string]string
	// Workload names the endpoint's workload for telemetry; zero fields
	// are unknown.
	Workload WorkloadInfo
}

// WorkloadInfo is what telemetry labels an endpoint with.
type WorkloadInfo struct {
	Name, Namespace                     string
	CanonicalService, CanonicalRevision string
	Cluster                             string
	App, Version                        string
}
