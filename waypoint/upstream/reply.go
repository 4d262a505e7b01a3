package upstream

import "net/http"

// LocalReply is a response the waypoint makes itself when a request has no
// route, cannot reach an endpoint, or did not hear from one: Envoy's, word
// for word, so that what users copy from Istio's docs (and alert on) reads
// the same.
type LocalReply struct {
	Status int
	// Body is sent as text/plain (or as a gRPC reply's grpc-message),
	// without a trailing newline; empty for NoRoute and NoCluster.
	Body string
	// Flag is Envoy's response flag for the access log and metrics.
	Flag string
	// Overloaded replies carry "x-envoy-overloaded: true"
	// (OverloadedHeader), as Envoy's router marks circuit-breaker refusals.
	Overloaded bool
}

// OverloadedHeader is the header Envoy adds, with value "true", to a reply
// refused by a circuit breaker.
const OverloadedHeader = "x-envoy-overloaded"

// Envoy's response flags for the upstream local replies.
const (
	FlagNoRoute               = "NR"
	FlagNoCluster             = "NC"
	FlagNoHealthyUpstream     = "UH"
	FlagConnectFailure        = "UF"
	FlagOverflow              = "UO"
	FlagConnectionTermination = "UC"
	FlagUpstreamTimeout       = "UT"
)

// The upstream local replies.
var (
	// NoRoute: no route matches the request (an empty body, as Envoy's).
	NoRoute = LocalReply{Status: http.StatusNotFound, Flag: FlagNoRoute}
	// NoCluster: the route names a cluster the snapshot does not have (an
	// empty body, as Envoy's).
	NoCluster = LocalReply{Status: http.StatusServiceUnavailable, Flag: FlagNoCluster}
	// NoHealthyUpstream: the balancer has no endpoint to pick (none, all
	// unhealthy, or all ejected without panic mode).
	NoHealthyUpstream = LocalReply{Status: http.StatusServiceUnavailable,
		Body: "no healthy upstream", Flag: FlagNoHealthyUpstream}
	// Overflow: a circuit breaker refused the request (max_pending_requests,
	// max_requests) or no connection pool could be had.
	Overflow = LocalReply{Status: http.StatusServiceUnavailable,
		Body: "upstream connect error or disconnect/reset before headers. reset reason: overflow",
		Flag: FlagOverflow, Overloaded: true}
	// ConnectFailure: no connection to the endpoint (refused, handshake or
	// identity check failed, connect_timeout).
	ConnectFailure = LocalReply{Status: http.StatusServiceUnavailable,
		Body: "upstream connect error or disconnect/reset before headers. reset reason: connection failure",
		Flag: FlagConnectFailure}
	// ConnectionTermination: the connection closed before the response
	// headers.
	ConnectionTermination = LocalReply{Status: http.StatusServiceUnavailable,
		Body: "upstream connect error or disconnect/reset before headers. reset reason: connection termination",
		Flag: FlagConnectionTermination}
	// UpstreamTimeout: the route's timeout (or the last attempt's per-try
	// timeout) ran out; the upstream request is cancelled.
	UpstreamTimeout = LocalReply{Status: http.StatusGatewayTimeout,
		Body: "upstream request timeout", Flag: FlagUpstreamTimeout}
)

// Retried returns the reply as Envoy words it when the request was
// retried before it failed: a reset reply says "retried and the latest
// reset reason: …"; other replies are unchanged. The result is one of a
// few fixed strings (no allocation).
func (r LocalReply) Retried() LocalReply {
	switch r.Body {
	case Overflow.Body:
		r.Body = retriedOverflow
	case ConnectFailure.Body:
		r.Body = retriedConnectFailure
	case ConnectionTermination.Body:
		r.Body = retriedConnectionTermination
	}
	return r
}

const (
	retriedOverflow              = "upstream connect error or disconnect/reset before headers. retried and the latest reset reason: overflow"
	retriedConnectFailure        = "upstream connect error or disconnect/reset before headers. retried and the latest reset reason: connection failure"
	retriedConnectionTermination = "upstream connect error or disconnect/reset before headers. retried and the latest reset reason: connection termination"
)
