// Package telemetry turns the waypoint's per-request records into Istio's
// standard metrics and one JSON access-log line per request.
package telemetry

import (
	"net/netip"
	"time"
)

// Record is what the proxy knows about one finished request (or one TCP
// connection forwarded without HTTP), handed to an Observer when it ends.
type Record struct {
	Start    time.Time
	Duration time.Duration

	// Protocol is "HTTP/1.1", "HTTP/2" or "TCP".
	Protocol  string
	Method    string
	Path      string // as received, with query
	Authority string
	UserAgent string
	RequestID string // x-request-id, as sent upstream
	// ResponseCode is 0 when no response was sent (TCP, or a reset).
	ResponseCode int
	// ResponseFlags are Envoy's short flags joined with ",", e.g. "NR",
	// "UH", "URX,UF"; "-" when none.
	ResponseFlags string
	// GRPCStatus is the grpc-status the client received, "" when the
	// request was not gRPC.
	GRPCStatus    string
	BytesReceived int64 // request body bytes from the client
	BytesSent     int64 // response body bytes to the client

	RouteName       string
	UpstreamCluster string
	UpstreamHost    netip.AddrPort // zero when no endpoint was chosen
	// PolicyName names the authorization policy that decided, if any.
	PolicyName string

	Source      Peer
	Destination Peer
	// DestinationService is the service host (FQDN) the request was for.
	DestinationService          string
	DestinationServiceName      string
	DestinationServiceNamespace string
}

// Peer is one side of a request as telemetry labels it.
type Peer struct {
	Principal string // SPIFFE ID, "" when unknown
	Workload  string
	Namespace string
	App       string
	Version   string
	Addr      netip.AddrPort
	// CanonicalService and CanonicalRevision are Istio's canonical names
	// of the workload; when empty, metrics derive them from App (else
	// Workload) and Version (else "latest").
	CanonicalService, CanonicalRevision string
	// Cluster is the workload's cluster ID; when empty, metrics report
	// the mesh's.
	Cluster string
}

// Observer receives every finished request. Observe must not block and
// must not keep r after it returns.
type Observer interface {
	Observe(r *Record)
}

// Discard is an Observer that drops every record.
type Discard struct{}

func (Discard) Observe(*Record) {}
