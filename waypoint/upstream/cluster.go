package upstream

import "time"

// Envoy's defaults, used where a cluster leaves a field unset.
const (
	DefaultConnectTimeout        = 5 * time.Second
	DefaultHealthyPanicThreshold = 50.0 // percent
	DefaultMaxConnections        = 1024
	DefaultMaxPendingRequests    = 1024
	DefaultMaxRequests           = 1024
	DefaultMaxRetries            = 3
	DefaultChoiceCount           = 2
	DefaultMinimumRingSize       = 1024
	DefaultMaximumRingSize       = 8 * 1024 * 1024
	DefaultMaglevTableSize       = 65537
	DefaultOverprovisioning      = 140 // percent
	DefaultIdleTimeout           = time.Hour
	DefaultInitialFetchTimeout   = 15 * time.Second
)

// Cluster is one compiled Envoy cluster: a named group of endpoints
// discovered over EDS and how requests are spread over them.
type Cluster struct {
	Name string
	// EDSServiceName is the ClusterLoadAssignment's cluster_name that
	// carries this cluster's endpoints (the cluster's name unless
	// eds_cluster_config.service_name says otherwise).
	EDSServiceName string
	// EDSInitialFetchTimeout is how long the cluster waits for its first
	// endpoints before it is used without them; 0 waits indefinitely.
	EDSInitialFetchTimeout time.Duration
	ConnectTimeout         time.Duration

	LB LoadBalancing
	// Outlier is nil when the cluster has no outlier detection.
	Outlier *OutlierDetection
	Limits  Limits
	HTTP    HTTPOptions

	// Services and Subset come from the cluster's "istio" filter
	// metadata; they name the cluster in telemetry and carry no
	// behaviour.
	Services []ServiceRef
	Subset   string
}

// ServiceRef is one entry of the cluster metadata's services list.
type ServiceRef struct {
	Host, Name, Namespace string
}

// LBKind is a cluster's load-balancing policy.
type LBKind int

const (
	RoundRobin LBKind = iota
	LeastRequest
	Random
	RingHash
	Maglev
)

func (k LBKind) String() string {
	switch k {
	case RoundRobin:
		return "ROUND_ROBIN"
	case LeastRequest:
		return "LEAST_REQUEST"
	case Random:
		return "RANDOM"
	case RingHash:
		return "RING_HASH"
	case Maglev:
		return "MAGLEV"
	}
	return "unknown"
}

// ConsistentHash reports whether the policy picks by a request's hash
// (RING_HASH, MAGLEV): only then does a route's hash policy matter, and
// only then should the proxy compute it (and set a generated cookie).
func (k LBKind) ConsistentHash() bool { return k == RingHash || k == Maglev }

// LoadBalancing is how a cluster picks an endpoint.
type LoadBalancing struct {
	Kind LBKind
	// ChoiceCount is LEAST_REQUEST's number of random endpoints compared.
	ChoiceCount uint32
	// MinimumRingSize and MaximumRingSize bound RING_HASH's ring (xxHash).
	MinimumRingSize, MaximumRingSize uint64
	// MaglevTableSize is MAGLEV's lookup table size (a prime).
	MaglevTableSize uint64
	// LocalityWeighted spreads requests over the localities of a priority
	// by their weights first, then over each locality's endpoints.
	LocalityWeighted bool
	// HealthyPanicThreshold is the percentage of healthy endpoints below
	// which a priority's unhealthy endpoints are used too; 0 disables panic
	// mode.
	HealthyPanicThreshold float64
}

// OutlierDetection is Envoy's passive health checking as Istio configures
// it: ejection on consecutive errors only (success-rate and
// failure-percentage ejection are not implemented, and the compiler refuses
// a cluster that would enable them).
type OutlierDetection struct {
	Consecutive5xx            uint32
	EnforcingConsecutive5xx   uint32 // percent
	ConsecutiveGatewayFailure uint32
	EnforcingGatewayFailure   uint32 // percent
	// SplitExternalLocalOriginErrors counts local-origin errors (connect
	// failures, resets, timeouts) apart from the 5xx of the upstream.
	SplitExternalLocalOriginErrors bool
	ConsecutiveLocalOriginFailure  uint32
	EnforcingLocalOriginFailure    uint32 // percent
	Interval                       time.Duration
	BaseEjectionTime               time.Duration
	MaxEjectionTime                time.Duration
	MaxEjectionPercent             uint32
}

// Limits are the circuit breakers of the default priority.
type Limits struct {
	MaxConnections, MaxPendingRequests, MaxRequests, MaxRetries uint32
}

// Protocol is the HTTP version the waypoint speaks to a cluster's
// endpoints.
type Protocol int

const (
	// HTTP1 is Envoy's default when a cluster sets no protocol options.
	HTTP1 Protocol = iota
	HTTP2
	// Downstream uses the protocol of the request being forwarded.
	Downstream
)

func (p Protocol) String() string {
	switch p {
	case HTTP1:
		return "HTTP/1.1"
	case HTTP2:
		return "HTTP/2"
	case Downstream:
		return "downstream"
	}
	return "unknown"
}

// HTTPOptions are the cluster's upstream HTTP protocol options.
type HTTPOptions struct {
	Protocol Protocol
	// IdleTimeout closes an upstream connection without streams after this
	// long (default one hour); 0 never does.
	IdleTimeout time.Duration
	// MaxRequestsPerConnection is 0 for no limit.
	MaxRequestsPerConnection uint32
	// MaxConcurrentStreams bounds HTTP/2 streams per connection; 0 is the
	// default of the HTTP/2 client.
	MaxConcurrentStreams uint32
}
