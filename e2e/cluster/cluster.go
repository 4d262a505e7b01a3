// Package cluster is the e2e harness: a real Kubernetes API server (etcd,
// kube-apiserver, controller-manager, scheduler from internal/kubetest), the
// zmesh binaries built once from this tree, and two or more nodes made of
// network namespaces, each with a node runner in the kubelet's place.
//
// Layout (docs/decisions.md, "Where things run in tests and the demo"):
// the API server, zmeshd, and every node's zmesh-cni-agent and ztunnel run
// in the root network namespace as separate processes reaching each other
// on 127.0.0.1; nothing of the
// topology is in the root namespace. Each node has a "host" namespace with
// its pod bridge (made by the CNI bridge plugin) and an eth0 on the
// underlay bridge, which lives in a namespace of its own; routes between
// the nodes' pod ranges go over the underlay. Each pod has its namespace,
// set up by the node's real CNI chain (bridge + host-local, then zmesh-cni
// chained in by the agent).
//
// Components authenticate as their own service accounts: zmeshd and each
// agent with a kubeconfig holding a TokenRequest token, each ztunnel with a
// token of istio-system/ztunnel bound to a hostNetwork Pod object on its
// node and audience istio-ca (docs/decisions.md,
// "How the CA knows a caller's node"), so the CA learns its node.
//
// The harness does not depend on the testing package's lifetime: Start
// builds everything, Close removes it, and Leftovers says what (if
// anything) is left, so a TestMain can share one cluster across scenarios.
package cluster

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
	authnv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/zmesh/zmesh/e2e/netenv"
	"github.com/zmesh/zmesh/e2e/noderunner"
	"github.com/zmesh/zmesh/internal/kubetest"
)

// ControlPlaneAddr is where pods reach zmeshd, standing in for its
// ClusterIP Service: every node's host namespace holds the address and
// forwards its port to zmeshd on the root namespace's loopback.
var ControlPlaneAddr = netip.MustParseAddr("10.96.0.10")

// CertTTL is the lifetime of the workload certificates zmeshd signs in the
// suite: short, so that ztunnels renew them while scenarios run.
const CertTTL = 60 * time.Second

// Options shape the cluster.
type Options struct {
	// Nodes is how many nodes (default 2).
	Nodes int
	// App is the env variable that turns this executable into a pod's app
	// (see e2e/podapp); empty runs pods with no process.
	App string
	// Out receives progress lines (default io.Discard).
	Out io.Writer
	// Keep leaves the temporary directory (logs) in place.
	Keep bool
	// FromChart installs zmesh from its Helm chart (deploy/charts/zmesh)
	// instead of starting zmeshd, the agents and the ztunnels as processes:
	// the controllers make the DaemonSet and Deployment pods, the node
	// runners run them, and the harness gives them what a cluster does
	// (the API server at KUBERNETES_SERVICE_HOST, a kube-proxy stand-in
	// that DNATs ClusterIP Services with nftables in each node's host
	// namespace, cluster DNS). Zmeshd, Agent and Ztunnel are then nil; a
	// node's ztunnel endpoints are its pod's.
	FromChart bool
}

// Cluster is a running mesh.
type Cluster struct {
	Env   *kubetest.Env
	Root  string // the repository
	Dir   string // temporary directory of this cluster
	Bin   string // built binaries
	LAN   *netenv.LAN
	Nodes []*Node

	Zmeshd *Proc
	// ZmeshdSecure is zmeshd's TLS (xDS + CA) address; ZmeshdMonitoring its
	// /metrics, /ready, /debug/syncz.
	ZmeshdSecure, ZmeshdMonitoring string
	// ZmeshdForPods is zmeshd's TLS address as pods reach it (waypoints):
	// ControlPlaneAddr on the same port, forwarded by every node.
	ZmeshdForPods string
	CADir         string

	opts      Options
	out       io.Writer
	rootLinks []string
	kubelets  sync.WaitGroup
	stopPods  context.CancelFunc
	bpfPins   []string // what Close found pinned before unmounting
	retired   []*Proc  // replaced ztunnels
	closed    bool

	// With FromChart: the kube-proxy and DNS stand-ins.
	proxy *serviceProxy
	dns   *clusterDNS
	log   *slog.Logger
	// netnsShared: netnsDir is mounted.
	netnsShared bool
	// zmeshdReplicas: the chart's zmeshd Deployment's, while StopZmeshd
	// has it scaled to 0.
	zmeshdReplicas int32
	// The node runners' streaming APIs (serveStreaming).
	streamCtx     context.Context
	stopStreaming context.CancelFunc
	streams       sync.WaitGroup
}

