package main

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/zmesh/zmesh/cni/agent"
	"github.com/zmesh/zmesh/controlplane/model"
	"github.com/zmesh/zmesh/e2e/netenv"
	"github.com/zmesh/zmesh/e2e/noderunner"
	"github.com/zmesh/zmesh/e2e/proc"
	"github.com/zmesh/zmesh/identity"
)

// The topology: one LAN (an underlay bridge in its own namespace), three
// node host namespaces (where stunnel, haproxy and nginx run, as a user
// would run them on the nodes), and five pods: an ambient client/server
// pair for the mesh path, the waypoint path's ambient server, and a plain
// pair for the others. Pods of one role are alike
// (same kind of namespace and veth on the same bridge), so the paths differ
// only by what carries the bytes.
var (
	lanPrefix   = netip.MustParsePrefix("10.44.0.0/24")
	meshClient  = podSpec{"mesh-client", "bench", "client", "node-1", netip.MustParseAddr("10.44.0.2"), true}
	meshServer  = podSpec{"mesh-server", "bench", "server", "node-2", netip.MustParseAddr("10.44.0.3"), true}
	plainClient = podSpec{"plain-client", "plain", "client", "node-1", netip.MustParseAddr("10.44.0.4"), false}
	plainServer = podSpec{"plain-server", "plain", "server", "node-2", netip.MustParseAddr("10.44.0.5"), false}
	// The waypoint path's server: an ambient pod like mesh-server, behind
	// the echo Service bound to the waypoint. A pod of its own, because
	// ztunnel refuses traffic that reaches such a pod around the waypoint,
	// and the mesh path goes to mesh-server's address directly.
	wpServer  = podSpec{"wp-server", "bench", "server", "node-2", netip.MustParseAddr("10.44.0.7"), true}
	nodeAddrs = []netip.Addr{netip.MustParseAddr("10.44.0.11"), netip.MustParseAddr("10.44.0.12")}
	nodeNames = []string{"node-1", "node-2"}
	// node-3 runs the L7 proxies: the waypoint (in a pod of its own, as
	// the deployer schedules it) and, on the node's host, nginx and
	// haproxy in HTTP mode. It has no ztunnel: the waypoint is not
	// captured and no ambient pod runs there.
	proxyNode     = "node-3"
	proxyNodeAddr = netip.MustParseAddr("10.44.0.13")
)

const (
	httpPort  = 8080
	iperfPort = 5201
)

type podSpec struct {
	name, ns, sa, node string
	addr               netip.Addr
	ambient            bool
}

func (p podSpec) uid() string { return string(model.FilePodUID(p.ns, p.name)) }

// meshYAML is the bench's config directory for zmeshd: the ambient and
// plain namespaces and the four pods, no policy (the plain allow path).
func meshYAML() string {
	var b strings.Builder
	b.WriteString("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: bench\n  labels:\n    istio.io/dataplane-mode: ambient\n---\n")
	b.WriteString("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: plain\n")
	for _, p := range []podSpec{meshClient, meshServer, plainClient, plainServer, wpServer} {
		fmt.Fprintf(&b, "---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: %s\n  namespace: %s\n  labels: {app: %s}\nspec:\n  nodeName: %s\n  serviceAccountName: %s\n  containers: [{name: app, image: app}]\nstatus:\n  podIP: %s\n",
			p.name, p.ns, p.name, p.node, p.sa, p.addr)
	}
	// The waypoint path's Service: the mesh server pod behind a VIP,
	// bound to the waypoint.
	fmt.Fprintf(&b, `---
apiVersion: v1
kind: Service
metadata:
  name: %s
  namespace: %s
  labels: {%s: %s}
spec:
  clusterIP: %s
  selector: {app: %s}
  ports:
    - {name: http, port: %d, targetPort: %d}
    - {name: grpc, appProtocol: grpc, port: %d, targetPort: %d}
`, echoService, wpServer.ns, model.LabelUseWaypoint, waypointGateway, echoVIP, wpServer.name, httpPort, httpPort, grpcPort, grpcPort)
	return b.String()
}

// env is the running topology and everything that must be undone.
type env struct {
	tmp, binDir, meshDir, caDir string
	pkiDir                      string // the CA and certificate of stunnel and nginx
	log                         *slog.Logger
	lan                         *netenv.LAN
	hosts                       []*netenv.NS // node host namespaces
	pods                        map[string]*netenv.NS
	nodes                       []*noderunner.Node
	zmeshd                      *proc.Proc
	zmeshdMon                   string
	zmeshdXDS                   string
	zmeshdSecure                string     // zmeshd's TLS port, the waypoint's
	zts                         []*ztunnel // client node's, server node's
	proxyHost                   *netenv.NS // node-3's host namespace
	wp                          *waypoint
	undo                        []func()
}

type ztunnel struct {
	*proc.Proc
	node                 string
	admin, metrics, tokF string
}

func (e *env) defer_(f func()) { e.undo = append(e.undo, f) }

