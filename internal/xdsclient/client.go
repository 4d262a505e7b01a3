package xdsclient

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"sync"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/anypb"
)

// Type URLs of the workload discovery resources, wire-compatible with
// Istio's.
const (
	TypeAddress       = "type.googleapis.com/istio.workload.Address"
	TypeAuthorization = "type.googleapis.com/istio.security.Authorization"
)

// Resource is one named, versioned resource of a response. Body's type URL
// is the response's type: the client checks it before the handler sees it.
type Resource struct {
	Name, Version string
	Body          *anypb.Any
}

// Handler is the client's consumer: ztunnel's state store.
type Handler interface {
	// Apply applies one response's changes to resources of typeURL. It
	// applies every change it can and returns an error for each one it
	// rejected, keyed by resource name; a rejected resource keeps its last
	// good copy, and the response is NACKed naming it. A nil or empty map
	// ACKs the response.
	//
	// Apply runs on Run's goroutine, one call at a time; it must not block
	// on anything that waits for the client.
	Apply(typeURL string, updated []Resource, removed []string) map[string]error
}

// Config configures a Client.
type Config struct {
	// Conn reaches the control plane. The caller dials it, with TLS and
	// per-RPC credentials, and closes it after Run returns.
	Conn grpc.ClientConnInterface
	// Node identifies this ztunnel; it is sent on each stream's first
	// request.
	Node *corev3.Node
	// Types are the type URLs to subscribe to (wildcard), requested in this
	// order on each stream.
	Types   []string
	Handler Handler
	// Log defaults to slog.Default().
	Log *slog.Logger
	// Held is what the handler already holds when the client starts (by
	// type, name -> version), e.g. the config a restarted data plane loaded
	// from disk. Each stream's InitialResourceVersions names it, so the
	// control plane sends only what changed and removes what is gone.
	Held map[string]map[string]string
	// MinBackoff and MaxBackoff bound the (jittered, doubling) wait between
	// streams; they default to 100ms and 15s.
	MinBackoff, MaxBackoff time.Duration
}

// Status is a snapshot of the client's state, for the admin page.
type Status struct {
	// Connected is true while a stream is open.
	Connected bool
	// LastError ended the last stream, or failed to open it; nil until one
	// did.
	LastError error
	// Types is per subscribed type, in subscription order.
	Types []TypeStatus
}

// TypeStatus is the state of one subscription.
type TypeStatus struct {
	TypeURL string `json:"typeUrl"`
	// Resources is the number of resources the handler holds.
	Resources int `json:"resources"`
	// Synced is true once a response of this type has been applied.
	Synced bool `json:"synced"`
	// AckedNonce is the nonce of the last response ACKed.
	AckedNonce string `json:"ackedNonce,omitempty"`
	// NackedNonce and NackMessage are those of the last response NACKed.
	// Later ACKs do not clear them: they record the last rejection.
	NackedNonce string `json:"nackedNonce,omitempty"`
	NackMessage string `json:"nackMessage,omitempty"`
}

// Client is a delta xDS client. Build it with NewClient and serve it with
// Run.
type Client struct {
	cfg    Config
	log    *slog.Logger
	synced chan struct{}

	mu        sync.Mutex
	connected bool
	lastErr   error
	types     map[string]*typeState
	unsynced  int // types with no response applied yet; synced closes at 0
	// stream is the open stream, nil between streams; sendMu serialises
	// its Sends (ACKs from Run, on-demand requests from Demand).
	stream   discoveryv3.AggregatedDiscoveryService_DeltaAggregatedResourcesClient
	sendMu   sync.Mutex
	demanded map[demandKey]int // names asked for on demand -> askers
}

type demandKey struct{ typeURL, name string }

// MaxDemanded bounds the names asked for on demand at once: a data plane's
// users can make it ask for addresses, and must not grow its subscription
// without bound.
const MaxDemanded = 256

// typeState is what the client remembers of one type across streams.
type typeState struct {
	held                     map[string]string // name -> version the handler holds
	synced                   bool
	ackedNonce               string
	nackedNonce, nackMessage string
}

