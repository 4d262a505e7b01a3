package proxy_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
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
	"github.com/zmesh/zmesh/internal/testutil"
	"github.com/zmesh/zmesh/ztunnel/inpod"
	"github.com/zmesh/zmesh/ztunnel/proxy"
	"github.com/zmesh/zmesh/ztunnel/state"
	"github.com/zmesh/zmesh/ztunnel/telemetry"
)

// mesh is two or more nodes on one LAN: per node the real agent (capture
// + ZDS server) and a ztunnel (Proxy + ZDS client + its own state store),
// all sharing one CA. Pods are hosts on the LAN captured through the agent.
type mesh struct {
	t     testing.TB
	lan   *netenv.LAN
	ca    *identity.CA
	wl    []*workload.Workload
	svc   []*workload.Service
	pol   []*security.Authorization
	nodes []*node
}

// node is a node's agent and the ztunnel newNode started with it (embedded:
// n.proxy, n.reg, n.logs are that first ztunnel's). More ztunnels can join
// the agent's socket, as a restarting one does (startZtunnel).
type node struct {
	name    string
	m       *mesh
	agent   *agent.Node
	store   *state.Store
	zdsPath string
	opts    []func(*proxy.Config)
	pods    []*pod // captured here
	*ztunnel
}

// ztunnel is one Proxy with its ZDS client, certificates, metrics and log.
// The agent's log goes to the node's first ztunnel's buffer.
type ztunnel struct {
	proxy  *proxy.Proxy
	certs  *identity.Manager
	reg    *prometheus.Registry
	logs   *testutil.SyncBuffer
	log    *slog.Logger
	cancel context.CancelFunc
	done   sync.WaitGroup
	stop   func()
}

type pod struct {
	ns                       *netenv.NS
	ip                       netip.Addr
	uid, name, namespace, sa string
	node                     *node
}

func newMesh(t testing.TB) *mesh {
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

	n := &node{name: name, m: m, store: state.NewStore(), zdsPath: filepath.Join(dir, "zds.sock"), opts: opts}
	logs := &testutil.SyncBuffer{}
	log := slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	srv, err := agent.NewZDSServer(n.zdsPath, log)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var agentDone sync.WaitGroup
	agentDone.Go(func() { srv.Run(ctx) })
	// Registered first, so it runs after every ztunnel's stop.
	t.Cleanup(func() { cancel(); agentDone.Wait() })
	n.ztunnel = n.runZtunnel(logs)
	wctx, wcancel := context.WithTimeout(ctx, 5*time.Second)
	defer wcancel()
	if err := srv.WaitZtunnel(wctx); err != nil {
		t.Fatal(err)
	}
	n.agent = &agent.Node{BPFRoot: bpfRoot, ZDS: srv, Members: agent.MembershipFunc(m.member), HostNetns: m.lan.Underlay.Handle(), Log: log}
	m.nodes = append(m.nodes, n)
	return n
}

// startZtunnel starts another ztunnel on the node, as a restart does: it
// connects to the agent's socket, takes the snapshot of every pod (opening
// its listeners beside the running ones) and becomes the newest. It
// returns once it serves every pod the first ztunnel serves.
func (n *node) startZtunnel() *ztunnel {
	t := n.m.t
	t.Helper()
	z := n.runZtunnel(&testutil.SyncBuffer{})
	waitFor(t, func() bool {
		have := map[string]bool{}
		for _, pi := range z.proxy.Pods() {
			have[pi.UID] = true
		}
		for _, p := range n.pods {
			if !have[p.uid] {
				return false
			}
		}
		return true
	}, "the new ztunnel to take the snapshot")
	return z
}

