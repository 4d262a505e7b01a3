package main

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/features"
	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/zmesh/zmesh/controlplane/deployer"
	"github.com/zmesh/zmesh/e2e/netenv"
	"github.com/zmesh/zmesh/e2e/noderunner"
	"github.com/zmesh/zmesh/e2e/podapp"
	"github.com/zmesh/zmesh/e2e/proc"
	"github.com/zmesh/zmesh/identity"
)

// The demo's topology (docs/decisions.md, "Where things run in tests and
// the demo"): nodes meet on an underlay
// bridge in its own namespace; each node has a host namespace holding its
// pod bridge (made by the CNI bridge plugin) and routes to the other
// nodes' pod ranges. zmeshd and every node's zmesh-cni-agent and ztunnel
// run in the root namespace as processes reaching each other on
// 127.0.0.1; only pod sockets live in pod namespaces.
var (
	underlay  = netip.MustParsePrefix("10.44.0.0/24")
	nodeNames = []string{"node-1", "node-2"}
	// waypointNode runs the waypoints (a scheduler's choice, fixed here).
	waypointNode = "node-2"
	// controlPlane is zmeshd's TLS port as pods reach it, standing in for
	// its Service (outside serviceCIDR, which waypoints' Services use).
	controlPlane = netip.MustParseAddr("10.96.1.1")
	serviceCIDR  = netip.MustParsePrefix("10.96.0.0/24")
	// waypointImage is the image of the deployer's waypoint Deployments:
	// the node runner runs it as the waypoint binary built here.
	waypointImage = "zmesh/waypoint:demo"
)

// podCIDR is node-i's pod range, which the YAML's pod addresses must use.

// mesh is everything the demo starts, in the order Close removes it.
type mesh struct {
	tmp     string
	keep    bool
	bin     string
	meshDir string
	lan     *netenv.LAN
	nodes   []*node

	zmeshd               *proc.Proc
	zmeshdXDS, zmeshdMon string
	caDir                string
	// zmeshdSecure is zmeshd's TLS port (waypoints authenticate there, and
	// zmeshd picks their configuration by that identity); pods reach it at
	// controlPlane, forwarded by the waypoint node's host namespace.
	zmeshdSecure string
	forward      io.Closer
	// waypoints are the YAML's waypoint Gateways, each with the static
	// token zmeshd accepts from its pods, kept in tokensFile (which
	// zmeshd reads again when it changes); guarded by wpMu, as the
	// waypoint node's runner reads them while the input is applied again.
	wpMu                   sync.Mutex
	waypoints              map[types.NamespacedName]string
	tokensFile             string
	stopRunners            context.CancelFunc
	runners                sync.WaitGroup
	rootLinks              []string
	pinsLeft, teardownErrs []string
}

// node is one node: its host namespace, CNI directories, bpffs, agent,
// ztunnel and node runner.
type node struct {
	name    string
	host    *netenv.NS
	addr    netip.Addr // on the underlay
	cidr    netip.Prefix
	dir     string
	bpfRoot string
	mounted bool     // bpfRoot is a bpffs we mounted
	bpfBase []string // the filesystem's own entries
	cniBin  string
	cniConf string
	zds     string

	agent                       *proc.Proc
	agentHealth                 string
	ztunnel                     *proc.Proc
	ztAdmin, ztMetrics, ztReady string
	runner                      *noderunner.Files
	running                     bool // runner.Run was started
}

// preflight says clearly what keeps the demo from running here.
func preflight(needGo bool) error {
	if os.Geteuid() != 0 {
		return errors.New("the demo creates network namespaces and loads eBPF: it needs root (try: sudo make demo)")
	}
	if err := features.HaveProgramType(ebpf.SkLookup); err != nil {
		return fmt.Errorf("this kernel cannot run the capture (eBPF sk_lookup programs, Linux 5.9 or later, CONFIG_BPF_SYSCALL): %w", err)
	}
	for _, p := range []string{"bridge", "host-local"} {
		if _, err := os.Stat(filepath.Join(noderunner.DebianCNI, p)); err != nil {
			return fmt.Errorf("the nodes' pod network uses the CNI plugin %s: %w (install containernetworking-plugins, or run make demo, which does)", p, err)
		}
	}
	if _, err := exec.LookPath("go"); err != nil && needGo {
		return fmt.Errorf("the demo builds zmesh's binaries: %w", err)
	}
	return nil
}

