// Package wds is zmesh-cni-agent's membership source without a cluster
// (docs/decisions.md, "Running without a cluster"): zmeshd's workload stream, read
// with ztunnel's delta xDS client. The pods of this node are the Workloads
// whose node is this node's name; a pod is ambient while zmeshd lists it
// with tunnel protocol HBONE (with no cluster, zmeshd decides that from
// the namespace and pod labels) and not as a native tunnel (a waypoint,
// which terminates HBONE itself). It must not import the control plane.
package wds

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"sort"
	"sync"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/zmesh/zmesh/api/filepod"
	"github.com/zmesh/zmesh/api/workload"
	"github.com/zmesh/zmesh/cni/agent"
	"github.com/zmesh/zmesh/internal/xdsclient"
)

// PodUID is the metadata.uid of a pod read from a file without one: the
// WDS Workload.uid keeps Istio's form, so the uid ZDS and the bpffs
// directory use is derived as zmeshd and the node runner derive it.
func PodUID(namespace, name string) string { return filepod.UID(namespace, name) }

// Config configures Members.
type Config struct {
	// Conn reaches zmeshd (dialled by the caller, with its credentials).
	Conn grpc.ClientConnInterface
	// Node is this node's name.
	Node string
	// LookupWait bounds how long a CNI ADD waits for zmeshd to list a pod
	// it has not listed yet (the first response included) before failing,
	// so that the runtime retries (default 10s).
	LookupWait time.Duration
	Log        *slog.Logger
	// MinBackoff and MaxBackoff are the xDS client's (defaults there).
	MinBackoff, MaxBackoff time.Duration
}

// Members implements agent.Source from the workload stream.
type Members struct {
	cfg     Config
	client  *xdsclient.Client
	changed chan struct{}

	mu   sync.Mutex
	mine map[string]*workload.Workload // resource name -> workload of this node
	// applied is closed and replaced after every response applied.
	applied chan struct{}
}

var _ agent.Source = (*Members)(nil)

// New builds the source; Run serves it.
func New(cfg Config) (*Members, error) {
	if cfg.Node == "" {
		return nil, errors.New("wds members: no node name")
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	if cfg.LookupWait == 0 {
		cfg.LookupWait = 10 * time.Second
	}
	m := &Members{cfg: cfg, changed: make(chan struct{}, 1), mine: map[string]*workload.Workload{}, applied: make(chan struct{})}
	meta, _ := structpb.NewStruct(map[string]any{"NODE_NAME": cfg.Node})
	c, err := xdsclient.NewClient(xdsclient.Config{
		Conn: cfg.Conn, Types: []string{xdsclient.TypeAddress}, Handler: handler{m}, Log: cfg.Log,
		Node:       &corev3.Node{Id: "zmesh-cni-agent~" + cfg.Node, Metadata: meta},
		MinBackoff: cfg.MinBackoff, MaxBackoff: cfg.MaxBackoff,
	})
	if err != nil {
		return nil, err
	}
	m.client = c
	return m, nil
}

// Run streams from zmeshd until ctx ends.
func (m *Members) Run(ctx context.Context) error { return m.client.Run(ctx) }

// Synced is closed once the first response was applied.
func (m *Members) Synced() <-chan struct{} { return m.client.Synced() }

// WaitSynced blocks until the first response was applied.
func (m *Members) WaitSynced(ctx context.Context) error {
	select {
	case <-m.client.Synced():
		return nil
	case <-ctx.Done():
		return fmt.Errorf("wds members: no workloads from the control plane yet: %w", context.Cause(ctx))
	}
}

// Changed implements agent.Source.
func (m *Members) Changed() <-chan struct{} { return m.changed }

// handler feeds the xDS client's responses in.
type handler struct{ m *Members }

func (h handler) Apply(typeURL string, updated []xdsclient.Resource, removed []string) map[string]error {
	if typeURL != xdsclient.TypeAddress {
		return nil
	}
	m := h.m
	rejected := map[string]error{}
	m.mu.Lock()
	for _, r := range updated {
		var a workload.Address
		if err := r.Body.UnmarshalTo(&a); err != nil {
			rejected[r.Name] = fmt.Errorf("decode Address: %w", err)
			continue
		}
		w := a.GetWorkload()
		if w == nil || w.GetNode() != m.cfg.Node {
			delete(m.mine, r.Name) // a service, or moved off this node
			continue
		}
		m.mine[r.Name] = w
	}
	for _, name := range removed {
		delete(m.mine, name)
	}
	close(m.applied)
	m.applied = make(chan struct{})
	m.mu.Unlock()
	select {
	case m.changed <- struct{}{}:
	default:
	}
	return rejected
}

// Lookup implements agent.Membership for CNI ADD. zmeshd lists every pod
// of the directory, ambient or not, so a pod it has not listed is one it
// has not seen yet (the runtime often starts a pod before the stream
// carries it): Lookup waits for it, up to LookupWait, and then fails
// with agent.ErrMembershipUnknown rather than call it "not ambient".
func (m *Members) Lookup(ctx context.Context, namespace, name string) (string, bool, error) {
	t := time.NewTimer(m.cfg.LookupWait)
	defer t.Stop()
	for {
		m.mu.Lock()
		w, applied := m.find(namespace, name), m.applied
		m.mu.Unlock()
		if w != nil {
			return w.GetServiceAccount(), captured(w), nil
		}
		select {
		case <-applied:
		case <-t.C:
			return "", false, fmt.Errorf("%w: the control plane has not listed pod %s/%s on node %s within %s",
				agent.ErrMembershipUnknown, namespace, name, m.cfg.Node, m.cfg.LookupWait)
		case <-ctx.Done():
			return "", false, fmt.Errorf("%w: pod %s/%s: %w", agent.ErrMembershipUnknown, namespace, name, context.Cause(ctx))
		}
	}
}

// captured says whether the node captures a workload's traffic for
// ztunnel: reached over HBONE, and not terminating HBONE itself (a
// waypoint, native_tunnel), whose port 15008 is its own.
func captured(w *workload.Workload) bool {
	return w.GetTunnelProtocol() == workload.TunnelProtocol_HBONE && !w.GetNativeTunnel()
}

// find returns this node's workload of that name; m.mu is held.
func (m *Members) find(namespace, name string) *workload.Workload {
	for _, w := range m.mine {
		if w.GetNamespace() == namespace && w.GetName() == name {
			return w
		}
	}
	return nil
}

// Pods implements agent.Source: this node's workloads with an address.
func (m *Members) Pods() []agent.PodInfo {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]agent.PodInfo, 0, len(m.mine))
	for _, w := range m.mine {
		p := agent.PodInfo{
			UID: PodUID(w.GetNamespace(), w.GetName()), Name: w.GetName(), Namespace: w.GetNamespace(),
			ServiceAccount: w.GetServiceAccount(),
			Ambient:        captured(w),
		}
		for _, b := range w.GetAddresses() {
			if ip, ok := netip.AddrFromSlice(b); ok {
				p.IPs = append(p.IPs, ip.Unmap().String())
			}
		}
		if len(p.IPs) > 0 {
			out = append(out, p)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].UID < out[j].UID })
	return out
}

// Pod returns a pod of this node by metadata.uid, for the restart
// reconcile.
func (m *Members) Pod(uid string) (agent.PodInfo, bool) {
	for _, p := range m.Pods() {
		if p.UID == uid {
			return p, true
		}
	}
	return agent.PodInfo{}, false
}
