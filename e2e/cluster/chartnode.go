package cluster

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/zmesh/zmesh/deploy/render"
	"github.com/zmesh/zmesh/e2e/noderunner"
	"github.com/zmesh/zmesh/e2e/proc"
)

// The mesh's parts as a test drives them, one API for both ways the
// harness runs zmesh: host processes (Zmeshd, Node.Agent, Node.Ztunnel),
// or the chart's pods under the node runners. With the chart, each method
// does what a cluster's user or node admin would: scale the Deployment,
// restart the DaemonSet's rollout, read the container's log, the files
// mounted in its mount namespace, its port inside its network namespace.

// zmeshNamespace is where the chart installs zmesh.
const zmeshNamespace = "istio-system"

// StopZmeshd takes the control plane down and returns once no zmeshd
// runs: the process gets SIGTERM, or the chart's Deployment is scaled to 0
// and every zmeshd pod is gone.
func (c *Cluster) StopZmeshd(ctx context.Context) error {
	if !c.opts.FromChart {
		c.Zmeshd.Stop()
		return nil
	}
	d, err := c.Env.Client.AppsV1().Deployments(zmeshNamespace).Get(ctx, "zmeshd", metav1.GetOptions{})
	if err != nil {
		return err
	}
	if r := d.Spec.Replicas; r != nil && *r > 0 {
		c.zmeshdReplicas = *r
	}
	if out, err := c.Kubectl(ctx, "-n", zmeshNamespace, "scale", "deployment/zmeshd", "--replicas=0"); err != nil {
		return fmt.Errorf("scale zmeshd to 0: %w: %s", err, out)
	}
	if err := waitUntil(ctx, 60*time.Second, func() bool {
		pods, err := c.Env.Client.CoreV1().Pods(zmeshNamespace).List(ctx, metav1.ListOptions{LabelSelector: "app=zmeshd"})
		if err != nil || len(pods.Items) > 0 {
			return false
		}
		for _, n := range c.Nodes {
			if n.Kubelet.PodOf(zmeshNamespace, "zmeshd") != nil {
				return false
			}
		}
		return true
	}); err != nil {
		return fmt.Errorf("zmeshd scaled to 0, but its pods are still there after 60s:\n%s", c.podsReport(ctx))
	}
	return nil
}

// StartZmeshd brings the control plane back and returns once it is ready:
// the process is started again, or the chart's Deployment is scaled back to
// the replicas it had and rolled out.
func (c *Cluster) StartZmeshd(ctx context.Context) error {
	if !c.opts.FromChart {
		return c.Zmeshd.Start(ctx)
	}
	replicas := max(c.zmeshdReplicas, 1)
	if out, err := c.Kubectl(ctx, "-n", zmeshNamespace, "scale", "deployment/zmeshd", "--replicas="+strconv.Itoa(int(replicas))); err != nil {
		return fmt.Errorf("scale zmeshd to %d: %w: %s", replicas, err, out)
	}
	if out, err := c.Kubectl(ctx, "-n", zmeshNamespace, "rollout", "status", "deployment/zmeshd", "--timeout=120s"); err != nil {
		return fmt.Errorf("zmeshd rollout: %w: %s\n%s", err, out, c.podsReport(ctx))
	}
	return nil
}

// restartZtunnelFromChart restarts the ztunnel DaemonSet's rollout as
// `kubectl rollout restart` does (a new pod template annotation) and waits
// until node n runs a new ztunnel pod, Ready, with the old one gone, then
// for the rollout over every node. The chart's update strategy (maxSurge 1,
// maxUnavailable 0) makes this an upgrade's path: on each node the new pod
// starts beside the old one and takes the node's pods over ZDS before the
// old one is deleted.
func (c *Cluster) restartZtunnelFromChart(ctx context.Context, n *Node) error {
	before := map[string]bool{}
	pods, err := c.Env.Client.CoreV1().Pods(zmeshNamespace).List(ctx, metav1.ListOptions{LabelSelector: "app=ztunnel"})
	if err != nil {
		return err
	}
	for _, p := range pods.Items {
		before[string(p.UID)] = true
	}
	if out, err := c.Kubectl(ctx, "-n", zmeshNamespace, "rollout", "restart", "daemonset/ztunnel"); err != nil {
		return fmt.Errorf("rollout restart of ztunnel: %w: %s", err, out)
	}
	if err := waitUntil(ctx, 120*time.Second, func() bool {
		pods, err := c.Env.Client.CoreV1().Pods(zmeshNamespace).List(ctx, metav1.ListOptions{LabelSelector: "app=ztunnel"})
		if err != nil {
			return false
		}
		var onNode []corev1.Pod
		for _, p := range pods.Items {
			if p.Spec.NodeName == n.Name {
				onNode = append(onNode, p)
			}
		}
		return len(onNode) == 1 && !before[string(onNode[0].UID)] && podReady(&onNode[0])
	}); err != nil {
		return fmt.Errorf("%s: no new ready ztunnel pod alone on the node after 120s:\n%s", n.Name, c.podsReport(ctx))
	}
	if out, err := c.Kubectl(ctx, "-n", zmeshNamespace, "rollout", "status", "daemonset/ztunnel", "--timeout=180s"); err != nil {
		return fmt.Errorf("ztunnel rollout: %w: %s\n%s", err, out, c.podsReport(ctx))
	}
	return c.ztunnelEndpoints()
}