// Close undoes everything, last first.
func (e *env) Close() {
	for i := len(e.undo) - 1; i >= 0; i-- {
		e.undo[i]()
	}
	e.undo = nil
}

// setup builds the topology and starts zmeshd, both nodes' agents and
// ztunnels, and enrols the ambient pods.
func setup(ctx context.Context, binDir, tmp string, log *slog.Logger) (_ *env, err error) {
	e := &env{tmp: tmp, binDir: binDir, log: log, pods: map[string]*netenv.NS{}}
	defer func() {
		if err != nil {
			e.Close()
		}
	}()
	e.meshDir = filepath.Join(tmp, "mesh")
	if err := os.MkdirAll(e.meshDir, 0o755); err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(e.meshDir, "00-bench.yaml"), []byte(meshYAML()), 0o644); err != nil {
		return nil, err
	}

	e.lan, err = netenv.NewLAN(lanPrefix)
	if err != nil {
		return nil, fmt.Errorf("build network namespaces: %w", err)
	}
	e.defer_(func() { e.lan.Close() })
	for i, name := range nodeNames {
		h, err := e.lan.HostAt(name, nodeAddrs[i])
		if err != nil {
			return nil, err
		}
		e.hosts = append(e.hosts, h)
	}
	if e.proxyHost, err = e.lan.HostAt(proxyNode, proxyNodeAddr); err != nil {
		return nil, err
	}
	for _, p := range []podSpec{meshClient, meshServer, plainClient, plainServer, wpServer} {
		n, err := e.lan.HostAt(p.name, p.addr)
		if err != nil {
			return nil, err
		}
		e.pods[p.name] = n
	}
	// Many short connections: let clients reuse ports in TIME_WAIT and
	// widen the ephemeral range, in every namespace that opens connections
	// (the node hosts too: stunnel and haproxy dial from there).
	for _, n := range append(append([]*netenv.NS{}, e.hosts...), e.proxyHost, e.pods[meshClient.name], e.pods[plainClient.name], e.pods[meshServer.name], e.pods[plainServer.name], e.pods[wpServer.name]) {
		if err := sysctl(n, "net.ipv4.tcp_tw_reuse=1", "net.ipv4.ip_local_port_range=10000 65000", "net.core.somaxconn=4096", "net.ipv4.tcp_max_syn_backlog=4096"); err != nil {
			return nil, err
		}
	}

	ports, err := freeAddrs(3 + 3*3)
	if err != nil {
		return nil, err
	}
	// zmeshd serves waypoints on its TLS port only (their resources go
	// by the identity of the client certificate); the ztunnels here use
	// the plain one with their tokens.
	e.zmeshdXDS, e.zmeshdMon, e.zmeshdSecure = ports[0], ports[1], ports[2+3*len(nodeNames)]
	tokens := filepath.Join(tmp, "tokens")
	var tok strings.Builder
	for _, n := range append(append([]string{}, nodeNames...), memNode) {
		fmt.Fprintf(&tok, "token-ztunnel-%s spiffe://cluster.local/ns/istio-system/sa/ztunnel %s\n", n, n)
	}
	// The waypoint's identity is its Gateway's service account, bound to
	// no node (a pod's projected token, in a cluster).
	fmt.Fprintf(&tok, "%s %s -\n", waypointToken, identity.MustWorkloadID(identity.DefaultTrustDomain, meshServer.ns, waypointGateway))
	if err := os.WriteFile(tokens, []byte(tok.String()), 0o600); err != nil {
		return nil, err
	}
	// The waypoint's Gateway and what the deployer makes of it, in the
	// directory before zmeshd first reads it.
	gw, wpObjs, err := waypointDesired(e.zmeshdForPods())
	if err != nil {
		return nil, err
	}
	wpPod := waypointPod(wpObjs)
	wpYAML, err := waypointYAML(gw, wpObjs, wpPod)
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(e.meshDir, "10-waypoint.yaml"), []byte(wpYAML), 0o644); err != nil {
		return nil, err
	}
	e.caDir = filepath.Join(tmp, "ca")
	e.zmeshd, err = startProc(ctx, filepath.Join(binDir, "zmeshd"), filepath.Join(tmp, "zmeshd.log"),
		"http://"+e.zmeshdMon+"/ready",
		"--config-dir", e.meshDir, "--tokens-file", tokens, "--ca-dir", e.caDir,
		"--xds-address", e.zmeshdXDS, "--secure-address", e.zmeshdSecure, "--secure-hosts", "localhost,127.0.0.1,"+controlPlane.String(),
		"--monitoring-address", e.zmeshdMon)
	if err != nil {
		return nil, fmt.Errorf("zmeshd: %w", err)
	}
	e.defer_(e.zmeshd.Stop)

	members := agent.MembershipFunc(func(ns, name string) (string, bool) {
		for _, p := range []podSpec{meshClient, meshServer, wpServer} {
			if p.ns == ns && p.name == name {
				return p.sa, true
			}
		}
		return "", false
	})
	for i, name := range nodeNames {
		n, zt, err := e.startNode(ctx, name, members, ports[2+3*i:5+3*i])
		if err != nil {
			return nil, err
		}
		e.nodes = append(e.nodes, n)
		e.zts = append(e.zts, zt)
	}
	for _, p := range []podSpec{meshClient, meshServer, wpServer} {
		i := slices.Index(nodeNames, p.node)
		np := noderunner.Pod{UID: p.uid(), Name: p.name, Namespace: p.ns, NetnsPath: "/run/netns/" + e.pods[p.name].Name, IPs: []string{p.addr.String()}}
		if _, err := e.nodes[i].Add(ctx, np); err != nil {
			return nil, fmt.Errorf("enrol %s: %w", p.name, err)
		}
		node := e.nodes[i]
		e.defer_(func() { node.Del(context.Background(), np) })
	}
	if err := e.startWaypoint(ctx, wpObjs, wpPod); err != nil {
		return nil, err
	}
	return e, nil
}