// netnsDir is where the node runners also mount pods' network namespaces
// with FromChart (noderunner.Kubelet.NetnsDir).
func (c *Cluster) netnsDir() string { return filepath.Join(c.Dir, "netns") }

// Node is one node.
type Node struct {
	Name    string
	Host    *netenv.NS
	Addr    netip.Addr   // on the underlay
	PodCIDR netip.Prefix // its pods' range
	Gateway netip.Addr   // the host's address on the pod bridge (probe source)
	Dir     string
	BPFRoot string
	CNIBin  string
	CNIConf string

	Agent   *Proc
	Ztunnel *Proc
	// Ztunnel endpoints on 127.0.0.1.
	ZtunnelAdmin, ZtunnelMetrics, ZtunnelReady string
	// ZtunnelToken is the file of ztunnel's pod-bound token.
	ZtunnelToken string
	Kubelet      *noderunner.Kubelet

	bpfBase []string
	// forward serves a root-namespace process in the node's host
	// namespace: zmeshd without the chart, the API server with it.
	forward io.Closer
	// inHost: the ztunnel endpoints are a pod's, reached from the node's
	// host namespace.
	inHost bool
}

// Repo returns the repository root, found from this source file.
func Repo() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Clean(filepath.Join(filepath.Dir(file), "..", ".."))
}

func (c *Cluster) say(format string, args ...any) {
	fmt.Fprintf(c.out, "cluster: "+format+"\n", args...)
}

// Start brings a cluster up. On error everything made so far is removed.
func Start(ctx context.Context, opts Options) (_ *Cluster, err error) {
	if os.Geteuid() != 0 {
		return nil, errors.New("the e2e cluster needs root (network namespaces, eBPF, bpffs)")
	}
	if opts.Nodes == 0 {
		opts.Nodes = 2
	}
	if opts.Out == nil {
		opts.Out = io.Discard
	}
	c := &Cluster{Root: Repo(), opts: opts, out: opts.Out}
	c.rootLinks = netenv.RootLinks()
	if c.Dir, err = os.MkdirTemp("", "zmesh-e2e-"); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			c.Close()
		}
	}()
	c.Bin = filepath.Join(c.Dir, "bin")
	start := time.Now()

	// The API server and the build at once: both take seconds to minutes.
	var wg sync.WaitGroup
	var buildErr, kubeErr error
	wg.Go(func() { buildErr = c.build(ctx) })
	wg.Go(func() { c.Env, kubeErr = kubetest.Start(ctx) })
	wg.Wait()
	if err := errors.Join(buildErr, kubeErr); err != nil {
		return nil, err
	}
	c.say("API server %s and zmesh binaries ready in %s", c.Env.APIServer, time.Since(start).Round(100*time.Millisecond))

	c.log = slog.New(slog.NewJSONHandler(io.Discard, nil))
	if f, err := os.Create(filepath.Join(c.Dir, "harness.log")); err == nil {
		c.log = slog.New(slog.NewJSONHandler(f, nil))
	}
	if opts.FromChart {
		return c, c.startFromChart(ctx, start)
	}
	if err := c.install(ctx); err != nil {
		return nil, err
	}
	if err := c.network(); err != nil {
		return nil, err
	}
	for _, n := range c.Nodes {
		if err := c.register(ctx, n); err != nil {
			return nil, err
		}
	}
	if err := c.startZmeshd(ctx); err != nil {
		return nil, err
	}
	for _, n := range c.Nodes {
		if err := c.startNode(ctx, n); err != nil {
			return nil, err
		}
	}
	// Cluster DNS for the commands exec'd in pods (the echo images'
	// client): ztunnel captures Service traffic itself, names need DNS.
	if c.dns, err = startClusterDNS(c.Nodes, true, c.lookupServiceIP); err != nil {
		return nil, err
	}
	podCtx, cancel := context.WithCancel(context.Background())
	c.stopPods = cancel
	for _, n := range c.Nodes {
		c.kubelets.Go(func() {
			if err := n.Kubelet.Run(podCtx); err != nil {
				c.say("%s node runner teardown: %v", n.Name, err)
			}
		})
	}
	c.say("up in %s: %d nodes, zmeshd pid %d, logs in %s", time.Since(start).Round(100*time.Millisecond), len(c.Nodes), c.Zmeshd.Pid(), c.Dir)
	return c, nil
}