// ztunnelEndpoints points every node's ZtunnelMetrics and ZtunnelReady at
// its ztunnel pod (a new pod has a new address).
func (c *Cluster) ztunnelEndpoints() error {
	for _, n := range c.Nodes {
		p := n.Kubelet.PodOf(zmeshNamespace, "ztunnel")
		if p == nil {
			return fmt.Errorf("%s: no ztunnel pod runs", n.Name)
		}
		n.ZtunnelMetrics = netip.AddrPortFrom(p.IP, 15020).String()
		n.ZtunnelReady = netip.AddrPortFrom(p.IP, 15021).String()
		n.inHost = true
	}
	return nil
}

// ztunnelPod is the node's running ztunnel pod (chart mode), nil if none.
func (n *Node) ztunnelPod() *noderunner.RunningPod {
	if n.Kubelet == nil {
		return nil
	}
	return n.Kubelet.PodOf(zmeshNamespace, "ztunnel")
}

// ZtunnelPid is the process id of the node's ztunnel (0 when none runs).
func (n *Node) ZtunnelPid() int {
	if n.Ztunnel != nil {
		return n.Ztunnel.Pid()
	}
	if p := n.ztunnelPod(); p != nil {
		return p.Pid()
	}
	return 0
}

// ZtunnelLogRecords returns the JSON log records of the node's ztunnel
// whose msg is msg (all when empty) and whose attributes include every
// key/value pair of match: from the process's output, or from the
// ztunnel container's log file the node runner writes (what `kubectl
// logs` shows).
func (n *Node) ZtunnelLogRecords(msg string, match ...string) []map[string]any {
	if n.Ztunnel != nil {
		return n.Ztunnel.LogRecords(msg, match...)
	}
	p := n.ztunnelPod()
	if p == nil || p.LogPath() == "" {
		return nil
	}
	f, err := os.Open(p.LogPath())
	if err != nil {
		return nil
	}
	defer f.Close()
	return proc.LogRecordsOf(f, msg, match...)
}

// ZtunnelTokenFile is the file holding the node's ztunnel's pod-bound
// token: the one the harness wrote, or the projected token the node runner
// mounted for the ztunnel container, read through the process's own mount
// namespace at the path its --token-file names.
func (n *Node) ZtunnelTokenFile() (string, error) {
	if n.Ztunnel != nil {
		return n.ZtunnelToken, nil
	}
	p := n.ztunnelPod()
	if p == nil || p.Pid() == 0 {
		return "", fmt.Errorf("%s: no ztunnel pod runs", n.Name)
	}
	path, ok := containerFlag(p.Container, "--token-file")
	if !ok || !filepath.IsAbs(path) {
		return "", fmt.Errorf("%s: the ztunnel container has no absolute --token-file (args %q)", n.Name, p.Container.Args)
	}
	return resolveIn(filepath.Join("/proc", strconv.Itoa(p.Pid()), "root"), path)
}

// resolveIn returns the file at path as a process whose root directory is
// root sees it: symbolic links are followed with absolute targets taken
// from root (a plain path under /proc/PID/root would take them from ours,
// and /var/run is such a link).
func resolveIn(root, path string) (string, error) {
	split := func(p string) []string { return strings.Split(strings.Trim(filepath.Clean(p), "/"), "/") }
	parts, cur, links := split(path), "/", 0
	for len(parts) > 0 {
		part := parts[0]
		parts = parts[1:]
		if part == "" || part == "." {
			continue
		}
		next := filepath.Join(cur, part)
		fi, err := os.Lstat(filepath.Join(root, next))
		if err != nil {
			return "", err
		}
		if fi.Mode()&os.ModeSymlink == 0 {
			cur = next
			continue
		}
		if links++; links > 40 {
			return "", fmt.Errorf("%s: too many symbolic links", path)
		}
		target, err := os.Readlink(filepath.Join(root, next))
		if err != nil {
			return "", err
		}
		if !filepath.IsAbs(target) {
			target = filepath.Join(cur, target)
		}
		parts, cur = append(split(target), parts...), "/"
	}
	return filepath.Join(root, cur), nil
}

