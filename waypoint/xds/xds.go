// Package xds feeds the waypoint its configuration: it subscribes over delta
// ADS (internal/xdsclient) to Listeners, RouteConfigurations, Clusters and
// ClusterLoadAssignments, compiles each resource as it arrives (NACKing a
// bad one with its field path and keeping the last good copy), and hands the
// proxy a new config.Snapshot whenever the resources it holds form a
// consistent set.
//
// Every type is a wildcard subscription: zmeshd gives each waypoint a view
// holding exactly its own resources (which Gateway it serves is derived
// from its authenticated identity), so there is nothing to ask for by name.
// Route configurations and assignments that no listener or cluster names
// are compiled (a bad one is still NACKed) and carried, but unused.
//
// Given a telemetry.Workloads index, the client also subscribes to workload
// discovery (istio.workload.Address, all of the mesh's workloads, as
// ztunnel gets them) and keeps the index current; it names clients in
// telemetry and takes no part in the snapshot.
package xds

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sync"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"

	"github.com/zmesh/zmesh/internal/xdsclient"
	"github.com/zmesh/zmesh/waypoint/config"
	"github.com/zmesh/zmesh/waypoint/telemetry"
)

// Types are the subscribed type URLs, in Envoy's order: clusters and their
// endpoints before the listeners and routes that use them.
var Types = []string{config.TypeCluster, config.TypeAssignment, config.TypeListener, config.TypeRoute}

// Options configure a Client.
type Options struct {
	// Conn reaches zmeshd, with TLS and the bearer token (meshclient).
	Conn grpc.ClientConnInterface
	// Node identifies the waypoint (Istio's form,
	// "router~<ip>~<pod>.<ns>~<ns>.svc.cluster.local").
	Node *corev3.Node
	// OnSnapshot receives each new consistent snapshot, on the client's
	// goroutine, one call at a time; it must not block on the client.
	OnSnapshot func(*config.Snapshot)
	// Workloads, when set, is kept up to date with the mesh's workloads
	// (TypeAddress), for telemetry to name clients by; nil subscribes to
	// the Envoy types only.
	Workloads *telemetry.Workloads
	Log       *slog.Logger
}

// Client is the waypoint's xDS subscription. Build it with New and serve
// it with Run.
type Client struct {
	xc *xdsclient.Client
	h  *handler
}

// New builds a client; nothing is sent until Run.
func New(o Options) (*Client, error) {
	if o.OnSnapshot == nil {
		return nil, errors.New("xds: no OnSnapshot callback")
	}
	if o.Log == nil {
		o.Log = slog.Default()
	}
	h := &handler{log: o.Log, apply: o.OnSnapshot, held: map[string]map[string]held{}, seen: map[string]bool{}, workloads: o.Workloads}
	for _, t := range Types {
		h.held[t] = map[string]held{}
	}
	types := Types
	if o.Workloads != nil {
		types = append(slices.Clone(Types), TypeAddress)
	}
	xc, err := xdsclient.NewClient(xdsclient.Config{Conn: o.Conn, Node: o.Node, Types: types, Handler: h, Log: o.Log})
	if err != nil {
		return nil, err
	}
	return &Client{xc: xc, h: h}, nil
}

// Run serves the subscription until ctx ends (see xdsclient.Client.Run).
func (c *Client) Run(ctx context.Context) error { return c.xc.Run(ctx) }

// Status is the subscription's state, for the admin server.
func (c *Client) Status() xdsclient.Status { return c.xc.Status() }

// Snapshot returns the last snapshot applied, nil before the first.
func (c *Client) Snapshot() *config.Snapshot {
	c.h.mu.Lock()
	defer c.h.mu.Unlock()
	return c.h.last
}

// Handler returns the client's xdsclient.Handler, for tests that drive it
// without a stream.
func (c *Client) Handler() xdsclient.Handler { return c.h }

// held is one accepted resource.
type held struct {
	msg     proto.Message
	version string
}

// handler keeps the last good copy of every resource and rebuilds the
// snapshot after each response.
type handler struct {
	log   *slog.Logger
	apply func(*config.Snapshot)

	mu   sync.Mutex
	held map[string]map[string]held // type URL -> name -> resource
	seen map[string]bool            // types that have had a response
	last *config.Snapshot
	// waiting is the reason the last rebuild produced no snapshot, to log
	// it once rather than at each response.
	waiting string
	// workloads is fed by TypeAddress when set; workloadsFull says the
	// index refused a workload (logged once).
	workloads     *telemetry.Workloads
	workloadsFull bool
}