// startFromChart is Start's second half with FromChart: nodes and their
// runners first, then the chart, whose pods they run.
func (c *Cluster) startFromChart(ctx context.Context, start time.Time) error {
	// Pods that run as a user of their own (zmeshd) reach the built
	// binaries through the temporary directory.
	if err := os.Chmod(c.Dir, 0o755); err != nil {
		return err
	}
	if err := c.network(); err != nil {
		return err
	}
	if err := noderunner.SharedDir(c.netnsDir()); err != nil {
		return err
	}
	c.netnsShared = true
	for _, n := range c.Nodes {
		if err := c.register(ctx, n); err != nil {
			return err
		}
		if err := c.prepareNodeTree(n); err != nil {
			return err
		}
	}
	podCtx, cancel := context.WithCancel(context.Background())
	c.stopPods = cancel
	for _, n := range c.Nodes {
		c.kubelets.Go(func() {
			if err := n.Kubelet.Run(podCtx); err != nil {
				c.say("%s node runner teardown: %v", n.Name, err)
			}
		})
	}
	if err := c.installChart(ctx); err != nil {
		return err
	}
	c.say("up in %s: %d nodes, zmesh from the chart, logs in %s", time.Since(start).Round(100*time.Millisecond), len(c.Nodes), c.Dir)
	return nil
}

// build compiles the zmesh binaries into c.Bin.
func (c *Cluster) build(ctx context.Context) error {
	cmd := exec.CommandContext(ctx, "go", "build", "-o", c.Bin+"/",
		"./cmd/zmeshd", "./cmd/ztunnel", "./cmd/zmesh-cni-agent", "./cmd/zmesh-cni", "./cmd/waypoint", "./cmd/zmeshctl")
	cmd.Dir = c.Root
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build: %w\n%s", err, out)
	}
	return nil
}

// install applies the CRDs and RBAC as an operator would.
func (c *Cluster) install(ctx context.Context) error {
	if out, err := c.Env.KubectlRun(ctx, "", "apply", "--server-side", "-f", filepath.Join(c.Root, "deploy/crds")); err != nil {
		return fmt.Errorf("%w: %s", err, out)
	}
	if err := c.Env.WaitEstablished(ctx, 60*time.Second); err != nil {
		return err
	}
	// The namespace first: the other files live in it.
	if out, err := c.Env.KubectlRun(ctx, "", "apply", "-f", filepath.Join(c.Root, "deploy/rbac/00-namespace.yaml")); err != nil {
		return fmt.Errorf("%w: %s", err, out)
	}
	if out, err := c.Env.KubectlRun(ctx, "", "apply", "-f", filepath.Join(c.Root, "deploy/rbac")); err != nil {
		return fmt.Errorf("%w: %s", err, out)
	}
	c.say("applied deploy/crds (server-side, Established) and deploy/rbac")
	return nil
}

// network builds the underlay and each node's host namespace, with routes
// to the other nodes' pod ranges.
func (c *Cluster) network() error {
	lan, err := netenv.NewLAN(netip.MustParsePrefix("10.44.0.0/24"))
	if err != nil {
		return fmt.Errorf("underlay: %w", err)
	}
	c.LAN = lan
	var names []string
	for i := range c.opts.Nodes {
		names = append(names, fmt.Sprintf("node-%d", i+1))
	}
	hosts, err := lan.AddNodes(names...)
	if err != nil {
		return err
	}
	for _, h := range hosts {
		n := &Node{Name: h.Name, Host: h.Host, Addr: h.Addr, PodCIDR: h.PodCIDR, Gateway: h.PodCIDR.Addr().Next(), Dir: filepath.Join(c.Dir, h.Name)}
		if err := os.MkdirAll(n.Dir, 0o755); err != nil {
			return err
		}
		c.Nodes = append(c.Nodes, n)
	}
	var desc []string
	for _, n := range c.Nodes {
		desc = append(desc, fmt.Sprintf("%s %s (pods %s)", n.Name, n.Addr, n.PodCIDR))
	}
	c.say("underlay 10.44.0.0/24 in namespace %s: %s", lan.Underlay.Name, strings.Join(desc, ", "))
	return nil
}