// runZtunnel starts a Proxy and its ZDS client against the node's agent.
func (n *node) runZtunnel(logs *testutil.SyncBuffer) *ztunnel {
	m, t := n.m, n.m.t
	t.Helper()
	z := &ztunnel{reg: prometheus.NewRegistry(), logs: logs}
	z.log = slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	certs, err := identity.NewManager(identity.FetcherFunc(func(ctx context.Context, id spiffeid.ID) (*x509svid.SVID, error) {
		return m.ca.Issue(id, time.Hour)
	}), m.ca.Bundle(), identity.ManagerOptions{})
	if err != nil {
		t.Fatal(err)
	}
	tel, err := telemetry.New(z.reg, z.log)
	if err != nil {
		t.Fatal(err)
	}
	cfg := proxy.Config{Node: n.name, State: n.store, Certs: certs, Telemetry: tel, Log: z.log, Grace: 2 * time.Second}
	for _, o := range n.opts {
		o(&cfg)
	}
	z.certs = certs
	z.proxy, err = proxy.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	z.cancel = cancel
	z.done.Go(func() { certs.Run(ctx) })
	z.done.Go(func() { inpod.RunZDS(ctx, n.zdsPath, z.proxy, z.log) })
	var once sync.Once
	z.stop = func() {
		once.Do(func() {
			z.cancel()
			ctx, cancel := context.WithTimeout(context.Background(), 0)
			cancel()
			z.proxy.Drain(ctx)
			z.done.Wait()
			if t.Failed() {
				t.Logf("node %s ztunnel log:\n%s", n.name, z.logs.String())
			}
		})
	}
	t.Cleanup(z.stop)
	return z
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
		n.pods = append(n.pods, p)
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

func (p *pod) serve(t testing.TB, port uint16) *app {
	t.Helper()
	a := &app{addr: netip.AddrPortFrom(p.ip, port), peers: make(chan netip.Addr, 100)}
	p.listen(t, port, func(c net.Conn) {
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
	return a
}

// listen serves each connection to the pod's port with handle, in a
// goroutine of its own, and closes it after; the test's end closes the
// port and waits for the handlers.
func (p *pod) listen(t testing.TB, port uint16, handle func(net.Conn)) {
	t.Helper()
	ln, err := p.ns.Listen("tcp", netip.AddrPortFrom(p.ip, port).String())
	if err != nil {
		t.Fatal(err)
	}
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
				handle(c)
			})
		}
	})
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

// logLines returns the ztunnel's JSON log records whose msg is msg.
func (n *ztunnel) logLines(msg string) []map[string]any {
	var out []map[string]any
	for _, line := range strings.Split(n.logs.String(), "\n") {
		var rec map[string]any
		if json.Unmarshal([]byte(line), &rec) == nil && rec["msg"] == msg {
			out = append(out, rec)
		}
	}
	return out
}

// echo is a TCP server in a pod that writes back whatever it reads until
// the client closes.
func (p *pod) echo(t testing.TB, port uint16) netip.AddrPort {
	t.Helper()
	ln, err := p.ns.Listen("tcp", netip.AddrPortFrom(p.ip, port).String())
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	conns := map[net.Conn]bool{}
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns[c] = true
			mu.Unlock()
			wg.Go(func() {
				defer func() {
					mu.Lock()
					delete(conns, c)
					mu.Unlock()
					c.Close()
				}()
				io.Copy(c, c)
			})
		}
	})
	return netip.AddrPortFrom(p.ip, port)
}

// dial connects from the pod to dst (captured like any app's connection).
func (p *pod) dial(t testing.TB, dst netip.AddrPort) *net.TCPConn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := p.ns.Dial(ctx, "tcp", dst.String())
	if err != nil {
		t.Fatalf("dial %s from %s: %v", dst, p.name, err)
	}
	t.Cleanup(func() { c.Close() })
	return c.(*net.TCPConn)
}

// opened is the ztunnel's istio_tcp_connections_opened_total, all series.
func (z *ztunnel) opened(t testing.TB) float64 {
	t.Helper()
	mf, err := z.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var n float64
	for _, f := range mf {
		if f.GetName() == "istio_tcp_connections_opened_total" {
			for _, mt := range f.Metric {
				n += mt.GetCounter().GetValue()
			}
		}
	}
	return n
}

// listeners counts the TCP sockets listening on port in the pod's netns.
func (p *pod) listeners(t testing.TB, port uint16) int {
	t.Helper()
	n := 0
	err := p.ns.Do(func() error {
		// thread-self: /proc/self/net would show the namespace of the
		// process's main thread, not this locked one's.
		for _, f := range []string{"/proc/thread-self/net/tcp", "/proc/thread-self/net/tcp6"} {
			b, err := os.ReadFile(f)
			if err != nil {
				return err
			}
			for _, line := range strings.Split(string(b), "\n")[1:] {
				fs := strings.Fields(line)
				if len(fs) > 3 && fs[3] == "0A" && strings.HasSuffix(fs[1], fmt.Sprintf(":%04X", port)) {
					n++
				}
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return n
}