// newMesh makes the mesh's temporary directory (named prefix*), which
// Close removes unless ZMESH_DEMO_KEEP is set.
func newMesh(prefix string) (*mesh, error) {
	m := &mesh{keep: os.Getenv("ZMESH_DEMO_KEEP") != ""}
	var err error
	if m.tmp, err = os.MkdirTemp("", prefix); err != nil {
		return nil, err
	}
	return m, nil
}

// binaries takes the mesh's binaries from binDir, or, when it is empty,
// builds them into the temporary directory.
func (m *mesh) binaries(ctx context.Context, st story, binDir string) error {
	m.bin = binDir
	if m.bin != "" {
		return nil
	}
	m.bin = filepath.Join(m.tmp, "bin")
	st.note("building zmeshd, ztunnel, zmesh-cni-agent, zmesh-cni, zmeshctl and waypoint (go build ./cmd/...)")
	return m.build(ctx)
}

// build compiles the binaries the demo runs.
func (m *mesh) build(ctx context.Context) error {
	cmd := exec.CommandContext(ctx, "go", "build", "-o", m.bin+"/",
		"github.com/zmesh/zmesh/cmd/zmeshd", "github.com/zmesh/zmesh/cmd/ztunnel", "github.com/zmesh/zmesh/cmd/zmeshctl",
		"github.com/zmesh/zmesh/cmd/zmesh-cni-agent", "github.com/zmesh/zmesh/cmd/zmesh-cni", "github.com/zmesh/zmesh/cmd/waypoint")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build: %w\n%s", err, out)
	}
	return nil
}

// network builds the underlay and the nodes' host namespaces, with routes
// between the nodes' pod ranges.
func (m *mesh) network() error {
	m.rootLinks = netenv.RootLinks()
	lan, err := netenv.NewLAN(underlay)
	if err != nil {
		return fmt.Errorf("underlay: %w", err)
	}
	m.lan = lan
	hosts, err := lan.AddNodes(nodeNames...)
	if err != nil {
		return err
	}
	for _, h := range hosts {
		n := &node{name: h.Name, host: h.Host, addr: h.Addr, cidr: h.PodCIDR, dir: filepath.Join(m.tmp, h.Name)}
		n.bpfRoot, n.cniBin, n.cniConf = filepath.Join(n.dir, "bpf"), filepath.Join(n.dir, "cni-bin"), filepath.Join(n.dir, "cni-conf")
		n.zds = filepath.Join(n.dir, "zds.sock")
		if err := os.MkdirAll(n.dir, 0o755); err != nil {
			return err
		}
		m.nodes = append(m.nodes, n)
	}
	return nil
}

func (m *mesh) node(name string) *node {
	for _, n := range m.nodes {
		if n.name == name {
			return n
		}
	}
	return nil
}

