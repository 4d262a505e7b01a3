package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/zmesh/zmesh/cni/agent"
	"github.com/zmesh/zmesh/controlplane/model"
	"github.com/zmesh/zmesh/e2e/netenv"
	"github.com/zmesh/zmesh/e2e/noderunner"
	"github.com/zmesh/zmesh/identity"
)

// The topology: one LAN (an underlay bridge in its own namespace), two
// node host namespaces (where stunnel and haproxy run, as a user would run
// them on the nodes), and four pods: an ambient client/server pair for the
// mesh path and a plain pair for the others. Pods of one role are alike
// (same kind of namespace and veth on the same bridge), so the paths differ
// only by what carries the bytes.
var (
	lanPrefix   = netip.MustParsePrefix("10.44.0.0/24")
	meshClient  = podSpec{"mesh-client", "bench", "client", "node-1", netip.MustParseAddr("10.44.0.2"), true}
	meshServer  = podSpec{"mesh-server", "bench", "server", "node-2", netip.MustParseAddr("10.44.0.3"), true}
	plainClient = podSpec{"plain-client", "plain", "client", "node-1", netip.MustParseAddr("10.44.0.4"), false}
	plainServer = podSpec{"plain-server", "plain", "server", "node-2", netip.MustParseAddr("10.44.0.5"), false}
	nodeAddrs   = []netip.Addr{netip.MustParseAddr("10.44.0.11"), netip.MustParseAddr("10.44.0.12")}
	nodeNames   = []string{"node-1", "node-2"}
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
	for _, p := range []podSpec{meshClient, meshServer, plainClient, plainServer} {
		fmt.Fprintf(&b, "---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: %s\n  namespace: %s\n  labels: {app: %s}\nspec:\n  nodeName: %s\n  serviceAccountName: %s\n  containers: [{name: app, image: app}]\nstatus:\n  podIP: %s\n",
			p.name, p.ns, p.name, p.node, p.sa, p.addr)
	}
	return b.String()
}

// env is the running topology and everything that must be undone.
type env struct {
	tmp, binDir, meshDir, caDir string
	log                         *slog.Logger
	lan                         *netenv.LAN
	hosts                       []*netenv.NS // node host namespaces
	pods                        map[string]*netenv.NS
	nodes                       []*noderunner.Node
	zmeshd                      *proc
	zmeshdMon                   string
	zmeshdXDS                   string
	zts                         []*ztunnel // client node's, server node's
	undo                        []func()
}

type ztunnel struct {
	*proc
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
	for _, p := range []podSpec{meshClient, meshServer, plainClient, plainServer} {
		n, err := e.lan.HostAt(p.name, p.addr)
		if err != nil {
			return nil, err
		}
		e.pods[p.name] = n
	}
	// Many short connections: let clients reuse ports in TIME_WAIT and
	// widen the ephemeral range, in every namespace that opens connections
	// (the node hosts too: stunnel and haproxy dial from there).
	for _, n := range append(append([]*netenv.NS{}, e.hosts...), e.pods[meshClient.name], e.pods[plainClient.name], e.pods[meshServer.name], e.pods[plainServer.name]) {
		if err := sysctl(n, "net.ipv4.tcp_tw_reuse=1", "net.ipv4.ip_local_port_range=10000 65000", "net.core.somaxconn=4096", "net.ipv4.tcp_max_syn_backlog=4096"); err != nil {
			return nil, err
		}
	}

	ports, err := freePorts(2 + 3*3)
	if err != nil {
		return nil, err
	}
	e.zmeshdXDS, e.zmeshdMon = "127.0.0.1:"+ports[0], "127.0.0.1:"+ports[1]
	tokens := filepath.Join(tmp, "tokens")
	var tok strings.Builder
	for _, n := range append(append([]string{}, nodeNames...), memNode) {
		fmt.Fprintf(&tok, "token-ztunnel-%s spiffe://cluster.local/ns/istio-system/sa/ztunnel %s\n", n, n)
	}
	if err := os.WriteFile(tokens, []byte(tok.String()), 0o600); err != nil {
		return nil, err
	}
	e.caDir = filepath.Join(tmp, "ca")
	e.zmeshd, err = startProc(ctx, filepath.Join(binDir, "zmeshd"), filepath.Join(tmp, "zmeshd.log"),
		"http://"+e.zmeshdMon+"/ready", "ready",
		"--config-dir", e.meshDir, "--tokens-file", tokens, "--ca-dir", e.caDir,
		"--xds-address", e.zmeshdXDS, "--secure-address", "", "--monitoring-address", e.zmeshdMon)
	if err != nil {
		return nil, fmt.Errorf("zmeshd: %w", err)
	}
	e.defer_(e.zmeshd.stop)

	members := agent.MembershipFunc(func(ns, name string) (string, bool) {
		for _, p := range []podSpec{meshClient, meshServer} {
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
	for i, p := range []podSpec{meshClient, meshServer} {
		np := noderunner.Pod{UID: p.uid(), Name: p.name, Namespace: p.ns, NetnsPath: "/run/netns/" + e.pods[p.name].Name, IPs: []string{p.addr.String()}}
		if _, err := e.nodes[i].Add(ctx, np); err != nil {
			return nil, fmt.Errorf("enrol %s: %w", p.name, err)
		}
		node := e.nodes[i]
		e.defer_(func() { node.Del(context.Background(), np) })
	}
	return e, nil
}

// memNode is the third node of the memory measurement: a ztunnel with no
// pods, whose growth is the cost of its state.
const memNode = "node-3"

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
	zt := &ztunnel{node: name, admin: "127.0.0.1:" + ports[0], metrics: "127.0.0.1:" + ports[1], tokF: filepath.Join(ndir, "token")}
	if err := os.WriteFile(zt.tokF, []byte("token-ztunnel-"+name), 0o600); err != nil {
		return nil, nil, err
	}
	zt.proc, err = startProc(ctx, filepath.Join(e.binDir, "ztunnel"), filepath.Join(ndir, "ztunnel.log"),
		"http://127.0.0.1:"+ports[2]+"/healthz/ready", "ready",
		"--node", name, "--zds-socket", n.ZDSPath,
		"--xds-address", e.zmeshdXDS, "--plaintext-control-plane",
		"--root-cert", filepath.Join(e.caDir, identity.FileRootCert), "--token-file", zt.tokF, "--drain-grace", "1s",
		"--log-level", "warn",
		"--admin-address", zt.admin, "--metrics-address", zt.metrics, "--readiness-address", "127.0.0.1:"+ports[2])
	if err != nil {
		return nil, nil, fmt.Errorf("%s ztunnel: %w", name, err)
	}
	e.defer_(zt.stop)
	return n, zt, nil
}

// sysctl sets net sysctls inside a namespace (they are per namespace).
func sysctl(n *netenv.NS, kvs ...string) error {
	args := append([]string{"netns", "exec", n.Name, "sysctl", "-q", "-w"}, kvs...)
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		return fmt.Errorf("sysctl in %s: %v: %s", n.Name, err, out)
	}
	return nil
}

// freePorts returns n distinct loopback ports free right now.
func freePorts(n int) ([]string, error) {
	var lns []net.Listener
	defer func() {
		for _, l := range lns {
			l.Close()
		}
	}()
	var out []string
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		lns = append(lns, l)
		out = append(out, strconv.Itoa(l.Addr().(*net.TCPAddr).Port))
	}
	return out, nil
}