// register creates the Node object and the hostNetwork Pod objects of the
// node's DaemonSet stand-ins (ztunnel, agent), whose bound tokens name the
// node.
func (c *Cluster) register(ctx context.Context, n *Node) error {
	n.CNIBin, n.CNIConf = filepath.Join(n.Dir, "cni-bin"), filepath.Join(n.Dir, "cni-conf")
	if c.opts.FromChart {
		// The chart's default host directories, in the node's tree.
		n.CNIBin, n.CNIConf = filepath.Join(n.hostTree(), "opt/cni/bin"), filepath.Join(n.hostTree(), "etc/cni/net.d")
	}
	// A kubelet's own client: the admin's default rate limit would make the
	// node runners queue behind each other.
	cfg := rest.CopyConfig(c.Env.Config)
	cfg.QPS, cfg.Burst, cfg.UserAgent = 100, 200, "zmesh-e2e-kubelet/"+n.Name
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return err
	}
	n.Kubelet = &noderunner.Kubelet{
		Client: client, Node: n.Name, Host: n.Host, HostIP: n.Addr, PodCIDR: n.PodCIDR,
		CNIBinDir: n.CNIBin, CNIConfDir: n.CNIConf,
		Log: slog.New(slog.NewJSONHandler(io.Discard, nil)),
	}
	if f, err := os.Create(filepath.Join(n.Dir, "noderunner.log")); err == nil {
		n.Kubelet.Log = slog.New(slog.NewJSONHandler(f, nil)).With("node", n.Name)
	}
	logs := filepath.Join(n.Dir, "pods")
	os.MkdirAll(logs, 0o755)
	if c.opts.App != "" {
		n.Kubelet.App = noderunner.AppCommand(c.opts.App, logs)
	}
	// Pods of zmesh images (the waypoints zmeshd deploys) run as the
	// binaries built here.
	n.Kubelet.Images = &noderunner.Images{Bin: c.Bin, Dir: filepath.Join(n.Dir, "volumes"), Client: client, Logs: logs}
	if c.opts.FromChart {
		n.Kubelet.RunHostNetwork = true
		n.Kubelet.NetnsDir = c.netnsDir()
		n.Kubelet.Images.HostRoot = n.hostTree()
		n.Kubelet.Images.APIServer = APIServiceAddr
		n.Kubelet.Images.DNS = KubeDNSAddr
	}
	if c.opts.App != "" {
		if n.Kubelet.AppPath, err = c.appPath(); err != nil {
			return err
		}
		n.Kubelet.AppDNS = KubeDNSAddr
	}
	if err := c.serveStreaming(ctx, n); err != nil {
		return err
	}
	if err := n.Kubelet.Register(ctx, nil); err != nil {
		return err
	}
	if c.opts.FromChart {
		return nil // the DaemonSets make the node's pods
	}
	for _, sa := range []string{"ztunnel", "zmesh-cni-agent"} {
		pod := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: sa + "-" + n.Name, Namespace: "istio-system", Labels: map[string]string{"app": sa}},
			Spec: corev1.PodSpec{
				NodeName: n.Name, HostNetwork: true, ServiceAccountName: sa,
				Containers: []corev1.Container{{Name: sa, Image: "zmesh/" + sa}},
			},
		}
		if _, err := c.Env.Client.CoreV1().Pods("istio-system").Create(ctx, pod, metav1.CreateOptions{}); err != nil {
			return fmt.Errorf("pod %s: %w", pod.Name, err)
		}
	}
	return nil
}