// startZmeshd runs zmeshd on the YAML directory. With no TokenReview
// without a cluster, callers have static tokens: each node's ztunnel one
// binding it to its node, and each waypoint Gateway of the YAML one for
// its identity (the Gateway's namespace and name as service account, bound
// to no node), which its pods present as their projected token. zmeshd
// reads the file again when it changes: setWaypoints rewrites it as
// waypoint Gateways come and go.
func (m *mesh) startZmeshd(ctx context.Context) error {
	m.wpMu.Lock()
	m.tokensFile = filepath.Join(m.tmp, "tokens")
	err := m.writeTokensLocked()
	m.wpMu.Unlock()
	if err != nil {
		return err
	}
	if m.zmeshdXDS, err = proc.FreeAddr(); err != nil {
		return err
	}
	if m.zmeshdMon, err = proc.FreeAddr(); err != nil {
		return err
	}
	if m.zmeshdSecure, err = proc.FreeAddr(); err != nil {
		return err
	}
	m.caDir = filepath.Join(m.tmp, "ca")
	m.zmeshd, err = startProc(ctx, "zmeshd", filepath.Join(m.bin, "zmeshd"), filepath.Join(m.tmp, "zmeshd.log"),
		"http://"+m.zmeshdMon+"/ready",
		"--config-dir", m.meshDir, "--tokens-file", m.tokensFile, "--ca-dir", m.caDir,
		"--xds-address", m.zmeshdXDS, "--secure-address", m.zmeshdSecure,
		"--secure-hosts", "localhost,127.0.0.1,"+controlPlane.String(), "--monitoring-address", m.zmeshdMon)
	return err
}

// zmeshdForPods is zmeshd's TLS port as the waypoint node's pods reach it.
func (m *mesh) zmeshdForPods() netip.AddrPort {
	ap := netip.MustParseAddrPort(m.zmeshdSecure)
	return netip.AddrPortFrom(controlPlane, ap.Port())
}

// waypointRunner makes node n's runner run the YAML's waypoints: the
// Deployment the deployer would create, its volumes from the demo (the
// Gateway's static token; the CA's root certificate as the
// istio-ca-root-cert ConfigMap zmeshd publishes in a cluster), zmeshd
// reached through a forwarder on the node's host namespace.
func (m *mesh) waypointRunner(n *node) (*noderunner.FilesWaypoints, error) {
	f, err := netenv.Forward(n.host, m.zmeshdForPods(), m.zmeshdSecure)
	if err != nil {
		return nil, err
	}
	m.forward = f
	images := &noderunner.Images{
		Bin: m.bin, Dir: filepath.Join(n.dir, "volumes"), Logs: filepath.Join(n.dir, "pods"),
		Token: func(pod *corev1.Pod, audience string) (string, error) {
			tok, ok := m.waypointToken(types.NamespacedName{Namespace: pod.Namespace, Name: pod.Spec.ServiceAccountName})
			if !ok {
				return "", fmt.Errorf("no static token for service account %s/%s (only waypoint Gateways have one)", pod.Namespace, pod.Spec.ServiceAccountName)
			}
			return tok, nil
		},
		ConfigMap: func(namespace, name string) (map[string]string, bool) {
			if name != "istio-ca-root-cert" {
				return nil, false
			}
			b, err := os.ReadFile(filepath.Join(m.caDir, identity.FileRootCert))
			if err != nil {
				return nil, false
			}
			return map[string]string{"root-cert.pem": string(b)}, true
		},
	}
	return &noderunner.FilesWaypoints{
		Images:  images,
		Options: deployer.Options{Image: waypointImage, XDSAddress: m.zmeshdForPods().String()},
		PodCIDR: n.cidr, ServiceCIDR: serviceCIDR,
	}, nil
}