// NewClient validates cfg and fills in its defaults.
func NewClient(cfg Config) (*Client, error) {
	if cfg.Conn == nil {
		return nil, errors.New("xds: config has no connection")
	}
	if cfg.Handler == nil {
		return nil, errors.New("xds: config has no handler")
	}
	if len(cfg.Types) == 0 {
		return nil, errors.New("xds: config subscribes to no type")
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	if cfg.MinBackoff == 0 {
		cfg.MinBackoff = 100 * time.Millisecond
	}
	if cfg.MaxBackoff == 0 {
		cfg.MaxBackoff = 15 * time.Second
	}
	if cfg.MinBackoff < 0 || cfg.MaxBackoff < cfg.MinBackoff {
		return nil, fmt.Errorf("xds: backoff bounds %v..%v are not increasing positive durations", cfg.MinBackoff, cfg.MaxBackoff)
	}
	c := &Client{cfg: cfg, log: cfg.Log, synced: make(chan struct{}), types: map[string]*typeState{}, demanded: map[demandKey]int{}}
	for _, t := range cfg.Types {
		if t == "" {
			return nil, errors.New("xds: config has an empty type URL")
		}
		if c.types[t] != nil {
			return nil, fmt.Errorf("xds: type %s is subscribed twice", t)
		}
		c.types[t] = &typeState{held: maps.Clone(cfg.Held[t])}
		if c.types[t].held == nil {
			c.types[t].held = map[string]string{}
		}
	}
	for t := range cfg.Held {
		if c.types[t] == nil {
			return nil, fmt.Errorf("xds: config holds resources of %s, which it does not subscribe to", t)
		}
	}
	c.cfg.Types = append([]string(nil), cfg.Types...)
	c.unsynced = len(c.types)
	return c, nil
}

// Run serves the subscriptions until ctx ends, opening a new stream with
// backoff whenever one fails or the control plane ends it. It returns nil
// once ctx has ended and the stream is torn down. While no stream is open
// the handler keeps everything it was given.
func (c *Client) Run(ctx context.Context) error {
	b := backoff{min: c.cfg.MinBackoff, max: c.cfg.MaxBackoff}
	for {
		delivered, err := c.serve(ctx)
		c.mu.Lock()
		c.connected = false
		if ctx.Err() == nil {
			c.lastErr = err
		}
		c.mu.Unlock()
		if ctx.Err() != nil {
			return nil
		}
		if delivered {
			b.reset()
		}
		wait := b.next()
		c.log.Warn("xds: stream to the control plane ended", "reason", err.Error(), "retry_in", wait)
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
	}
}

// Synced is closed once every subscribed type has had a response applied:
// ztunnel is ready to serve. It stays closed across reconnects.
func (c *Client) Synced() <-chan struct{} { return c.synced }

// Status returns a snapshot of the client's state.
func (c *Client) Status() Status {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := Status{Connected: c.connected, LastError: c.lastErr}
	for _, t := range c.cfg.Types {
		ts := c.types[t]
		s.Types = append(s.Types, TypeStatus{
			TypeURL: t, Resources: len(ts.held), Synced: ts.synced,
			AckedNonce: ts.ackedNonce, NackedNonce: ts.nackedNonce, NackMessage: ts.nackMessage,
		})
	}
	return s
}

// heldVersions copies what the handler holds of typeURL, for a new stream's
// InitialResourceVersions.
func (c *Client) heldVersions(typeURL string) map[string]string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return maps.Clone(c.types[typeURL].held)
}

// Demand asks the control plane for one resource by name, beside the
// wildcard subscription, as Istio's ztunnel asks for an address it does
// not know ("network/ip"): a control plane that answers named requests
// sends it at once if it has it, else when it appears. The request is
// made on the open stream, or on the next one. release withdraws it.
// Beyond MaxDemanded names nothing is asked (release is then a no-op):
// the caller still sees the resource when the wildcard brings it.
func (c *Client) Demand(typeURL, name string) (release func()) {
	k := demandKey{typeURL, name}
	c.mu.Lock()
	if c.types[typeURL] == nil || (c.demanded[k] == 0 && len(c.demanded) >= MaxDemanded) {
		c.mu.Unlock()
		return func() {}
	}
	c.demanded[k]++
	first, st := c.demanded[k] == 1, c.stream
	c.mu.Unlock()
	if first && st != nil {
		c.send(st, &discoveryv3.DeltaDiscoveryRequest{TypeUrl: typeURL, ResourceNamesSubscribe: []string{name}})
	}
	var once sync.Once
	return func() {
		once.Do(func() {
			c.mu.Lock()
			c.demanded[k]--
			last, st := c.demanded[k] == 0, c.stream
			if last {
				delete(c.demanded, k)
			}
			c.mu.Unlock()
			if last && st != nil {
				c.send(st, &discoveryv3.DeltaDiscoveryRequest{TypeUrl: typeURL, ResourceNamesUnsubscribe: []string{name}})
			}
		})
	}
}

// send is the one way requests go out, so that Run's ACKs and Demand's
// requests never interleave. A failed send ends the stream: Run's receive
// sees why and reconnects.
func (c *Client) send(st discoveryv3.AggregatedDiscoveryService_DeltaAggregatedResourcesClient, req *discoveryv3.DeltaDiscoveryRequest) error {
	c.sendMu.Lock()
	defer c.sendMu.Unlock()
	return st.Send(req)
}

// demandedNames lists the names asked for on demand, by type, for a new
// stream.
func (c *Client) demandedNames() map[string][]string {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := map[string][]string{}
	for k := range c.demanded {
		out[k.typeURL] = append(out[k.typeURL], k.name)
	}
	return out
}