// Apply implements xdsclient.Handler.
func (h *handler) Apply(typeURL string, updated []xdsclient.Resource, removed []string) map[string]error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if typeURL == TypeAddress && h.workloads != nil {
		// Not part of the snapshot: workloads only label telemetry.
		return h.applyAddresses(updated, removed)
	}
	rejected := map[string]error{}
	store := h.held[typeURL]
	if store == nil {
		for _, r := range updated {
			rejected[r.Name] = fmt.Errorf("type %s is not served by the waypoint", typeURL)
		}
		return rejected
	}
	// undo restores what this response replaced, should the new set turn
	// out inconsistent.
	undo := map[string]*held{}
	keep := func(name string) {
		if _, ok := undo[name]; ok {
			return
		}
		if old, ok := store[name]; ok {
			undo[name] = &old
		} else {
			undo[name] = nil
		}
	}
	for _, r := range updated {
		m, err := decode(typeURL, r)
		if err != nil {
			rejected[r.Name] = err
			continue
		}
		keep(r.Name)
		store[r.Name] = held{msg: m, version: r.Version}
	}
	for _, name := range removed {
		keep(name)
		delete(store, name)
	}
	h.seen[typeURL] = true

	for {
		err := h.rebuild()
		var ne *config.NackError
		if err == nil || !errors.As(err, &ne) {
			break
		}
		// The set is inconsistent (two listeners claiming one
		// destination): refuse what this response brought, naming the
		// resource the error names when it is one of them.
		culprits := slices.Sorted(maps.Keys(undo))
		for _, name := range culprits {
			if ne.Resource == fmt.Sprintf("listeners %q", name) {
				culprits = []string{name}
				break
			}
		}
		for _, name := range culprits {
			if old := undo[name]; old != nil {
				store[name] = *old
			} else {
				delete(store, name)
			}
			delete(undo, name)
			rejected[name] = err
		}
		if len(culprits) == 0 {
			// Nothing of this response to blame: keep the last snapshot.
			h.log.Error("xds: resources inconsistent; keeping the last configuration", "reason", err.Error())
			break
		}
	}
	return rejected
}

// rebuild builds a snapshot from what is held and applies it if the set is
// complete. A refusal of the whole set is returned; an incomplete set is
// not an error.
func (h *handler) rebuild() error {
	for _, t := range Types {
		if !h.seen[t] {
			return nil // the first response of every type comes first
		}
	}
	res := config.Resources{Versions: map[string]map[string]string{}}
	sum := sha256.New()
	for _, t := range Types {
		res.Versions[t] = map[string]string{}
		for _, name := range slices.Sorted(maps.Keys(h.held[t])) {
			r := h.held[t][name]
			res.Versions[t][name] = r.version
			fmt.Fprintf(sum, "%s\x00%s\x00%s\x00", t, name, r.version)
			switch m := r.msg.(type) {
			case *listenerv3.Listener:
				res.Listeners = append(res.Listeners, m)
			case *routev3.RouteConfiguration:
				res.Routes = append(res.Routes, m)
			case *clusterv3.Cluster:
				res.Clusters = append(res.Clusters, m)
			case *endpointv3.ClusterLoadAssignment:
				res.Assignments = append(res.Assignments, m)
			}
		}
	}
	res.Version = hex.EncodeToString(sum.Sum(nil))[:12]
	if h.last != nil && h.last.Version == res.Version {
		return nil
	}
	s, err := config.Build(res)
	var missing *config.MissingRoutesError
	switch {
	case errors.As(err, &missing):
		if why := err.Error(); why != h.waiting {
			h.waiting = why
			h.log.Info("xds: waiting for the rest of the configuration; serving the last one", "reason", why)
		}
		return nil
	case err != nil:
		return err
	}
	h.waiting = ""
	h.last = s
	h.log.Info("xds: configuration applied", "version", s.Version, "chains", len(s.Chains), "routes", len(s.Routes),
		"clusters", len(s.Clusters), "assignments", len(s.Assignments))
	h.apply(s)
	return nil
}

// decode unpacks one resource and compiles it alone, so that a bad
// resource is refused by name with its field path before it can spoil a
// snapshot. Its name must be the one the resource gives itself.
func decode(typeURL string, r xdsclient.Resource) (proto.Message, error) {
	var m proto.Message
	var compile func() error
	switch typeURL {
	case config.TypeListener:
		l := &listenerv3.Listener{}
		m, compile = l, func() error { _, _, err := config.CompileListener(l); return err }
	case config.TypeRoute:
		rc := &routev3.RouteConfiguration{}
		m, compile = rc, func() error { _, err := config.CompileRoutes(rc); return err }
	case config.TypeCluster:
		c := &clusterv3.Cluster{}
		m, compile = c, func() error { _, err := config.CompileCluster(c); return err }
	case config.TypeAssignment:
		a := &endpointv3.ClusterLoadAssignment{}
		m, compile = a, func() error { _, err := config.CompileAssignment(a); return err }
	}
	if err := r.Body.UnmarshalTo(m); err != nil {
		return nil, fmt.Errorf("decode: %v", err)
	}
	if own := resourceName(m); own != r.Name {
		return nil, fmt.Errorf("resource is named %q but its body names itself %q", r.Name, own)
	}
	if err := compile(); err != nil {
		return nil, err
	}
	return m, nil
}

func resourceName(m proto.Message) string {
	switch m := m.(type) {
	case *listenerv3.Listener:
		return m.GetName()
	case *routev3.RouteConfiguration:
		return m.GetName()
	case *clusterv3.Cluster:
		return m.GetName()
	case *endpointv3.ClusterLoadAssignment:
		return m.GetClusterName()
	}
	return ""
}