// startNode gives a node its pod network (bridge + host-local), then the
// mesh's node components as a DaemonSet would run them: zmesh-cni-agent
// with no cluster (membership from zmeshd's workload stream), which
// installs zmesh-cni and chains it into the conflist, and ztunnel.
func (m *mesh) startNode(ctx context.Context, n *node) error {
	if err := noderunner.InstallPrimaryCNI(n.cniBin, n.cniConf, filepath.Join(n.dir, "ipam"), n.cidr); err != nil {
		return err
	}
	// A bpffs of the node's own: its pins go away whole with the node.
	if err := os.MkdirAll(n.bpfRoot, 0o700); err != nil {
		return err
	}
	if err := unix.Mount("bpf", n.bpfRoot, "bpf", 0, ""); err != nil {
		return fmt.Errorf("%s: mount bpffs: %w (the kernel needs BPF: CONFIG_BPF_SYSCALL)", n.name, err)
	}
	n.mounted = true
	n.bpfBase = netenv.BPFEntries(n.bpfRoot)
	var err error
	if n.agentHealth, err = proc.FreeAddr(); err != nil {
		return err
	}
	n.agent, err = startProc(ctx, n.name+" zmesh-cni-agent", filepath.Join(m.bin, "zmesh-cni-agent"), filepath.Join(n.dir, "agent.log"),
		"http://"+n.agentHealth+"/readyz",
		"--node", n.name, "--xds-address", m.zmeshdXDS, "--plaintext-control-plane",
		"--host-netns", "/run/netns/"+n.host.Name,
		"--cni-bin-dir", n.cniBin, "--cni-conf-dir", n.cniConf, "--plugin-binary", filepath.Join(m.bin, "zmesh-cni"),
		"--cni-socket", filepath.Join(n.dir, "cni.sock"), "--zds-socket", n.zds, "--bpf-root", n.bpfRoot,
		"--health-address", n.agentHealth, "--chain-interval", "200ms")
	if err != nil {
		return err
	}
	if err := waitFor(ctx, func() bool { return slices.Contains(n.chain(), "zmesh-cni") }); err != nil {
		return fmt.Errorf("%s: the agent did not chain zmesh-cni into %s", n.name, noderunner.PrimaryConflist)
	}

	tok := filepath.Join(n.dir, "ztunnel-token")
	if err := os.WriteFile(tok, []byte("token-ztunnel-"+n.name), 0o600); err != nil {
		return err
	}
	for _, p := range []*string{&n.ztAdmin, &n.ztMetrics, &n.ztReady} {
		if *p, err = proc.FreeAddr(); err != nil {
			return err
		}
	}
	n.ztunnel, err = startProc(ctx, n.name+" ztunnel", filepath.Join(m.bin, "ztunnel"), filepath.Join(n.dir, "ztunnel.log"),
		"http://"+n.ztReady+"/healthz/ready",
		"--node", n.name, "--zds-socket", n.zds, "--state-dir", filepath.Join(n.dir, "ztunnel-state"),
		"--xds-address", m.zmeshdXDS, "--plaintext-control-plane",
		"--root-cert", filepath.Join(m.caDir, identity.FileRootCert), "--token-file", tok, "--drain-grace", "2s",
		"--admin-address", n.ztAdmin, "--metrics-address", n.ztMetrics, "--readiness-address", n.ztReady)
	return err
}

// chain lists the node's CNI plugins in the order ADD runs them.
func (n *node) chain() []string { return noderunner.Chain(n.cniConf) }

// startPods runs the node runner in file mode on the YAML directory: it
// starts this node's pods through the node's CNI chain, then follows the
// directory (a pod added to it starts, a pod removed stops) until Close.
func (m *mesh) startPods(ctx context.Context, n *node, runCtx context.Context) error {
	logs := filepath.Join(n.dir, "pods")
	if err := os.MkdirAll(logs, 0o755); err != nil {
		return err
	}
	logFile, err := os.Create(filepath.Join(n.dir, "noderunner.log"))
	if err != nil {
		return err
	}
	n.runner = &noderunner.Files{
		Dir: m.meshDir, Node: n.name, Host: n.host, CNIBinDir: n.cniBin, CNIConfDir: n.cniConf,
		App: noderunner.AppCommand(podapp.Env, logs),
		Log: slog.New(slog.NewJSONHandler(logFile, nil)),
	}
	if n.name == waypointNode {
		if n.runner.Waypoints, err = m.waypointRunner(n); err != nil {
			logFile.Close()
			return err
		}
	}
	if err := n.runner.Sync(ctx); err != nil {
		return err
	}
	n.running = true
	m.runners.Go(func() {
		defer logFile.Close()
		if err := n.runner.Run(runCtx); err != nil {
			m.teardownErrs = append(m.teardownErrs, fmt.Sprintf("%s node runner: %v", n.name, err))
		}
	})
	return nil
}