// proc is a process the bench started.
type proc struct {
	name string
	cmd  *exec.Cmd
	log  *tailBuffer
	done chan struct{}
}

// startProc starts bin and, when ready is not empty, waits until GET ready
// answers with a body starting with want.
func startProc(ctx context.Context, bin, logPath, ready, want string, args ...string) (*proc, error) {
	p, err := spawn(filepath.Base(bin), logPath, bin, args...)
	if err != nil {
		return nil, err
	}
	if ready == "" {
		return p, nil
	}
	err = waitFor(ctx, 30*time.Second, func() bool {
		if p.exited() {
			return true
		}
		body, err := httpGet(ctx, ready)
		return err == nil && strings.HasPrefix(body, want)
	})
	if p.exited() {
		return nil, fmt.Errorf("exited: %s", p.log.String())
	}
	if err != nil {
		p.stop()
		return nil, fmt.Errorf("not ready: %s", p.log.String())
	}
	return p, nil
}

// spawn starts a process whose stdout and stderr go to logPath (and the
// last few KB kept for error messages).
func spawn(name, logPath, bin string, args ...string) (*proc, error) {
	p := &proc{name: name, cmd: exec.Command(bin, args...), log: &tailBuffer{max: 8 << 10}, done: make(chan struct{})}
	logFile, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	p.cmd.Stdout = io.MultiWriter(p.log, logFile)
	p.cmd.Stderr = p.cmd.Stdout
	if err := p.cmd.Start(); err != nil {
		logFile.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	go func() { p.cmd.Wait(); logFile.Close(); close(p.done) }()
	return p, nil
}

// spawnIn starts a process inside a namespace (ip netns exec execs it, so
// the pid is the program's).
func spawnIn(n *netenv.NS, logPath, bin string, args ...string) (*proc, error) {
	return spawn(filepath.Base(bin), logPath, "ip", append([]string{"netns", "exec", n.Name, bin}, args...)...)
}

func (p *proc) pid() int { return p.cmd.Process.Pid }

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop is SIGTERM, then SIGKILL after 10 s.
func (p *proc) stop() {
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		p.cmd.Process.Kill()
		<-p.done
	}
}

func httpGet(ctx context.Context, url string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return "", err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return string(b), fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return string(b), err
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

// tailBuffer keeps the last max bytes written.
type tailBuffer struct {
	mu  sync.Mutex
	max int
	b   []byte
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.b = append(t.b, p...)
	if len(t.b) > t.max {
		t.b = append(t.b[:0], t.b[len(t.b)-t.max:]...)
	}
	return len(p), nil
}

func (t *tailBuffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return string(t.b)
}
