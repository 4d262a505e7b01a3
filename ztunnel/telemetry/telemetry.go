package telemetry

import (
	"errors"
	"log/slog"
	"net/netip"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Response flags, the values of the response_flags label that Istio's
// ztunnel reports on a closed connection.
const (
	FlagNone               = "-"                    // completed normally
	FlagDenied             = "DENY"                 // refused by authorization policy
	FlagConnectFailure     = "CONNECT"              // no upstream connection; also the default for an unclassified error
	FlagTLSFailure         = "TLS_FAILURE"          // TLS handshake failed
	FlagH2HandshakeFailure = "H2_HANDSHAKE_FAILURE" // HTTP/2 (HBONE) handshake failed
	FlagNetworkPolicy      = "NETWORK_POLICY"       // HBONE port blocked, likely by a network policy
	FlagIdentityError      = "IDENTITY_ERROR"       // no certificate for the identity needed
	FlagCertRevoked        = "CERT_REVOKED"         // peer certificate revoked
)

// Direction says which side of the connection this ztunnel serves, and so
// which reporter it is in Istio's terms.
type Direction int

const (
	// Outbound: a local workload is the client; reporter="source".
	Outbound Direction = iota
	// Inbound: a local workload is the server; reporter="destination".
	Inbound
)

func (d Direction) String() string {
	if d == Inbound {
		return "inbound"
	}
	return "outbound"
}

func (d Direction) reporter() string {
	if d == Inbound {
		return "destination"
	}
	return "source"
}

// Peer is one end of a connection as the proxy resolved it. Empty strings
// are reported as "unknown".
type Peer struct {
	Addr netip.AddrPort

	// Pod is the instance name (pod name) the access log shows; Workload is
	// the workload it belongs to (e.g. the Deployment), the *_workload label.
	Pod, Workload, Namespace string
	// Identity is the SPIFFE ID, "spiffe://td/ns/<ns>/sa/<sa>".
	Identity string
	// CanonicalName and CanonicalRevision give the *_canonical_service and
	// *_canonical_revision labels, and also *_app and *_version, as Istio's
	// ztunnel does.
	CanonicalName, CanonicalRevision string
	Cluster                          string

	// Service, ServiceName and ServiceNamespace describe the service the
	// client addressed (destination_service is the hostname). Only the
	// destination's are reported.
	Service, ServiceName, ServiceNamespace string
}

// ConnInfo is what the proxy knows about a connection when it opens it.
type ConnInfo struct {
	Direction Direction
	Src, Dst  Peer
	// HBONETarget is the address inside the HBONE tunnel (the CONNECT
	// authority) when the connection is tunnelled; Dst.Addr is then the
	// tunnel's own address (…:15008). Zero when not tunnelled.
	HBONETarget netip.AddrPort
	// Secure is true when the connection is carried over mutual TLS, so
	// the identities in Src and Dst were proven.
	Secure bool
	// Start is when the connection was accepted; zero means at Open.
	Start time.Time
}

// Result is how a connection ended.
type Result struct {
	// Bytes as seen by the client (downstream) side, whichever side is
	// local: Sent flowed client→server, Received server→client. They are
	// totals; bytes already reported with Conn.AddSent and AddReceived are
	// not counted twice.
	Sent, Received int64
	// Err is why the connection failed, nil if it did not.
	Err error
	// Reason is a human explanation for the log, e.g. which policy denied
	// the connection.
	Reason string
	// Policy is the authorization policy ("namespace/name") that allowed
	// or denied the connection, "" when none decided (no ALLOW policy
	// applies, or the connection is outbound). PeerAuthentication is set
	// instead when the deciding policy is the one a PeerAuthentication
	// became (STRICT), so that the log names what the user wrote.
	Policy, PeerAuthentication string
	// Flags is the response_flags value (one of the Flag constants). Empty
	// means FlagNone on success and FlagConnectFailure on an error.
	Flags string
	// Unlogged counts the connection in the metrics but writes no
	// access-log line: the proxy sets it on refusals over their log rate,
	// which a peer could otherwise turn into a flood of lines.
	Unlogged bool
}

// Telemetry records connection metrics and access logs. It is safe for
// concurrent use.
type Telemetry struct {
	m      *metrics
	limits *prometheus.CounterVec
	log    *slog.Logger
}

// New registers the TCP metrics with reg and writes access logs to log.
func New(reg prometheus.Registerer, log *slog.Logger) (*Telemetry, error) {
	if reg == nil {
		return nil, errors.New("new telemetry: nil registerer")
	}
	if log == nil {
		return nil, errors.New("new telemetry: nil logger")
	}
	m, err := newMetrics(reg)
	if err != nil {
		return nil, err
	}
	limits, err := newLimitMetric(reg)
	if err != nil {
		return nil, err
	}
	return &Telemetry{m: m, limits: limits, log: log}, nil
}

// Conn is one open connection. Close it exactly once; later calls do
// nothing.
type Conn struct {
	t    *Telemetry
	info ConnInfo
	s    *series // under FlagNone

	// Bytes already counted while flowing.
	sent, received atomic.Int64
	closed         atomic.Bool
}

// Open counts a connection as opened. Call it once the proxy knows where
// the connection goes, also when it is about to refuse it, so that every
// Close has an Open.
func (t *Telemetry) Open(ci ConnInfo) *Conn {
	if ci.Start.IsZero() {
		ci.Start = time.Now()
	}
	l := labelsFor(&ci, FlagNone)
	c := &Conn{t: t, info: ci, s: t.m.series(&l)}
	c.s.opened.Inc()
	t.logOpen(c)
	return c
}

// AddSent counts n bytes sent client→server as they flow, so that rates
// show long-lived connections while they last; Istio's ztunnel counts
// bytes this way. Calling it is optional: Close counts what is left. It
// may be called from the copying goroutines, but not after Close.
func (c *Conn) AddSent(n int64) {
	c.sent.Add(n)
	// Istio, after Envoy, names byte counters from the downstream's
	// side: what the proxy received from the client is "received".
	c.s.received.Add(float64(n))
}

// AddReceived counts n bytes sent server→client as they flow; see AddSent.
func (c *Conn) AddReceived(n int64) {
	c.received.Add(n)
	c.s.sent.Add(float64(n))
}

// Close counts the connection as closed, with its flags, adds the bytes
// not yet counted, and writes its access-log line.
func (c *Conn) Close(r Result) {
	if !c.closed.CompareAndSwap(false, true) {
		return
	}
	if r.Flags == "" {
		r.Flags = FlagNone
		if r.Err != nil {
			r.Flags = FlagConnectFailure
		}
	}
	r.Sent = settle(&c.sent, r.Sent, c.s.received)
	r.Received = settle(&c.received, r.Received, c.s.sent)

	if r.Flags == FlagNone {
		c.s.closed.Inc()
	} else {
		l := labelsFor(&c.info, r.Flags)
		s := c.t.m.series(&l)
		s.closed.Inc()
		s.failed.Inc()
	}
	if !r.Unlogged {
		c.t.logClose(c, &r)
	}
}

// settle adds to ctr what total has beyond what was already counted in
// counted, and returns the larger of the two.
func settle(counted *atomic.Int64, total int64, ctr prometheus.Counter) int64 {
	done := counted.Load()
	if total <= done {
		return done
	}
	ctr.Add(float64(total - done))
	return total
}