// Token asks TokenRequest for a token of namespace/sa, for audience (empty:
// the API server's), bound to the named pod when pod is not empty.
func (c *Cluster) Token(ctx context.Context, namespace, sa, audience, pod string) (string, error) {
	req := &authnv1.TokenRequest{Spec: authnv1.TokenRequestSpec{ExpirationSeconds: new(int64(3600))}}
	if audience != "" {
		req.Spec.Audiences = []string{audience}
	}
	if pod != "" {
		p, err := c.Env.Client.CoreV1().Pods(namespace).Get(ctx, pod, metav1.GetOptions{})
		if err != nil {
			return "", err
		}
		req.Spec.BoundObjectRef = &authnv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: p.Name, UID: p.UID}
	}
	resp, err := c.Env.Client.CoreV1().ServiceAccounts(namespace).CreateToken(ctx, sa, req, metav1.CreateOptions{})
	if err != nil {
		return "", fmt.Errorf("token of %s/%s: %w", namespace, sa, err)
	}
	return resp.Status.Token, nil
}

// kubeconfig writes a kubeconfig authenticating as namespace/sa.
func (c *Cluster) kubeconfig(ctx context.Context, path, namespace, sa, pod string) error {
	tok, err := c.Token(ctx, namespace, sa, "", pod)
	if err != nil {
		return err
	}
	cfg := fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: e2e
  cluster: {server: %q, certificate-authority: %q}
users:
- name: %s
  user: {token: %q}
contexts:
- name: e2e
  context: {cluster: e2e, user: %s, namespace: %s}
current-context: e2e
`, c.Env.APIServer, c.Env.CAFile, sa, tok, sa, namespace)
	return os.WriteFile(path, []byte(cfg), 0o600)
}

func (c *Cluster) startZmeshd(ctx context.Context) error {
	dir := filepath.Join(c.Dir, "zmeshd")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	kc := filepath.Join(dir, "kubeconfig")
	if err := c.kubeconfig(ctx, kc, "istio-system", "zmeshd", ""); err != nil {
		return err
	}
	var err error
	if c.ZmeshdSecure, err = freeAddr(); err != nil {
		return err
	}
	if c.ZmeshdMonitoring, err = freeAddr(); err != nil {
		return err
	}
	_, port, _ := strings.Cut(c.ZmeshdSecure, ":")
	c.ZmeshdForPods = ControlPlaneAddr.String() + ":" + port
	for _, n := range c.Nodes {
		if err := c.forwardControlPlane(n, port); err != nil {
			return err
		}
	}
	c.CADir = filepath.Join(dir, "ca")
	c.Zmeshd = &Proc{
		Name: "zmeshd", Bin: filepath.Join(c.Bin, "zmeshd"), LogPath: filepath.Join(dir, "zmeshd.log"),
		Ready: "http://" + c.ZmeshdMonitoring + "/ready",
		Args: []string{
			"--kubeconfig", kc, "--xds-address", "", "--secure-address", c.ZmeshdSecure,
			"--secure-hosts", "localhost,127.0.0.1," + ControlPlaneAddr.String(), "--monitoring-address", c.ZmeshdMonitoring,
			"--waypoint-image", WaypointImage, "--waypoint-xds-address", c.ZmeshdForPods,
			"--ca-dir", c.CADir, "--identity", "zmeshd-e2e",
			// Short-lived workload certificates: every ztunnel renews its
			// pods' about every 30 s, so renewals happen under the
			// scenarios' traffic (TestCertificateRotation watches one).
			"--workload-cert-ttl", CertTTL.String(),
		},
	}
	start := time.Now()
	if err := c.Zmeshd.Start(ctx); err != nil {
		return err
	}
	c.say("zmeshd ready in %s: TLS xDS+CA %s, monitoring %s, as istio-system/zmeshd", time.Since(start).Round(10*time.Millisecond), c.ZmeshdSecure, c.ZmeshdMonitoring)
	return nil
}

// primaryConf is the node's own pod network, as the cluster's CNI would
// install it: a bridge and host-local IPAM over the node's range, with
// hairpin mode on the bridge ports, as a kube-proxy cluster on the bridge
// plugin has it, so that a pod DNATed to itself by a Service is answered.
func primaryConf(n *Node) string {
	return fmt.Sprintf(`{
  "cniVersion": "1.0.0",
  "name": "podnet",
  "plugins": [
    {"type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": false, "hairpinMode": true,
     "ipam": {"type": "host-local", "dataDir": %q, "ranges": [[{"subnet": %q, "gateway": %q}]],
              "routes": [{"dst": "0.0.0.0/0"}]}}
  ]
}
`, filepath.Join(n.Dir, "ipam"), n.PodCIDR.String(), n.Gateway.String())
}

// debianCNI holds the primary plugins (Debian's containernetworking-plugins).
const debianCNI = "/usr/lib/cni"

func (c *Cluster) startNode(ctx context.Context, n *Node) error {
	for _, d := range []string{n.CNIBin, n.CNIConf} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	for _, p := range []string{"bridge", "host-local"} {
		if err := os.Symlink(filepath.Join(debianCNI, p), filepath.Join(n.CNIBin, p)); err != nil {
			return fmt.Errorf("CNI plugin %s (containernetworking-plugins installed?): %w", p, err)
		}
	}
	conf := filepath.Join(n.CNIConf, "10-podnet.conflist")
	if err := os.WriteFile(conf, []byte(primaryConf(n)), 0o644); err != nil {
		return err
	}
	if err := c.mountBPF(n, filepath.Join(n.Dir, "bpf")); err != nil {
		return err
	}

	kc := filepath.Join(n.Dir, "agent.kubeconfig")
	if err := c.kubeconfig(ctx, kc, "istio-system", "zmesh-cni-agent", "zmesh-cni-agent-"+n.Name); err != nil {
		return err
	}
	health, err := freeAddr()
	if err != nil {
		return err
	}
	n.Agent = &Proc{
		Name: n.Name + " zmesh-cni-agent", Bin: filepath.Join(c.Bin, "zmesh-cni-agent"), LogPath: filepath.Join(n.Dir, "agent.log"),
		Ready: "http://" + health + "/readyz",
		Args: []string{
			"--node", n.Name, "--kubeconfig", kc,
			"--cni-bin-dir", n.CNIBin, "--cni-conf-dir", n.CNIConf, "--plugin-binary", filepath.Join(c.Bin, "zmesh-cni"),
			"--cni-socket", filepath.Join(n.Dir, "cni.sock"), "--zds-socket", filepath.Join(n.Dir, "zds.sock"),
			"--bpf-root", n.BPFRoot, "--host-netns", "/run/netns/" + n.Host.Name,
			"--health-address", health, "--chain-interval", "200ms",
		},
	}
	start := time.Now()
	if err := n.Agent.Start(ctx); err != nil {
		return err
	}
	if err := waitUntil(ctx, 15*time.Second, func() bool {
		b, err := os.ReadFile(conf)
		return err == nil && strings.Contains(string(b), `"zmesh-cni"`)
	}); err != nil {
		return fmt.Errorf("%s: the agent did not chain zmesh-cni into %s", n.Name, conf)
	}

	tok, err := c.Token(ctx, "istio-system", "ztunnel", "istio-ca", "ztunnel-"+n.Name)
	if err != nil {
		return err
	}
	n.ZtunnelToken = filepath.Join(n.Dir, "ztunnel-token")
	if err := os.WriteFile(n.ZtunnelToken, []byte(tok), 0o600); err != nil {
		return err
	}
	for _, p := range []*string{&n.ZtunnelAdmin, &n.ZtunnelMetrics, &n.ZtunnelReady} {
		if *p, err = freeAddr(); err != nil {
			return err
		}
	}
	n.Ztunnel = &Proc{
		Name: n.Name + " ztunnel", Bin: filepath.Join(c.Bin, "ztunnel"), LogPath: filepath.Join(n.Dir, "ztunnel.log"),
		Ready: "http://" + n.ZtunnelReady + "/healthz/ready",
		Args: []string{
			"--node", n.Name, "--zds-socket", filepath.Join(n.Dir, "zds.sock"), "--state-dir", filepath.Join(n.Dir, "ztunnel-state"),
			"--xds-address", c.ZmeshdSecure, "--root-cert", filepath.Join(c.CADir, "root-cert.pem"),
			"--token-file", n.ZtunnelToken, "--drain-grace", "2s",
			"--admin-address", n.ZtunnelAdmin, "--metrics-address", n.ZtunnelMetrics, "--readiness-address", n.ZtunnelReady,
		},
	}
	if err := n.Ztunnel.Start(ctx); err != nil {
		return err
	}
	c.say("%s: agent pid %d (zmesh-cni chained into %s), ztunnel pid %d ready, %s", n.Name, n.Agent.Pid(), filepath.Base(conf), n.Ztunnel.Pid(), time.Since(start).Round(10*time.Millisecond))
	return nil
}

// mountBPF mounts a bpffs instance of the node's own at dir (the machine
// has none mounted at /sys/fs/bpf; a private one also goes away whole with
// the node).
func (c *Cluster) mountBPF(n *Node, dir string) error {
	n.BPFRoot = dir
	if err := os.MkdirAll(n.BPFRoot, 0o700); err != nil {
		return err
	}
	if err := unix.Mount("bpf", n.BPFRoot, "bpf", 0, ""); err != nil {
		return fmt.Errorf("mount bpffs at %s: %w", n.BPFRoot, err)
	}
	n.bpfBase = netenv.BPFEntries(n.BPFRoot) // the filesystem's own (maps.debug, progs.debug)
	return nil
}

// RestartZtunnel replaces the node's ztunnel as a DaemonSet rolling update
// does: a new process (its own admin ports) starts and takes the node's
// pods over ZDS, then the old one gets SIGTERM (docs/decisions.md,
// "ztunnel restart handover"). With the chart, it is that rolling update
// (restartZtunnelFromChart).
func (c *Cluster) RestartZtunnel(ctx context.Context, n *Node) error {
	if c.opts.FromChart {
		return c.restartZtunnelFromChart(ctx, n)
	}
	old := n.Ztunnel
	next := &Proc{Name: old.Name, Bin: old.Bin, LogPath: old.LogPath + ".next"}
	var admin, metrics, ready string
	var err error
	for _, p := range []*string{&admin, &metrics, &ready} {
		if *p, err = freeAddr(); err != nil {
			return err
		}
	}
	for i := 0; i < len(old.Args); i += 2 {
		k, v := old.Args[i], old.Args[i+1]
		switch k {
		case "--admin-address":
			v = admin
		case "--metrics-address":
			v = metrics
		case "--readiness-address":
			v = ready
		}
		next.Args = append(next.Args, k, v)
	}
	next.Ready = "http://" + ready + "/healthz/ready"
	if err := next.Start(ctx); err != nil {
		return err
	}
	n.Ztunnel, n.ZtunnelAdmin, n.ZtunnelMetrics, n.ZtunnelReady = next, admin, metrics, ready
	c.retired = append(c.retired, old)
	old.Stop()
	return nil
}

// Close removes everything: the test namespaces' pods (through the node
// runners, so CNI DEL runs), the processes, the network namespaces, the
// bpffs mounts, the API server and the temporary directory. It may be
// called on a partly started cluster and more than once.
func (c *Cluster) Close() error {
	if c.closed {
		return nil
	}
	c.closed = true
	var errs []error
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	if c.stopPods != nil && c.Env != nil {
		// What would make pods again goes first (Gateways make waypoint
		// Deployments, Deployments make pods); then the pods users made
		// are deleted, as the namespace controller would, and the node
		// runners finish them (CNI DEL while the agent still runs).
		for _, kind := range []string{"gateways.gateway.networking.k8s.io", "deployments", "replicasets"} {
			c.Kubectl(ctx, "delete", kind, "--all", "--all-namespaces", "--wait=false")
		}
		pods, err := c.Env.Client.CoreV1().Pods("").List(ctx, metav1.ListOptions{})
		if err == nil {
			for _, p := range pods.Items {
				if p.Spec.HostNetwork || p.Namespace == "istio-system" {
					continue
				}
				c.Env.Client.CoreV1().Pods(p.Namespace).Delete(ctx, p.Name, metav1.DeleteOptions{})
			}
		}
		waitUntil(ctx, 30*time.Second, func() bool {
			if c.opts.FromChart {
				// zmesh's own pods stay until the node runners stop.
				pods, err := c.Env.Client.CoreV1().Pods("").List(ctx, metav1.ListOptions{})
				if err != nil {
					return false
				}
				for _, p := range pods.Items {
					if p.Namespace != "istio-system" {
						return false
					}
				}
				return true
			}
			for _, n := range c.Nodes {
				if n.Kubelet.Count() > 0 {
					return false
				}
			}
			return true
		})
		c.stopPods()
		c.kubelets.Wait()
	}
	if c.stopStreaming != nil {
		c.stopStreaming()
		c.streams.Wait()
	}
	// Pins left once every pod is gone are the product's leak.
	for _, n := range c.Nodes {
		if n.BPFRoot != "" {
			for _, p := range netenv.BPFEntries(n.BPFRoot) {
				if c.opts.FromChart && p == filepath.Join(n.BPFRoot, "zmesh") {
					// The agent's --bpf-root: its pins would be inside.
					continue
				}
				if !slices.Contains(n.bpfBase, p) {
					c.bpfPins = append(c.bpfPins, p)
				}
			}
		}
	}
	for _, n := range slices.Backward(c.Nodes) {
		if n.Ztunnel != nil {
			n.Ztunnel.Stop()
		}
		if n.Agent != nil {
			n.Agent.Stop()
		}
	}
	if c.Zmeshd != nil {
		c.Zmeshd.Stop()
	}
	if c.dns != nil {
		c.dns.Close()
	}
	if c.proxy != nil {
		c.proxy.Close()
	}
	if c.LAN != nil {
		errs = append(errs, c.LAN.Close())
	}
	for _, n := range c.Nodes {
		if n.forward != nil {
			n.forward.Close()
		}
		if n.Kubelet != nil && n.Kubelet.Images != nil {
			errs = append(errs, n.Kubelet.Images.Close())
		}
		if n.BPFRoot != "" {
			if err := unix.Unmount(n.BPFRoot, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) {
				errs = append(errs, fmt.Errorf("unmount %s: %w", n.BPFRoot, err))
			}
		}
	}
	if c.netnsShared {
		if err := unix.Unmount(c.netnsDir(), unix.MNT_DETACH); err != nil {
			errs = append(errs, fmt.Errorf("unmount %s: %w", c.netnsDir(), err))
		}
	}
	if c.Env != nil {
		errs = append(errs, c.Env.Stop())
	}
	if c.Dir != "" && !c.opts.Keep {
		errs = append(errs, os.RemoveAll(c.Dir))
	}
	return errors.Join(errs...)
}

// Leftovers lists what Close left behind: network namespaces, links in the
// root namespace, mounts, bpffs pins, processes and the temporary directory.
// Call it after Close.
func (c *Cluster) Leftovers() []string {
	out := netenv.LeftBehind(c.Dir, c.rootLinks, c.opts.Keep)
	for _, p := range c.bpfPins {
		out = append(out, "bpffs pin left after every pod was deleted: "+p)
	}
	for _, p := range c.allProcs() {
		for _, pid := range p.Pids() {
			if _, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); err == nil {
				out = append(out, fmt.Sprintf("process %s pid %d", p.Name, pid))
			}
		}
	}
	if exe, err := os.Executable(); err == nil {
		// Pod apps are this executable re-run: any child still alive?
		out = append(out, childrenRunning(func(path string) bool { return path == exe })...)
	}
	// Pods of zmesh images run the built binaries.
	out = append(out, childrenRunning(func(path string) bool { return strings.HasPrefix(path, c.Bin+"/") })...)
	return out
}

func (c *Cluster) allProcs() []*Proc {
	ps := slices.Clone(c.retired)
	if c.Zmeshd != nil {
		ps = append(ps, c.Zmeshd)
	}
	for _, n := range c.Nodes {
		for _, p := range []*Proc{n.Agent, n.Ztunnel} {
			if p != nil {
				ps = append(ps, p)
			}
		}
	}
	return ps
}

// childrenRunning lists this process's children whose executable is one
// of running's (pod processes).
func childrenRunning(running func(exe string) bool) []string {
	var out []string
	self := fmt.Sprint(os.Getpid())
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		st, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...
		s := string(st)
		i := strings.LastIndexByte(s, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(s[i+1:])
		if len(f) < 2 || f[1] != self {
			continue
		}
		if target, err := os.Readlink(filepath.Join("/proc", e.Name(), "exe")); err == nil && running(target) {
			out = append(out, "pod process "+e.Name())
		}
	}
	return out
}

func waitUntil(ctx context.Context, d time.Duration, cond func() bool) error {
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			return errors.New("timed out")
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
	return nil
}
