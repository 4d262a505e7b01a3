package proxy_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"golang.org/x/sys/unix"

	"github.com/zmesh/zmesh/api/workload"
	"github.com/zmesh/zmesh/api/workload/security"
	"github.com/zmesh/zmesh/cni/agent"
	"github.com/zmesh/zmesh/cni/cniapi"
	"github.com/zmesh/zmesh/e2e/netenv"
	"github.com/zmesh/zmesh/identity"
	"github.com/zmesh/zmesh/ztunnel/inpod"
	"github.com/zmesh/zmesh/ztunnel/proxy"
	"github.com/zmesh/zmesh/ztunnel/state"
	"github.com/zmesh/zmesh/ztunnel/telemetry"
)

// mesh is two or more nodes on one LAN: per node the real agent (capture
// + ZDS server) and a ztunnel (Proxy + ZDS client + its own state store),
// all sharing one CA. Pods are hosts on the LAN captured through the agent.
type mesh struct {
	t     *testing.T
	lan   *netenv.LAN
	ca    *identity.CA
	wl    []*workload.Workload
	svc   []*workload.Service
	pol   []*security.Authorization
	nodes []*node
}

type node struct {
	name   string
	m      *mesh
	agent  *agent.Node
	proxy  *proxy.Proxy
	store  *state.Store
	reg    *prometheus.Registry
	logs   *syncBuffer
	cancel context.CancelFunc
	done   sync.WaitGroup
}

type pod struct {
	ns                       *netenv.NS
	ip                       netip.Addr
	uid, name, namespace, sa string
	node                     *node
}

