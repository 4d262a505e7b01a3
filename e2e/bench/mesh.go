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

	"golang.org/x/sys/unix"

	"github.com/zmesh/zmesh/controlplane/model"
	"github.com/zmesh/zmesh/e2e/netenv"
	"github.com/zmesh/zmesh/e2e/noderunner"
	"github.com/zmesh/zmesh/e2e/proc"
	"github.com/zmesh/zmesh/identity"
)

// The topology, the demo's and the e2e suite's: one LAN (an underlay
// bridge in its own namespace) and three node host namespaces on it, each
// forwarding for a pod range of its own (netenv.PodCIDR) and routing the
// others' over the LAN. Each node's pods sit behind its pod bridge, made by
// the real CNI chain the node runner runs (bridge and host-local, with
// zmesh-cni chained in by zmesh-cni-agent on the meshed nodes). Node-1
// holds the clients, node-2 the servers; stunnel and haproxy run on their
// hosts as a user would run them on the nodes. Pods of one role are alike
// (same node, same bridge), so the paths differ only by what carries the
// bytes.
var (
	lanPrefix = netip.MustParsePrefix("10.44.0.0/24")
	// nodeNames are the meshed nodes (zmesh-cni-agent and ztunnel each).
	nodeNames = []string{"node-1", "node-2"}
	// node-3 runs the L7 proxies: the waypoint (in a pod of its own, as
	// the deployer schedules it) and, on the node's host, nginx and
	// haproxy in HTTP mode. It has no agent and no ztunnel: the waypoint
	// is not captured and no ambient pod runs there.
	proxyNode = "node-3"
	// The nodes' LAN addresses, in the order netenv.LAN.AddNodes hands
	// them out (setup checks it): the proxies' configurations name them.
	nodeAddrs     = []netip.Addr{netip.MustParseAddr("10.44.0.2"), netip.MustParseAddr("10.44.0.3")}
	proxyNodeAddr = netip.MustParseAddr("10.44.0.4")

	meshClient  = podSpec{"mesh-client", "bench", "client", "node-1", podAddr(0, 2), true}
	plainClient = podSpec{"plain-client", "plain", "client", "node-1", podAddr(0, 3), false}
	meshServer  = podSpec{"mesh-server", "bench", "server", "node-2", podAddr(1, 2), true}
	plainServer = podSpec{"plain-server", "plain", "server", "node-2", podAddr(1, 3), false}
	// The waypoint path's server: an ambient pod like mesh-server, behind
	// the echo Service bound to the waypoint. A pod of its own, because
	// ztunnel refuses traffic that reaches such a pod around the waypoint,
	// and the mesh path goes to mesh-server's address directly.
	wpServer  = podSpec{"wp-server", "bench", "server", "node-2", podAddr(1, 4), true}
	benchPods = []podSpec{meshClient, meshServer, plainClient, plainServer, wpServer}
)

// allNodes are the nodes in the order AddNodes makes them: the i-th has
// pod range netenv.PodCIDR(i).
func allNodes() []string { return append(slices.Clone(nodeNames), proxyNode) }

// podAddr is address .host of the i-th node's pod range (.1 is the
// node's, the pod bridge's gateway).
func podAddr(i int, host byte) netip.Addr {
	a := netenv.PodCIDR(i).Addr().As4()
	a[3] = host
	return netip.AddrFrom4(a)
}

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
	for _, p := range benchPods {
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
	nodes                       []*node // node-1, node-2, node-3 (proxyNode)
	pods                        map[string]*netenv.NS
	zmeshd                      *proc.Proc
	zmeshdMon                   string
	zmeshdXDS                   string
	zmeshdSecure                string     // zmeshd's TLS port, the waypoint's
	zts                         []*ztunnel // client node's, server node's
	wp                          *waypoint
	undo                        []func()
	// What the teardown found left behind (pins, errors), and the root
	// namespace's links before anything was made.
	left      []string
	rootLinks []string
}

// node is one node: its host namespace on the LAN with its pod range, its
// CNI directories and node runner, and on a meshed node its bpffs,
// zmesh-cni-agent and ztunnel.
type node struct {
	*netenv.Node
	dir, cniBin, cniConf string
	bpfRoot              string
	bpfBase              []string // the filesystem's own entries
	agent                *proc.Proc
	zt                   *ztunnel
	runner               *noderunner.Files
}

type ztunnel struct {
	*proc.Proc
	node                 string
	admin, metrics, tokF string
}

func (e *env) defer_(f func()) { e.undo = append(e.undo, f) }