// ZtunnelAdminGet fetches path (such as /config_dump) from the node's
// ztunnel admin endpoint, which listens on the loopback of the ztunnel's
// network namespace: the host's for a process, the pod's own with the
// chart. It fails on a non-200 answer.
func (n *Node) ZtunnelAdminGet(ctx context.Context, path string) (string, error) {
	if n.Ztunnel != nil {
		return HTTPGet(ctx, "http://"+n.ZtunnelAdmin+path)
	}
	p := n.ztunnelPod()
	if p == nil {
		return "", fmt.Errorf("%s: no ztunnel pod runs", n.Name)
	}
	addr, ok := containerFlag(p.Container, "--admin-address")
	if !ok {
		return "", fmt.Errorf("%s: the ztunnel container has no --admin-address (args %q)", n.Name, p.Container.Args)
	}
	out, err := getIn(ctx, p.NS, "http://"+addr+path)
	if err != nil {
		return "", fmt.Errorf("%s's ztunnel pod: %w", n.Name, err)
	}
	return out, nil
}

// containerFlag is the value of a --name=value or --name value argument of
// the container.
func containerFlag(c *corev1.Container, name string) (string, bool) {
	if c == nil {
		return "", false
	}
	args := slices.Concat(c.Command, c.Args)
	for i, a := range args {
		if v, ok := strings.CutPrefix(a, name+"="); ok {
			return v, true
		}
		if a == name && i+1 < len(args) {
			return args[i+1], true
		}
	}
	return "", false
}

// DialZmeshd opens a gRPC connection to zmeshd's TLS port (xDS and the
// CA), verified against the mesh's root, as a node's ztunnel reaches it:
// the process's address, or the chart's Service by its name from the
// first node's host namespace (the kube-proxy stand-in forwards it).
func (c *Cluster) DialZmeshd(ctx context.Context) (*grpc.ClientConn, error) {
	pem, err := os.ReadFile(filepath.Join(c.CADir, "root-cert.pem"))
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, errors.New("root-cert.pem: no certificate")
	}
	tlsConf := &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	if !c.opts.FromChart {
		return grpc.NewClient(c.ZmeshdSecure, grpc.WithTransportCredentials(credentials.NewTLS(tlsConf)))
	}
	svc, err := c.Env.Client.CoreV1().Services(zmeshNamespace).Get(ctx, "zmeshd", metav1.GetOptions{})
	if err != nil {
		return nil, err
	}
	ip, err := netip.ParseAddr(svc.Spec.ClusterIP)
	if err != nil {
		return nil, fmt.Errorf("zmeshd Service clusterIP %q: %w", svc.Spec.ClusterIP, err)
	}
	addr := netip.AddrPortFrom(ip, 15012).String()
	host := c.Nodes[0].Host
	// The name zmeshd's serving certificate carries (--secure-hosts).
	tlsConf.ServerName = "zmeshd." + zmeshNamespace + ".svc"
	return grpc.NewClient("passthrough:///"+addr,
		grpc.WithTransportCredentials(credentials.NewTLS(tlsConf)),
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) {
			return host.Dial(ctx, "tcp", addr)
		}))
}

// UpgradeChart is `helm upgrade` of the suite's release with values
// merged over the ones it was installed with (nil: those again, a
// rollback): the chart rendered with Helm's SDK and applied server-side,
// as the install was. It does not wait for rollouts.
func (c *Cluster) UpgradeChart(ctx context.Context, values map[string]any) error {
	if !c.opts.FromChart {
		return errors.New("UpgradeChart: the cluster was not installed from the chart")
	}
	vals := chartValues()
	mergeValues(vals, values)
	ms, err := render.Render(render.Options{IncludeCRDs: true, Values: vals})
	if err != nil {
		return err
	}
	if out, err := c.Env.KubectlRun(ctx, string(render.YAML(ms)), "apply", "--server-side", "-f", "-"); err != nil {
		return fmt.Errorf("apply the upgraded chart: %w: %s", err, out)
	}
	return nil
}

// mergeValues merges src into dst table by table, as Helm merges values
// files: a table merges into a table, anything else replaces.
func mergeValues(dst, src map[string]any) {
	for k, v := range src {
		sub, ok := v.(map[string]any)
		if cur, isMap := dst[k].(map[string]any); ok && isMap {
			mergeValues(cur, sub)
			continue
		}
		dst[k] = v
	}
}
