package plugin_test

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/zmesh/zmesh/api/zds/zdstest"
	"github.com/zmesh/zmesh/bpf"
	"github.com/zmesh/zmesh/cni/agent"
	"github.com/zmesh/zmesh/cni/cniapi"
	"github.com/zmesh/zmesh/cni/redirect"
	"github.com/zmesh/zmesh/e2e/netenv"
	"github.com/zmesh/zmesh/ztunnel/inpod"
)

// Debian's containernetworking-plugins speak CNI up to 1.0.0; 1.1.0 runs
// with the reference plugins .ci/deps.sh builds from their pinned module.
const debianCNIDir = "/usr/lib/cni"

func referenceCNIDir() string {
	cache := os.Getenv("XDG_CACHE_HOME")
	if cache == "" {
		home, _ := os.UserHomeDir()
		cache = filepath.Join(home, ".cache")
	}
	return filepath.Join(cache, "zmesh", "cni-plugins-v1.9.1")
}

// node is one test node: a host namespace where the CNI plugins run, an
// in-process agent with a stand-in ztunnel, and a CNI bin dir holding the
// reference plugins and a freshly built zmesh-cni.
type node struct {
	host    *netenv.NS
	binDir  string
	confDir string
	dataDir string
	sock    string
	bpfRoot string
	ztunnel *zdstest.Ztunnel
	// installer chains zmesh-cni into the node's primary conflist, as the
	// agent does on a real node.
	installer *agent.Installer

	agent *agent.Node

	mu      sync.Mutex
	lookup  []string        // namespaces the agent was asked about
	ambient map[string]bool // namespaces labelled ambient besides "amb"
}

var buildOnce sync.Once
var builtPlugin string

func buildPlugin(t testing.TB) string {
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "zmesh-cni-bin-")
		if err != nil {
			t.Fatal(err)
		}
		out, err := exec.Command("go", "build", "-o", filepath.Join(dir, "zmesh-cni"), "github.com/zmesh/zmesh/cmd/zmesh-cni").CombinedOutput()
		if err != nil {
			t.Fatalf("build zmesh-cni: %v\n%s", err, out)
		}
		builtPlugin = filepath.Join(dir, "zmesh-cni")
	})
	if builtPlugin == "" {
		t.Fatal("zmesh-cni did not build")
	}
	return builtPlugin
}

func newNode(t testing.TB, pluginDir string) *node {
	t.Helper()
	for _, p := range []string{"bridge", "host-local"} {
		if _, err := os.Stat(filepath.Join(pluginDir, p)); err != nil {
			t.Fatalf("CNI plugin %s: %v (run .ci/deps.sh)", p, err)
		}
	}
	n := &node{binDir: t.TempDir(), confDir: t.TempDir(), dataDir: t.TempDir()}
	for _, p := range []string{"bridge", "host-local"} {
		if err := os.Symlink(filepath.Join(pluginDir, p), filepath.Join(n.binDir, p)); err != nil {
			t.Fatal(err)
		}
	}
	host, err := netenv.NewNS("node")
	if err != nil {
		t.Fatalf("need root and netns support: %v", err)
	}
	t.Cleanup(func() { host.Close() })
	n.host = host

	n.bpfRoot = t.TempDir()
	if err := unix.Mount("bpf", n.bpfRoot, "bpf", 0, ""); err != nil {
		t.Fatalf("mount bpffs: %v", err)
	}
	t.Cleanup(func() { unix.Unmount(n.bpfRoot, unix.MNT_DETACH) })

	sockDir := t.TempDir()
	// The agent's logs would interleave with benchmark output.
	quiet := slog.New(slog.DiscardHandler)
	zdsServer, err := agent.NewZDSServer(filepath.Join(sockDir, "zds.sock"), quiet)
	if err != nil {
		t.Fatal(err)
	}
	nodeAgent := &agent.Node{
		BPFRoot:   n.bpfRoot,
		ZDS:       zdsServer,
		HostNetns: host.Handle(),
		Log:       quiet,
		Members: agent.MembershipFunc(func(ns, name string) (string, bool) {
			n.mu.Lock()
			defer n.mu.Unlock()
			n.lookup = append(n.lookup, ns)
			return "sa-" + name, ns == "amb" || n.ambient[ns]
		}),
	}
	n.agent = nodeAgent
	n.sock = filepath.Join(sockDir, "cni.sock")
	n.installer = &agent.Installer{
		BinDir: n.binDir, ConfDir: n.confDir, PluginBinary: buildPlugin(t),
		PluginConf: map[string]any{"agent_socket": n.sock},
	}
	if err := n.installer.InstallBinary(); err != nil {
		t.Fatal(err)
	}
	cniServer, err := agent.NewCNIServer(n.sock, nodeAgent, quiet)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { zdsServer.Run(ctx) })
	wg.Go(func() { cniServer.Run(ctx) })
	t.Cleanup(func() { cancel(); wg.Wait() })

	z, err := zdstest.Connect(filepath.Join(sockDir, "zds.sock"), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { z.Close() })
	wctx, wcancel := context.WithTimeout(ctx, 5*time.Second)
	defer wcancel()
	if err := zdsServer.WaitZtunnel(wctx); err != nil {
		t.Fatal(err)
	}
	n.ztunnel = z
	return n
}