// Close undoes everything, last first, and returns what it left behind:
// teardown errors, bpffs pins once the pods are gone, namespaces, new
// links in the root namespace, mounts and processes naming the work
// directory (which the caller removes), and processes still in one of the
// bench's namespaces.
func (e *env) Close() []string {
	nss := e.namespaces()
	for i := len(e.undo) - 1; i >= 0; i-- {
		e.undo[i]()
	}
	e.undo = nil
	left := append(e.left, netenv.LeftBehind(e.tmp, e.rootLinks, true)...)
	return append(left, processesIn(nss)...)
}

func (e *env) node(name string) *node {
	for _, n := range e.nodes {
		if n.Name == name {
			return n
		}
	}
	return nil
}

func (e *env) proxyHost() *netenv.NS { return e.node(proxyNode).Host }

// setup builds the topology, starts zmeshd, both meshed nodes' agents and
// ztunnels, and every node's pods through its CNI chain (the ambient ones
// are captured and handed to ztunnel on the way).
func setup(ctx context.Context, binDir, tmp string, log *slog.Logger) (_ *env, err error) {
	e := &env{tmp: tmp, binDir: binDir, log: log, pods: map[string]*netenv.NS{}, rootLinks: netenv.RootLinks()}
	defer func() {
		if err == nil {
			return
		}
		if left := e.Close(); len(left) > 0 {
			err = fmt.Errorf("%w; and the cleanup left %d things behind:\n  %s", err, len(left), strings.Join(left, "\n  "))
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
	e.defer_(func() {
		if err := e.lan.Close(); err != nil {
			e.left = append(e.left, "network namespaces: "+err.Error())
		}
	})
	hosts, err := e.lan.AddNodes(allNodes()...)
	if err != nil {
		return nil, err
	}
	for i, h := range hosts {
		if want := append(slices.Clone(nodeAddrs), proxyNodeAddr)[i]; h.Addr != want {
			return nil, fmt.Errorf("%s: the LAN gave it %s, the bench's configurations expect %s", h.Name, h.Addr, want)
		}
		n := &node{Node: h, dir: filepath.Join(tmp, h.Name)}
		n.cniBin, n.cniConf, n.bpfRoot = filepath.Join(n.dir, "cni-bin"), filepath.Join(n.dir, "cni-conf"), filepath.Join(n.dir, "bpf")
		if err := os.MkdirAll(n.dir, 0o755); err != nil {
			return nil, err
		}
		// The cluster's own pod network, before the mesh arrives.
		if err := noderunner.InstallPrimaryCNI(n.cniBin, n.cniConf, filepath.Join(n.dir, "ipam"), n.PodCIDR); err != nil {
			return nil, err
		}
		e.nodes = append(e.nodes, n)
	}
	for _, p := range benchPods {
		if n := e.node(p.node); n == nil || !n.PodCIDR.Contains(p.addr) {
			return nil, fmt.Errorf("pod %s: %s is not in the pod range of node %s", p.name, p.addr, p.node)
		}
	}

	ports, err := freeAddrs(3 + 4*len(nodeNames))
	if err != nil {
		return nil, err
	}
	// zmeshd serves waypoints on its TLS port only (their resources go
	// by the identity of the client certificate); the ztunnels and agents
	// here use the plain one.
	e.zmeshdXDS, e.zmeshdMon, e.zmeshdSecure = ports[0], ports[1], ports[2]
	tokens := filepath.Join(tmp, "tokens")
	var tok strings.Builder
	for _, n := range append(slices.Clone(nodeNames), memNode) {
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

	for i, name := range nodeNames {
		if err := e.startMeshNode(ctx, e.node(name), ports[3+4*i:7+4*i]); err != nil {
			return nil, err
		}
		e.zts = append(e.zts, e.node(name).zt)
	}
	// The waypoint's pod reaches zmeshd's TLS port at controlPlane, on
	// node-3's host (a ClusterIP Service in a cluster).
	fwd, err := netenv.Forward(e.proxyHost(), e.zmeshdForPods(), e.zmeshdSecure)
	if err != nil {
		return nil, err
	}
	e.defer_(func() {
		if err := fwd.Close(); err != nil {
			e.left = append(e.left, "control-plane forwarder: "+err.Error())
		}
	})
	for _, n := range e.nodes {
		if err := e.startPods(ctx, n); err != nil {
			return nil, err
		}
	}
	for _, p := range benchPods {
		n := e.node(p.node)
		rp := n.runner.Pod(p.ns, p.name)
		if rp == nil || rp.IP != p.addr {
			return nil, fmt.Errorf("pod %s did not start on %s at %s", p.name, p.node, p.addr)
		}
		// The chain's verdict, as the demo checks it: an ambient pod is
		// captured (its pin under the node's bpffs), a plain one is not.
		if n.pinned(p.uid()) != p.ambient {
			return nil, fmt.Errorf("pod %s: captured=%v, want %v (agent log: %s)", p.name, n.pinned(p.uid()), p.ambient, filepath.Join(n.dir, "agent.log"))
		}
		e.pods[p.name] = rp.NS
	}
	// Many short connections: let clients reuse ports in TIME_WAIT and
	// widen the ephemeral range, in every namespace that opens connections
	// (the node hosts too: stunnel, haproxy and nginx dial from there).
	nss := []*netenv.NS{}
	for _, n := range e.nodes {
		nss = append(nss, n.Host)
	}
	for _, p := range benchPods {
		nss = append(nss, e.pods[p.name])
	}
	for _, n := range nss {
		if err := sysctl(n, benchSysctls...); err != nil {
			return nil, err
		}
	}
	if err := e.startWaypoint(ctx, wpObjs, wpPod); err != nil {
		return nil, err
	}
	return e, nil
}

// benchSysctls are set in every namespace that opens or accepts many
// connections.
var benchSysctls = []string{"net.ipv4.tcp_tw_reuse=1", "net.ipv4.ip_local_port_range=10000 65000", "net.core.somaxconn=4096", "net.ipv4.tcp_max_syn_backlog=4096"}

// memNode is the node of the memory measurement: a ztunnel with no pods,
// whose growth is the cost of its state.
const memNode = "node-mem"

// startMeshNode starts a meshed node's components as their DaemonSets
// would run them, as the demo does: zmesh-cni-agent with no cluster
// (membership from zmeshd's workload stream), which chains zmesh-cni into
// the node's conflist, and ztunnel, with the agent's health port and
// ztunnel's admin, metrics and readiness ports given.
func (e *env) startMeshNode(ctx context.Context, n *node, ports []string) error {
	// A bpffs of the node's own: its pins go away whole with the node.
	if err := os.MkdirAll(n.bpfRoot, 0o700); err != nil {
		return err
	}
	if err := unix.Mount("bpf", n.bpfRoot, "bpf", 0, ""); err != nil {
		return fmt.Errorf("%s: mount bpffs: %w", n.Name, err)
	}
	e.defer_(func() {
		if err := unix.Unmount(n.bpfRoot, unix.MNT_DETACH); err != nil {
			e.left = append(e.left, fmt.Sprintf("unmount %s: %v", n.bpfRoot, err))
		}
	})
	n.bpfBase = netenv.BPFEntries(n.bpfRoot)
	health := ports[0]
	var err error
	n.agent, err = startProc(ctx, filepath.Join(e.binDir, "zmesh-cni-agent"), filepath.Join(n.dir, "agent.log"),
		"http://"+health+"/readyz",
		"--node", n.Name, "--xds-address", e.zmeshdXDS, "--plaintext-control-plane",
		"--host-netns", "/run/netns/"+n.Host.Name,
		"--cni-bin-dir", n.cniBin, "--cni-conf-dir", n.cniConf, "--plugin-binary", filepath.Join(e.binDir, "zmesh-cni"),
		"--cni-socket", filepath.Join(n.dir, "cni.sock"), "--zds-socket", filepath.Join(n.dir, "zds.sock"), "--bpf-root", n.bpfRoot,
		"--health-address", health, "--chain-interval", "200ms")
	if err != nil {
		return fmt.Errorf("%s zmesh-cni-agent: %w", n.Name, err)
	}
	e.defer_(n.agent.Stop)
	if err := proc.WaitFor(ctx, 15*time.Second, func() bool { return slices.Contains(n.chain(), "zmesh-cni") }); err != nil {
		return fmt.Errorf("%s: the agent did not chain zmesh-cni into %s", n.Name, noderunner.PrimaryConflist)
	}
	if n.zt, err = e.startZtunnel(ctx, n.Name, n.dir, filepath.Join(n.dir, "zds.sock"), ports[1:]); err != nil {
		return err
	}
	// Pins left once the node's pods are gone (the runner closes before
	// this runs) are the product's leak.
	e.defer_(func() {
		for _, p := range netenv.BPFEntries(n.bpfRoot) {
			if !slices.Contains(n.bpfBase, p) {
				e.left = append(e.left, "bpffs pin left after every pod was deleted: "+p)
			}
		}
	})
	return nil
}

// startZtunnel starts a node's ztunnel on the ZDS socket zds, with the
// admin, metrics and readiness ports given.
func (e *env) startZtunnel(ctx context.Context, name, ndir, zds string, ports []string) (*ztunnel, error) {
	zt := &ztunnel{node: name, admin: ports[0], metrics: ports[1], tokF: filepath.Join(ndir, "token")}
	if err := os.WriteFile(zt.tokF, []byte("token-ztunnel-"+name), 0o600); err != nil {
		return nil, err
	}
	var err error
	zt.Proc, err = startProc(ctx, filepath.Join(e.binDir, "ztunnel"), filepath.Join(ndir, "ztunnel.log"),
		"http://"+ports[2]+"/healthz/ready",
		"--node", name, "--zds-socket", zds, "--state-dir", filepath.Join(ndir, "ztunnel-state"),
		"--xds-address", e.zmeshdXDS, "--plaintext-control-plane",
		"--root-cert", filepath.Join(e.caDir, identity.FileRootCert), "--token-file", zt.tokF, "--drain-grace", "1s",
		"--log-level", "warn",
		"--admin-address", zt.admin, "--metrics-address", zt.metrics, "--readiness-address", ports[2])
	if err != nil {
		return nil, fmt.Errorf("%s ztunnel: %w", name, err)
	}
	e.defer_(zt.Stop)
	return zt, nil
}

// startPods has the node's runner (the node runner's mode without a
// cluster, on zmeshd's config directory) start the node's pods through its
// CNI chain: their namespaces and addresses, no process (the bench starts
// the servers and the waypoint in them). A pod whose ADD failed (the
// agent not yet knowing it is ambient, say) is tried again, as a kubelet
// retries a sandbox. Its Close, on the way out, runs CNI DEL while the
// agent still runs, so capture is released.
func (e *env) startPods(ctx context.Context, n *node) error {
	logFile, err := os.Create(filepath.Join(n.dir, "noderunner.log"))
	if err != nil {
		return err
	}
	n.runner = &noderunner.Files{Dir: e.meshDir, Node: n.Name, Host: n.Host, CNIBinDir: n.cniBin, CNIConfDir: n.cniConf,
		Log: slog.New(slog.NewJSONHandler(logFile, nil))}
	e.defer_(func() {
		if err := n.runner.Close(); err != nil {
			e.left = append(e.left, fmt.Sprintf("%s pods: %v", n.Name, err))
		}
		logFile.Close()
	})
	var last error
	if err := proc.WaitFor(ctx, 60*time.Second, func() bool {
		last = n.runner.Sync(ctx)
		return last == nil
	}); err != nil {
		return fmt.Errorf("%s: start pods: %w (runner log: %s)", n.Name, last, logFile.Name())
	}
	return nil
}

// chain lists the node's CNI plugins in the order ADD runs them.
func (n *node) chain() []string { return noderunner.Chain(n.cniConf) }

// pinned reports whether the agent pinned a capture for the pod uid.
func (n *node) pinned(uid string) bool {
	_, err := os.Stat(filepath.Join(n.bpfRoot, uid))
	return err == nil
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

// namespaces maps the inode of every network namespace the bench made so
// far (the LAN's, the nodes' hosts, the pods') to its name, taken while
// they exist: once they are gone, a process still holding one is found by
// it.
func (e *env) namespaces() map[uint64]string {
	out := map[uint64]string{}
	add := func(n *netenv.NS) {
		var st unix.Stat_t
		if n != nil && unix.Stat("/run/netns/"+n.Name, &st) == nil {
			out[st.Ino] = n.Name
		}
	}
	if e.lan != nil {
		add(e.lan.Underlay)
	}
	for _, n := range e.nodes {
		add(n.Host)
		if n.runner != nil {
			for _, p := range n.runner.Pods() {
				add(p.NS)
			}
		}
	}
	return out
}

// processesIn lists the processes whose network namespace is one of nss
// (fortio's and iperf3's servers, the proxies and their workers, the
// waypoint: whatever the bench started in a namespace of its own).
func processesIn(nss map[uint64]string) []string {
	var out []string
	ents, _ := os.ReadDir("/proc")
	for _, d := range ents {
		link, err := os.Readlink(filepath.Join("/proc", d.Name(), "ns", "net"))
		if err != nil {
			continue
		}
		var ino uint64
		if _, err := fmt.Sscanf(link, "net:[%d]", &ino); err != nil {
			continue
		}
		if name, ok := nss[ino]; ok {
			cmd, _ := os.ReadFile(filepath.Join("/proc", d.Name(), "cmdline"))
			out = append(out, fmt.Sprintf("process %s in namespace %s: %s", d.Name(), name, strings.TrimSpace(strings.ReplaceAll(string(cmd), "\x00", " "))))
		}
	}
	return out
}