// pinned reports whether the agent pinned a capture for the pod uid.
func (n *node) pinned(uid string) bool {
	_, err := os.Stat(filepath.Join(n.bpfRoot, uid))
	return err == nil
}

// Close removes everything, in order: the pods (CNI DEL while the agents
// still run, so capture is released), the node processes, zmeshd, the
// network namespaces, the bpffs mounts and the temporary directory. It
// may run on a partly built mesh.
func (m *mesh) Close() {
	if m.stopRunners != nil {
		m.stopRunners()
	}
	m.runners.Wait()
	for _, n := range m.nodes {
		if n.runner != nil && !n.running {
			if err := n.runner.Close(); err != nil {
				m.teardownErrs = append(m.teardownErrs, fmt.Sprintf("%s pods: %v", n.name, err))
			}
		}
	}
	// Pins left once every pod is gone are the product's leak.
	for _, n := range m.nodes {
		if !n.mounted {
			continue
		}
		for _, p := range netenv.BPFEntries(n.bpfRoot) {
			if !slices.Contains(n.bpfBase, p) {
				m.pinsLeft = append(m.pinsLeft, p)
			}
		}
	}
	for _, n := range slices.Backward(m.nodes) {
		n.ztunnel.Stop()
		n.agent.Stop()
	}
	m.zmeshd.Stop()
	if m.forward != nil {
		if err := m.forward.Close(); err != nil {
			m.teardownErrs = append(m.teardownErrs, "control-plane forwarder: "+err.Error())
		}
	}
	if m.lan != nil {
		if err := m.lan.Close(); err != nil {
			m.teardownErrs = append(m.teardownErrs, err.Error())
		}
	}
	for _, n := range m.nodes {
		if n.mounted {
			if err := unix.Unmount(n.bpfRoot, unix.MNT_DETACH); err != nil {
				m.teardownErrs = append(m.teardownErrs, fmt.Sprintf("unmount %s: %v", n.bpfRoot, err))
			}
		}
	}
	if !m.keep {
		if err := os.RemoveAll(m.tmp); err != nil {
			m.teardownErrs = append(m.teardownErrs, err.Error())
		}
	}
}

// setWaypoints gives each waypoint Gateway of gws a static token zmeshd
// accepts from its pods (a Gateway that had one keeps it) and takes
// theirs from the Gateways that went; once zmeshd runs, it rewrites the
// tokens file, before the Gateways reach zmeshd's directory so that a new
// waypoint finds its token known.
func (m *mesh) setWaypoints(gws []*gatewayv1.Gateway) error {
	m.wpMu.Lock()
	defer m.wpMu.Unlock()
	next := map[types.NamespacedName]string{}
	for _, gw := range gws {
		if gw.Spec.GatewayClassName != deployer.ClassName {
			continue
		}
		key := types.NamespacedName{Namespace: gw.Namespace, Name: gw.Name}
		if tok, ok := m.waypoints[key]; ok {
			next[key] = tok
		} else {
			next[key] = "token-waypoint-" + rand.Text()
		}
	}
	if maps.Equal(next, m.waypoints) {
		return nil
	}
	m.waypoints = next
	if m.tokensFile == "" {
		return nil
	}
	return m.writeTokensLocked()
}

// writeTokensLocked writes the tokens file, atomically (zmeshd must never
// read half of it). Called with wpMu held.
func (m *mesh) writeTokensLocked() error {
	var lines strings.Builder
	for _, n := range m.nodes {
		fmt.Fprintf(&lines, "token-ztunnel-%s spiffe://%s/ns/istio-system/sa/ztunnel %s\n", n.name, identity.DefaultTrustDomain, n.name)
	}
	for _, gw := range slices.SortedFunc(maps.Keys(m.waypoints), func(a, b types.NamespacedName) int { return strings.Compare(a.String(), b.String()) }) {
		fmt.Fprintf(&lines, "%s %s -\n", m.waypoints[gw], identity.MustWorkloadID(identity.DefaultTrustDomain, gw.Namespace, gw.Name))
	}
	tmp := m.tokensFile + ".tmp"
	if err := os.WriteFile(tmp, []byte(lines.String()), 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, m.tokensFile)
}