// confList writes the node's primary network config (what the cluster's
// CNI would write: bridge + host-local), lets the agent's installer chain
// zmesh-cni into it, and loads the result as a runtime would.
func (n *node) confList(t testing.TB, version string) *libcni.NetworkConfigList {
	return n.list(t, version, true)
}

func (n *node) list(t testing.TB, version string, chain bool) *libcni.NetworkConfigList {
	t.Helper()
	conf := map[string]any{
		"cniVersion": version,
		"name":       "zmesh-test",
		"plugins": []any{
			map[string]any{
				"type": "bridge", "bridge": "zmbr0", "isGateway": true, "ipMasq": false,
				"ipam": map[string]any{
					"type": "host-local", "dataDir": n.dataDir,
					"ranges": [][]map[string]string{{{"subnet": "10.86.0.0/24"}}},
				},
			},
		},
	}
	b, _ := json.Marshal(conf)
	path := filepath.Join(n.confDir, "10-zmesh-test.conflist")
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
	if !chain {
		list, err := libcni.ConfListFromFile(path)
		if err != nil {
			t.Fatal(err)
		}
		return list
	}
	if _, err := n.installer.Chain(); err != nil {
		t.Fatal(err)
	}
	list, err := libcni.ConfListFromFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if last := list.Plugins[len(list.Plugins)-1].Network.Type; last != "zmesh-cni" {
		t.Fatalf("chain ends with %s, want zmesh-cni", last)
	}
	return list
}

// add runs ADD for p and records the address the chain gave it.
func (n *node) add(t testing.TB, list *libcni.NetworkConfigList, p *pod) {
	t.Helper()
	res, err := n.cni(t, "ADD", list, p.rt)
	if err != nil {
		t.Fatal(err)
	}
	r, err := current.NewResultFromResult(res)
	if err != nil || len(r.IPs) == 0 {
		t.Fatalf("ADD result %v, %v", res, err)
	}
	p.ip, _ = netip.AddrFromSlice(r.IPs[0].Address.IP.To4())
}

// cni runs one operation of the chain from the node's host namespace, as
// a runtime on that node would.
func (n *node) cni(t testing.TB, op string, list *libcni.NetworkConfigList, rt *libcni.RuntimeConf) (types.Result, error) {
	t.Helper()
	c := libcni.NewCNIConfig([]string{n.binDir}, nil)
	var res types.Result
	err := n.host.Do(func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		var err error
		switch op {
		case "ADD":
			res, err = c.AddNetworkList(ctx, list, rt)
		case "DEL":
			err = c.DelNetworkList(ctx, list, rt)
		case "CHECK":
			err = c.CheckNetworkList(ctx, list, rt)
		}
		return err
	})
	return res, err
}

type pod struct {
	ns  *netenv.NS
	rt  *libcni.RuntimeConf
	uid string
	ip  netip.Addr
}