func newMesh(t *testing.T) *mesh {
	t.Helper()
	lan, err := netenv.NewLAN(netip.MustParsePrefix("10.61.0.0/24"))
	if err != nil {
		t.Fatalf("need root and netns support: %v", err)
	}
	t.Cleanup(func() { lan.Close() })
	ca, err := identity.LoadOrCreateCA(t.TempDir(), identity.CAOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return &mesh{t: t, lan: lan, ca: ca}
}

// newNode starts an agent and a ztunnel for a node.
func (m *mesh) newNode(name string, opts ...func(*proxy.Config)) *node {
	t := m.t
	t.Helper()
	dir := t.TempDir()
	bpfRoot := filepath.Join(dir, "bpf")
	if err := os.Mkdir(bpfRoot, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("bpf", bpfRoot, "bpf", 0, ""); err != nil {
		t.Fatalf("mount bpffs: %v", err)
	}
	t.Cleanup(func() { unix.Unmount(bpfRoot, unix.MNT_DETACH) })

	n := &node{name: name, m: m, store: state.NewStore(), reg: prometheus.NewRegistry(), logs: &syncBuffer{}}
	log := slog.New(slog.NewJSONHandler(n.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	zdsPath := filepath.Join(dir, "zds.sock")
	srv, err := agent.NewZDSServer(zdsPath, log)
	if err != nil {
		t.Fatal(err)
	}
	certs, err := identity.NewManager(identity.FetcherFunc(func(ctx context.Context, id spiffeid.ID) (*x509svid.SVID, error) {
		return m.ca.Issue(id, time.Hour)
	}), m.ca.Bundle(), identity.ManagerOptions{})
	if err != nil {
		t.Fatal(err)
	}
	tel, err := telemetry.New(n.reg, log)
	if err != nil {
		t.Fatal(err)
	}
	cfg := proxy.Config{Node: name, State: n.store, Certs: certs, Telemetry: tel, Log: log, Grace: 2 * time.Second}
	for _, o := range opts {
		o(&cfg)
	}
	n.proxy, err = proxy.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	n.cancel = cancel
	n.done.Go(func() { srv.Run(ctx) })
	n.done.Go(func() { certs.Run(ctx) })
	n.done.Go(func() { inpod.RunZDS(ctx, zdsPath, n.proxy, log) })
	t.Cleanup(n.stop)
	wctx, wcancel := context.WithTimeout(ctx, 5*time.Second)
	defer wcancel()
	if err := srv.WaitZtunnel(wctx); err != nil {
		t.Fatal(err)
	}
	n.agent = &agent.Node{BPFRoot: bpfRoot, ZDS: srv, Members: agent.MembershipFunc(m.member), HostNetns: m.lan.Underlay.Handle(), Log: log}
	m.nodes = append(m.nodes, n)
	return n
}

func (n *node) stop() {
	n.cancel()
	ctx, cancel := context.WithTimeout(context.Background(), 0)
	cancel()
	n.proxy.Drain(ctx)
	n.done.Wait()
	if n.m.t.Failed() {
		n.m.t.Logf("node %s log:\n%s", n.name, n.logs.String())
	}
}

func (m *mesh) member(namespace, name string) (string, bool) {
	for _, w := range m.wl {
		if w.Namespace == namespace && w.Name == name && w.TunnelProtocol == workload.TunnelProtocol_HBONE {
			return w.ServiceAccount, true
		}
	}
	return "", false
}

// newPod adds a LAN host; ambient pods are listed as HBONE workloads on
// node n and captured by its agent, others (n == nil) stay plain.
func (m *mesh) newPod(n *node, namespace, name, sa string) *pod {
	t := m.t
	t.Helper()
	ns, ip, err := m.lan.Host(name)
	if err != nil {
		t.Fatal(err)
	}
	p := &pod{ns: ns, ip: ip, uid: fmt.Sprintf("uid-%s-%s", namespace, name), name: name, namespace: namespace, sa: sa, node: n}
	w := &workload.Workload{
		Uid: "Kubernetes//Pod/" + namespace + "/" + name, Name: name, Namespace: namespace,
		Addresses: [][]byte{ip.AsSlice()}, ServiceAccount: sa, WorkloadName: name,
		CanonicalName: name, CanonicalRevision: "v1",
	}
	if n != nil {
		w.TunnelProtocol = workload.TunnelProtocol_HBONE
		w.Node = n.name
	}
	m.wl = append(m.wl, w)
	m.push()
	if n != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		ok, err := n.agent.Add(ctx, &cniapi.Pod{UID: p.uid, Name: name, Namespace: namespace, Netns: "/run/netns/" + ns.Name, IPs: []string{ip.String()}})
		if err != nil || !ok {
			t.Fatalf("capture %s: ok=%v err=%v", name, ok, err)
		}
		t.Cleanup(func() {
			n.agent.Del(context.Background(), &cniapi.Pod{UID: p.uid, Name: name, Namespace: namespace, Netns: "/run/netns/" + ns.Name})
		})
	}
	return p
}

// push gives every node's ztunnel the mesh's current config.
func (m *mesh) push() {
	m.t.Helper()
	for _, n := range m.nodes {
		if err := n.store.Replace(m.update()); err != nil {
			m.t.Fatal(err)
		}
	}
}

func (m *mesh) update() state.Update {
	u := state.Update{Addresses: map[string]*workload.Address{}, Policies: map[string]*security.Authorization{}}
	for _, w := range m.wl {
		u.Addresses[w.Uid] = &workload.Address{Type: &workload.Address_Workload{Workload: w}}
	}
	for _, s := range m.svc {
		u.Addresses[s.Namespace+"/"+s.Hostname] = &workload.Address{Type: &workload.Address_Service{Service: s}}
	}
	for _, p := range m.pol {
		u.Policies[p.Namespace+"/"+p.Name] = p
	}
	return u
}

func (m *mesh) workload(p *pod) *workload.Workload {
	for _, w := range m.wl {
		if w.Name == p.name && w.Namespace == p.namespace {
			return w
		}
	}
	m.t.Fatalf("no workload for %s", p.name)
	return nil
}

// app is a TCP server in a pod: it answers "<peer ip>|<what it read>"
// after the client half-closes.
type app struct {
	addr  netip.AddrPort
	peers chan netip.Addr
}

func (p *pod) serve(t *testing.T, port uint16) *app {
	t.Helper()
	ln, err := p.ns.Listen("tcp", netip.AddrPortFrom(p.ip, port).String())
	if err != nil {
		t.Fatal(err)
	}
	a := &app{addr: netip.AddrPortFrom(p.ip, port), peers: make(chan netip.Addr, 100)}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer c.Close()
				peer := c.RemoteAddr().(*net.TCPAddr).AddrPort().Addr().Unmap()
				select {
				case a.peers <- peer:
				default:
				}
				c.SetDeadline(time.Now().Add(10 * time.Second))
				var buf bytes.Buffer
				buf.ReadFrom(c)
				fmt.Fprintf(c, "%s|%s", peer, buf.String())
			})
		}
	})
	return a
}

// call connects from the pod to dst, sends msg, half-closes and returns
// the reply.
func (p *pod) call(dst netip.AddrPort, msg string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := p.ns.Dial(ctx, "tcp", dst.String())
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write([]byte(msg)); err != nil {
		return "", err
	}
	c.(*net.TCPConn).CloseWrite()
	var buf bytes.Buffer
	_, err = buf.ReadFrom(c)
	if err == nil && buf.Len() == 0 {
		err = fmt.Errorf("connection closed without a reply")
	}
	return buf.String(), err
}

// logLines returns the node's JSON log records whose msg is msg.
func (n *node) logLines(msg string) []map[string]any {
	var out []map[string]any
	for _, line := range strings.Split(n.logs.String(), "\n") {
		var rec map[string]any
		if json.Unmarshal([]byte(line), &rec) == nil && rec["msg"] == msg {
			out = append(out, rec)
		}
	}
	return out
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