// waypointToken is the token of a waypoint Gateway's pods.
func (m *mesh) waypointToken(gw types.NamespacedName) (string, bool) {
	m.wpMu.Lock()
	defer m.wpMu.Unlock()
	tok, ok := m.waypoints[gw]
	return tok, ok
}

// runningWaypoints counts the waypoint Gateways whose waypoint runs.
func (m *mesh) runningWaypoints() int {
	n := m.node(waypointNode)
	if n == nil || n.runner == nil {
		return 0
	}
	m.wpMu.Lock()
	defer m.wpMu.Unlock()
	count := 0
	for gw := range m.waypoints {
		if n.runner.Waypoint(gw.Namespace, gw.Name) != nil {
			count++
		}
	}
	return count
}

// finish ends a run that returned err: it says which step a signal
// interrupted, prints err, closes the mesh, runs cleanup (the run's own
// removals, which returns what they left; may be nil), and prints what is
// left behind, or the cleanup line when nothing is. It returns err joined
// with an error listing what is left.
func (m *mesh) finish(ctx context.Context, st story, err error, cleanup func() (left []string)) error {
	if err != nil && ctx.Err() != nil {
		step, _, _ := strings.Cut(err.Error(), "\n")
		err = fmt.Errorf("%w (the step under way: %s); removing everything", errInterrupted, step)
	}
	if err != nil {
		st.fail(err)
	}
	start := time.Now()
	m.Close()
	var own []string
	if cleanup != nil {
		own = cleanup()
	}
	if left := append(m.leftovers(), own...); len(left) > 0 {
		lerr := fmt.Errorf("cleanup left %d things behind:\n      %s", len(left), strings.Join(left, "\n      "))
		st.fail(lerr)
		return errors.Join(err, lerr)
	}
	tmp := m.tmp + " removed"
	if m.keep {
		tmp = m.tmp + " kept (ZMESH_DEMO_KEEP)"
	}
	st.say("cleanup", "pods stopped and CNI DEL run, processes stopped, namespaces and bpffs removed, %s in %s: nothing else left", tmp, time.Since(start).Round(10*time.Millisecond))
	return err
}

// leftovers lists what Close left behind: network namespaces, links in the
// root namespace, bpffs pins, mounts, processes, pod apps and the
// temporary directory.
func (m *mesh) leftovers() []string {
	out := append(slices.Clone(m.teardownErrs), netenv.LeftBehind(m.tmp, m.rootLinks, m.keep)...)
	for _, p := range m.pinsLeft {
		out = append(out, "bpffs pin left after every pod was deleted: "+p)
	}
	// Pod apps are this executable re-run with podapp.Env set; waypoints
	// are the waypoint binary.
	self := fmt.Sprint(os.Getpid())
	exe, _ := os.Executable()
	wp := filepath.Join(m.bin, "waypoint")
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		if e.Name() == self {
			continue
		}
		if m.bin != "" {
			if target, _ := os.Readlink(filepath.Join("/proc", e.Name(), "exe")); strings.TrimSuffix(target, " (deleted)") == wp {
				out = append(out, "waypoint process "+e.Name())
				continue
			}
		}
		if b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "environ")); err == nil && strings.Contains(string(b), podapp.Env+"=") {
			if target, _ := os.Readlink(filepath.Join("/proc", e.Name(), "exe")); target == exe {
				out = append(out, "pod app process "+e.Name())
			}
		}
	}
	return out
}

// quiet keeps library logs (netlink, the dir source) out of the story.
var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// waitFor polls cond every 50 ms for up to 15 s.
func waitFor(ctx context.Context, cond func() bool) error {
	return proc.WaitFor(ctx, 15*time.Second, cond)
}