func (n *node) newPod(t *testing.T, namespace, name string) *pod {
	t.Helper()
	ns, err := netenv.NewNS("pod")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ns.Close() })
	return podConf(ns, namespace, name)
}

// runProcess runs a process in the pod's namespace until the test ends:
// what the agent finds a running pod's namespace through.
func (p *pod) runProcess(t *testing.T) {
	t.Helper()
	var sleeper *exec.Cmd
	if err := p.ns.Do(func() error {
		sleeper = exec.Command("sleep", "300")
		return sleeper.Start()
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sleeper.Process.Kill(); sleeper.Wait() })
}

// podConf is the runtime configuration of a pod in ns, with a fresh uid.
func podConf(ns *netenv.NS, namespace, name string) *pod {
	uid := fmt.Sprintf("uid-%s-%s-%d", namespace, name, time.Now().UnixNano())
	return &pod{ns: ns, uid: uid, rt: &libcni.RuntimeConf{
		ContainerID: "ctr-" + uid,
		NetNS:       "/run/netns/" + ns.Name,
		IfName:      "eth0",
		Args: [][2]string{
			{"IgnoreUnknown", "1"},
			{"K8S_POD_NAMESPACE", namespace},
			{"K8S_POD_NAME", name},
			{"K8S_POD_UID", uid},
		},
	}}
}

func rulesAt(t *testing.T, ns *netenv.NS, pref int) int {
	t.Helper()
	rules, err := ns.Netlink().RuleList(unix.AF_INET)
	if err != nil {
		t.Fatal(err)
	}
	c := 0
	for _, r := range rules {
		if r.Priority == pref {
			c++
		}
	}
	return c
}

