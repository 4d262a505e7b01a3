package xds

import (
	"cmp"
	"context"
	"slices"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"google.golang.org/grpc/peer"
)

// stream is what the server knows of one connected proxy.
type stream struct {
	id        int64
	node      *corev3.Node
	peer      string
	principal string
	since     time.Time
	types     map[string]*typeState
}

// typeState is one subscription of a stream.
type typeState struct {
	sentNonce, sentVersion string
	sentAt                 time.Time
	sentResources          int
	ackedVersion           string
	ackedAt                time.Time
	nack                   string
	nackedVersion          string
	// pending maps nonces not yet answered to the version they carried.
	pending map[string]string
}

// ProxyStatus is one connected proxy, as /debug/syncz lists it.
type ProxyStatus struct {
	// ID is the node id the proxy sent, e.g. "ztunnel~node-a".
	ID string `json:"id"`
	// Node is the NODE_NAME metadata, if sent.
	Node      string       `json:"node,omitempty"`
	Peer      string       `json:"peer,omitempty"`
	Principal string       `json:"principal,omitempty"`
	Since     time.Time    `json:"connectedSince"`
	Types     []TypeStatus `json:"types"`
}

// TypeStatus is one subscription's sync state.
type TypeStatus struct {
	TypeURL string `json:"typeUrl"`
	// ServerVersion is the server's current version of the type; the proxy
	// is SYNCED when it has acked that version.
	ServerVersion string    `json:"serverVersion"`
	SentVersion   string    `json:"sentVersion,omitempty"`
	SentAt        time.Time `json:"sentAt,omitzero"`
	AckedVersion  string    `json:"ackedVersion,omitempty"`
	AckedAt       time.Time `json:"ackedAt,omitzero"`
	// State is SYNCED, NOT SENT (nothing sent since it subscribed), STALE
	// (the last response is not acked yet, or the server has moved on) or
	// NACKED (the proxy rejected its last response: Error says why).
	State string `json:"state"`
	Error string `json:"error,omitempty"`
}

// Syncz lists the connected proxies by id.
func (s *Server) Syncz() []ProxyStatus {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]ProxyStatus, 0, len(s.streams))
	for _, st := range s.streams {
		ps := ProxyStatus{ID: st.node.GetId(), Peer: st.peer, Principal: st.principal, Since: st.since}
		if v := st.node.GetMetadata().GetFields()["NODE_NAME"]; v != nil {
			ps.Node = v.GetStringValue()
		}
		for t, ts := range st.types {
			server := s.version[t].version
			if server == "" {
				server = "0"
			}
			status := TypeStatus{
				TypeURL: t, ServerVersion: server,
				SentVersion: ts.sentVersion, SentAt: ts.sentAt,
				AckedVersion: ts.ackedVersion, AckedAt: ts.ackedAt,
			}
			switch {
			case ts.nack != "" && ts.nackedVersion == ts.sentVersion:
				status.State, status.Error = "NACKED", ts.nack
			case ts.sentNonce == "":
				status.State = "NOT SENT"
			case ts.ackedVersion == server && len(ts.pending) == 0:
				status.State = "SYNCED"
			default:
				status.State = "STALE"
			}
			ps.Types = append(ps.Types, status)
		}
		slices.SortFunc(ps.Types, func(a, b TypeStatus) int { return cmp.Compare(a.TypeURL, b.TypeURL) })
		out = append(out, ps)
	}
	slices.SortFunc(out, func(a, b ProxyStatus) int { return cmp.Or(cmp.Compare(a.ID, b.ID), a.Since.Compare(b.Since)) })
	return out
}

// callbacks feeds the stream table from go-control-plane's server.
type callbacks struct{ s *Server }

var _ serverv3.Callbacks = callbacks{}

func (c callbacks) OnDeltaStreamOpen(ctx context.Context, id int64, _ string) error {
	st := &stream{id: id, since: time.Now(), types: map[string]*typeState{}}
	if p, ok := peer.FromContext(ctx); ok {
		st.peer = p.Addr.String()
	}
	st.principal = principalFrom(ctx)
	c.s.mu.Lock()
	c.s.streams[id] = st
	n := len(c.s.streams)
	c.s.mu.Unlock()
	c.s.metrics.connected.Set(float64(n))
	return nil
}