// memNode is the node of the memory measurement: a ztunnel with no pods,
// whose growth is the cost of its state.
const memNode = "node-mem"

// startNode starts a node's agent (in this process) and its ztunnel with
// the admin, metrics and readiness ports given.
func (e *env) startNode(ctx context.Context, name string, members agent.Membership, ports []string) (*noderunner.Node, *ztunnel, error) {
	ndir := filepath.Join(e.tmp, name)
	if err := os.MkdirAll(ndir, 0o700); err != nil {
		return nil, nil, err
	}
	n, err := noderunner.Start(name, ndir, members, e.lan.Underlay.Handle(), e.log)
	if err != nil {
		return nil, nil, err
	}
	e.defer_(func() { n.Close() })
	zt := &ztunnel{node: name, admin: ports[0], metrics: ports[1], tokF: filepath.Join(ndir, "token")}
	if err := os.WriteFile(zt.tokF, []byte("token-ztunnel-"+name), 0o600); err != nil {
		return nil, nil, err
	}
	zt.Proc, err = startProc(ctx, filepath.Join(e.binDir, "ztunnel"), filepath.Join(ndir, "ztunnel.log"),
		"http://"+ports[2]+"/healthz/ready",
		"--node", name, "--zds-socket", n.ZDSPath, "--state-dir", filepath.Join(ndir, "ztunnel-state"),
		"--xds-address", e.zmeshdXDS, "--plaintext-control-plane",
		"--root-cert", filepath.Join(e.caDir, identity.FileRootCert), "--token-file", zt.tokF, "--drain-grace", "1s",
		"--log-level", "warn",
		"--admin-address", zt.admin, "--metrics-address", zt.metrics, "--readiness-address", ports[2])
	if err != nil {
		return nil, nil, fmt.Errorf("%s ztunnel: %w", name, err)
	}
	e.defer_(zt.Stop)
	return n, zt, nil
}

// zmeshdForPods is zmeshd's TLS port as the waypoint's pod reaches it.
func (e *env) zmeshdForPods() netip.AddrPort {
	return netip.AddrPortFrom(controlPlane, netip.MustParseAddrPort(e.zmeshdSecure).Port())
}

// sysctl sets net sysctls inside a namespace (they are per namespace).
func sysctl(n *netenv.NS, kvs ...string) error {
	args := append([]string{"netns", "exec", n.Name, "sysctl", "-q", "-w"}, kvs...)
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		return fmt.Errorf("sysctl in %s: %v: %s", n.Name, err, out)
	}
	return nil
}

// freeAddrs returns n loopback addresses whose ports are free right now.
func freeAddrs(n int) ([]string, error) {
	out := make([]string, 0, n)
	for len(out) < n {
		a, err := proc.FreeAddr()
		if err != nil {
			return nil, err
		}
		if !slices.Contains(out, a) {
			out = append(out, a)
		}
	}
	return out, nil
}

// startProc starts one of the mesh's processes (e2e/proc, as the suite and
// the demo run them) and, with ready set, waits until GET ready answers.
func startProc(ctx context.Context, bin, logPath, ready string, args ...string) (*proc.Proc, error) {
	p := &proc.Proc{Name: filepath.Base(bin), Bin: bin, Args: args, LogPath: logPath, Ready: ready}
	if err := p.Start(ctx); err != nil {
		return nil, err
	}
	return p, nil
}

// startIn starts a peer inside a namespace (ip netns exec execs it, so the
// pid is the program's).
func startIn(ctx context.Context, n *netenv.NS, logPath, bin string, args ...string) (*proc.Proc, error) {
	p := &proc.Proc{Name: filepath.Base(bin), Bin: "ip", Args: append([]string{"netns", "exec", n.Name, bin}, args...), LogPath: logPath}
	if err := p.Start(ctx); err != nil {
		return nil, err
	}
	return p, nil
}

func waitFor(ctx context.Context, limit time.Duration, cond func() bool) error {
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	for !cond() {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
	return nil
}