// proxyListener plays ztunnel's part with ztunnel's own socket factory: a
// 15001 listener inside the pod, steered through the pod's pinned SOCKMAP.
func proxyListener(t *testing.T, p *pod, dir string) *net.TCPListener {
	t.Helper()
	nsfd, err := unix.FcntlInt(uintptr(p.ns.Handle()), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	n, err := inpod.Open(nsfd)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	ln, err := n.Listen(netip.MustParseAddrPort("0.0.0.0:15001"), inpod.ListenOptions{Transparent: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	c, err := bpf.OpenPinned(dir)
	if err != nil {
		t.Fatal(err)
	}
	lfd, bfd, err := c.MapFDs()
	c.Close()
	if err != nil {
		t.Fatal(err)
	}
	maps, err := bpf.NewPodMaps(lfd, bfd)
	if err != nil {
		t.Fatal(err)
	}
	defer maps.Close()
	if err := inpod.Steer(maps, bpf.Outbound, ln); err != nil {
		t.Fatal(err)
	}
	return ln
}

func TestChainCapturesAmbientPods(t *testing.T) {
	for _, tc := range []struct{ version, plugins string }{
		{"0.4.0", debianCNIDir},
		{"1.0.0", debianCNIDir},
		{"1.1.0", referenceCNIDir()},
	} {
		version := tc.version
		t.Run("cniVersion "+version, func(t *testing.T) {
			n := newNode(t, tc.plugins)
			list := n.confList(t, version)

			p := n.newPod(t, "amb", "web")
			res, err := n.cni(t, "ADD", list, p.rt)
			if err != nil {
				t.Fatalf("ADD: %v", err)
			}
			r, err := current.NewResultFromResult(res)
			if err != nil || len(r.IPs) != 1 {
				t.Fatalf("ADD result %v, %v", res, err)
			}
			if res.Version() != version {
				t.Errorf("result version %s, want %s", res.Version(), version)
			}
			p.ip, _ = netip.AddrFromSlice(r.IPs[0].Address.IP.To4())

			// ADD returned after ztunnel's ack, with the pod's descriptors.
			var add *zdstest.Request
			for _, req := range n.ztunnel.Requests() {
				if req.Msg.GetAdd().GetUid() == p.uid {
					add = &req
				}
			}
			if add == nil || len(add.Inodes) != 3 || strings.Join(add.Msg.GetAdd().GetIps(), ",") != p.ip.String() {
				t.Fatalf("ztunnel got %v", add)
			}
			if sa := add.Msg.GetAdd().GetWorkloadInfo().GetServiceAccount(); sa != "sa-web" {
				t.Errorf("service account %q", sa)
			}

			// The pod's outbound TCP now reaches the proxy listener.
			dir := filepath.Join(n.bpfRoot, p.uid)
			ln := proxyListener(t, p, dir)
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			conn, err := p.ns.Dial(ctx, "tcp", "192.0.2.44:8080")
			cancel()
			if err != nil {
				t.Fatalf("outbound from captured pod: %v", err)
			}
			conn.Close()
			ln.SetDeadline(time.Now().Add(2 * time.Second))
			acc, err := ln.Accept()
			if err != nil {
				t.Fatalf("proxy listener got nothing: %v", err)
			}
			if got := acc.LocalAddr().(*net.TCPAddr).AddrPort(); netip.AddrPortFrom(got.Addr().Unmap(), got.Port()).String() != "192.0.2.44:8080" {
				t.Errorf("original destination %s", got)
			}
			acc.Close()

			if _, err := n.cni(t, "CHECK", list, p.rt); err != nil {
				t.Fatalf("CHECK on intact capture: %v", err)
			}
			// Someone deletes the capture rule by hand: CHECK says so.
			tcp := netlink.NewRule()
			tcp.Priority, tcp.Table, tcp.IPProto = 100, redirect.Table, unix.IPPROTO_TCP
			if err := p.ns.Netlink().RuleDel(tcp); err != nil {
				t.Fatal(err)
			}
			if _, err := n.cni(t, "CHECK", list, p.rt); err == nil {
				t.Fatal("CHECK passed with the capture rule gone")
			}

			if _, err := n.cni(t, "DEL", list, p.rt); err != nil {
				t.Fatalf("DEL: %v", err)
			}
			if _, err := os.Stat(dir); !os.IsNotExist(err) {
				t.Errorf("pin dir after DEL: %v", err)
			}
			for _, pref := range []int{98, 99, 100} {
				if c := rulesAt(t, p.ns, pref); c != 0 {
					t.Errorf("%d rules at pref %d after DEL", c, pref)
				}
			}
			last := n.ztunnel.Requests()
			if last[len(last)-1].Msg.GetDel().GetUid() != p.uid {
				t.Errorf("ztunnel's last request %v, want Del", last[len(last)-1].Msg)
			}
			// DEL again (the runtime retries) is fine.
			if _, err := n.cni(t, "DEL", list, p.rt); err != nil {
				t.Fatalf("second DEL: %v", err)
			}
		})
	}
}

func TestChainLeavesOthersAlone(t *testing.T) {
	n := newNode(t, debianCNIDir)
	list := n.confList(t, "1.0.0")
	before := len(n.ztunnel.Requests())

	plain := n.newPod(t, "plain", "web")
	if _, err := n.cni(t, "ADD", list, plain.rt); err != nil {
		t.Fatalf("ADD non-ambient: %v", err)
	}
	system := n.newPod(t, "kube-system", "dns")
	if _, err := n.cni(t, "ADD", list, system.rt); err != nil {
		t.Fatalf("ADD kube-system: %v", err)
	}
	for _, p := range []*pod{plain, system} {
		if c := rulesAt(t, p.ns, 100); c != 0 {
			t.Errorf("%s: capture rule installed on a pod outside the mesh", p.uid)
		}
		if _, err := os.Stat(filepath.Join(n.bpfRoot, p.uid)); !os.IsNotExist(err) {
			t.Errorf("%s: program pinned for a pod outside the mesh", p.uid)
		}
	}
	if len(n.ztunnel.Requests()) != before {
		t.Error("ztunnel was sent a pod outside the mesh")
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	for _, ns := range n.lookup {
		if ns == "kube-system" {
			t.Error("the agent was asked about an excluded namespace")
		}
	}
	for _, p := range []*pod{plain, system} {
		if _, err := n.cni(t, "DEL", list, p.rt); err != nil {
			t.Errorf("DEL: %v", err)
		}
	}
}

// With the agent gone, ADD of a pod fails (the default policy) and DEL
// still succeeds.
func TestAgentUnreachable(t *testing.T) {
	n := newNode(t, debianCNIDir)
	conf := n.confList(t, "1.0.0")
	conf.Plugins[1].Bytes = []byte(strings.Replace(string(conf.Plugins[1].Bytes), n.sock, "/nonexistent/cni.sock", 1))
	var err error
	conf, err = libcni.ConfListFromBytes(rebuild(t, conf))
	if err != nil {
		t.Fatal(err)
	}
	p := n.newPod(t, "amb", "web")
	if _, err := n.cni(t, "ADD", conf, p.rt); err == nil || !strings.Contains(err.Error(), "unreachable") {
		t.Fatalf("ADD with no agent: %v, want an unreachable error", err)
	}
	if _, err := n.cni(t, "DEL", conf, p.rt); err != nil {
		t.Fatalf("DEL with no agent: %v", err)
	}
}

func rebuild(t *testing.T, l *libcni.NetworkConfigList) []byte {
	var plugins []json.RawMessage
	for _, p := range l.Plugins {
		plugins = append(plugins, p.Bytes)
	}
	b, err := json.Marshal(map[string]any{"cniVersion": l.CNIVersion, "name": l.Name, "plugins": plugins})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// A pod running before its namespace joins the mesh is captured with no
// restart, found by its address among running processes, and released
// again; its connections to the node work before, during and after.
func TestRunningPodEnrolledAndReleased(t *testing.T) {
	n := newNode(t, debianCNIDir)
	list := n.confList(t, "1.0.0")
	p := n.newPod(t, "late", "web")
	n.add(t, list, p)
	if c := rulesAt(t, p.ns, 100); c != 0 {
		t.Fatal("pod captured before its namespace was ambient")
	}

	p.runProcess(t)

	// A service in another pod on the node, which the pod talks to. (Not
	// the node's own address: that is the probe source, exempt from
	// capture by design.)
	other := n.newPod(t, "other", "db")
	n.add(t, list, other)
	target := netip.AddrPortFrom(other.ip, 9000).String()
	svc, err := other.ns.Listen("tcp", target)
	if err != nil {
		t.Fatal(err)
	}
	defer svc.Close()
	reaches := func(ln net.Listener) error {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		conn, err := p.ns.Dial(ctx, "tcp", target)
		if err != nil {
			return err
		}
		defer conn.Close()
		ln.(interface{ SetDeadline(time.Time) error }).SetDeadline(time.Now().Add(2 * time.Second))
		acc, err := ln.Accept()
		if err != nil {
			return err
		}
		acc.Close()
		return nil
	}
	if err := reaches(svc); err != nil {
		t.Fatalf("before enrolment: %v", err)
	}

	n.mu.Lock()
	n.ambient = map[string]bool{"late": true}
	n.mu.Unlock()
	running := &cniapi.Pod{UID: p.uid, Name: "web", Namespace: "late", IPs: []string{p.ip.String()}}
	captured, err := n.agent.EnrollRunning(context.Background(), running, "/proc")
	if err != nil || !captured {
		t.Fatalf("enrol running pod: captured=%v err=%v", captured, err)
	}
	ln := proxyListener(t, p, filepath.Join(n.bpfRoot, p.uid))
	if err := reaches(ln); err != nil {
		t.Fatalf("after enrolment the proxy should get the pod's connection: %v", err)
	}

	n.mu.Lock()
	n.ambient = nil
	n.mu.Unlock()
	if err := n.agent.ReleaseRunning(context.Background(), running, "/proc"); err != nil {
		t.Fatalf("release: %v", err)
	}
	if c := rulesAt(t, p.ns, 100); c != 0 {
		t.Fatal("capture rule left after release")
	}
	if err := reaches(svc); err != nil {
		t.Fatalf("after release: %v", err)
	}
	for _, q := range []*pod{p, other} {
		if _, err := n.cni(t, "DEL", list, q.rt); err != nil {
			t.Fatal(err)
		}
	}
}