func (c callbacks) OnDeltaStreamClosed(id int64, node *corev3.Node) {
	c.s.mu.Lock()
	st := c.s.streams[id]
	delete(c.s.streams, id)
	n := len(c.s.streams)
	c.s.mu.Unlock()
	c.s.metrics.connected.Set(float64(n))
	if st != nil && st.node != nil {
		c.s.log.Info("proxy disconnected", "id", st.node.GetId(), "peer", st.peer)
	}
}

func (c callbacks) OnStreamDeltaRequest(id int64, req *discoveryv3.DeltaDiscoveryRequest) error {
	c.s.mu.Lock()
	defer c.s.mu.Unlock()
	st := c.s.streams[id]
	if st == nil {
		return nil
	}
	if st.node == nil && req.GetNode() != nil {
		st.node = req.GetNode()
		c.s.log.Info("proxy connected", "id", st.node.GetId(), "peer", st.peer, "principal", st.principal)
	}
	ts := st.types[req.GetTypeUrl()]
	if ts == nil {
		ts = &typeState{pending: map[string]string{}}
		st.types[req.GetTypeUrl()] = ts
	}
	nonce := req.GetResponseNonce()
	if nonce == "" {
		return nil
	}
	version, ok := ts.pending[nonce]
	if !ok {
		return nil
	}
	// Requests answer responses in order: older nonces are answered too.
	for n := range ts.pending {
		if nonceLE(n, nonce) {
			delete(ts.pending, n)
		}
	}
	if e := req.GetErrorDetail(); e != nil {
		ts.nack, ts.nackedVersion = e.GetMessage(), version
		c.s.metrics.nacks.WithLabelValues(req.GetTypeUrl()).Inc()
		c.s.log.Warn("proxy rejected config", "id", st.node.GetId(), "type", req.GetTypeUrl(), "version", version, "error", e.GetMessage())
		return nil
	}
	ts.ackedVersion, ts.ackedAt, ts.nack = version, time.Now(), ""
	return nil
}

func (c callbacks) OnStreamDeltaResponse(id int64, req *discoveryv3.DeltaDiscoveryRequest, resp *discoveryv3.DeltaDiscoveryResponse) {
	c.s.mu.Lock()
	defer c.s.mu.Unlock()
	st := c.s.streams[id]
	if st == nil {
		return
	}
	ts := st.types[resp.GetTypeUrl()]
	if ts == nil {
		ts = &typeState{pending: map[string]string{}}
		st.types[resp.GetTypeUrl()] = ts
	}
	ts.sentNonce, ts.sentVersion, ts.sentAt = resp.GetNonce(), resp.GetSystemVersionInfo(), time.Now()
	ts.sentResources = len(resp.GetResources())
	ts.pending[resp.GetNonce()] = resp.GetSystemVersionInfo()
	if at := c.s.version[resp.GetTypeUrl()].at; !at.IsZero() {
		c.s.metrics.pushLatency.WithLabelValues(resp.GetTypeUrl()).Observe(time.Since(at).Seconds())
	}
	c.s.metrics.responses.WithLabelValues(resp.GetTypeUrl()).Inc()
}

// nonceLE compares the server's decimal nonces.
func nonceLE(a, b string) bool {
	return len(a) < len(b) || len(a) == len(b) && a <= b
}

// State-of-the-world ADS and REST fetches are not served: ztunnel speaks
// delta only.

func (callbacks) OnStreamOpen(context.Context, int64, string) error { return errSotW }
func (callbacks) OnStreamClosed(int64, *corev3.Node)                {}
func (callbacks) OnStreamRequest(int64, *discoveryv3.DiscoveryRequest) error {
	return errSotW
}
func (callbacks) OnStreamResponse(context.Context, int64, *discoveryv3.DiscoveryRequest, *discoveryv3.DiscoveryResponse) {
}
func (callbacks) OnFetchRequest(context.Context, *discoveryv3.DiscoveryRequest) error {
	return errSotW
}
func (callbacks) OnFetchResponse(*discoveryv3.DiscoveryRequest, *discoveryv3.DiscoveryResponse) {}
