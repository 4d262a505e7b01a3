package cluster

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/zmesh/zmesh/deploy/render"
	"github.com/zmesh/zmesh/identity"
)

// ChartImageTag is the tag of the zmesh images the chart installs in the
// suite; the node runners run any zmesh image as the binary built here.
const ChartImageTag = "e2e"

// hostTree is a node's own file system tree: its pods' hostPath volumes
// (the CNI directories, the agent's and ztunnel's sockets, bpffs) are
// under it, so that the nodes sharing this machine keep them apart.
func (n *Node) hostTree() string { return filepath.Join(n.Dir, "host") }

// chartValues are the values the suite installs the chart with: the
// default addresses, ports, mounts and flags, with the images of this tree,
// one zmeshd replica (two nodes' worth of CPU), the suite's short
// certificates and drain.
func chartValues() map[string]any {
	return map[string]any{
		"createNamespace": true,
		"global":          map[string]any{"hub": "zmesh", "tag": ChartImageTag, "logLevel": "debug"},
		"zmeshd":          map[string]any{"replicas": 1, "workloadCertTTL": CertTTL.String()},
		"ztunnel":         map[string]any{"drainGraceSeconds": 2},
	}
}

// prepareNodeTree makes what a node's own install gives before zmesh
// comes: the primary CNI plugins and conflist in the node tree's
// /opt/cni/bin and /etc/cni/net.d, and a bpffs at its /sys/fs/bpf.
func (c *Cluster) prepareNodeTree(n *Node) error {
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
	if err := os.WriteFile(filepath.Join(n.CNIConf, "10-podnet.conflist"), []byte(primaryConf(n)), 0o644); err != nil {
		return err
	}
	return c.mountBPF(n, filepath.Join(n.hostTree(), "sys", "fs", "bpf"))
}

// installChart gives the pods what a cluster gives them (the kube-proxy
// and DNS stand-ins, the CA's Secret), renders the chart with Helm's SDK,
// applies it to the API server and waits for the rollout of every
// DaemonSet and Deployment it made.
func (c *Cluster) installChart(ctx context.Context) error {
	start := time.Now()
	if err := c.clusterServices(ctx); err != nil {
		return err
	}
	var err error
	if c.proxy, err = startServiceProxy(c.Env.Client, c.Nodes, c.log); err != nil {
		return err
	}
	if c.dns, err = startClusterDNS(c.Nodes, false, func(name string) (netip.Addr, bool) { return c.proxy.serviceIP(name, "cluster.local") }); err != nil {
		return err
	}

	// The CA's root, as an operator plugs it in (README.md, "On a
	// cluster"): generated here, handed over as the cacerts Secret.
	c.CADir = filepath.Join(c.Dir, "ca")
	if _, err := identity.LoadOrCreateCA(c.CADir, identity.CAOptions{}); err != nil {
		return err
	}
	data := map[string][]byte{}
	for _, f := range []string{identity.FileRootCert, identity.FileRootKey} {
		b, err := os.ReadFile(filepath.Join(c.CADir, f))
		if err != nil {
			return err
		}
		data[f] = b
	}
	if _, err := c.Env.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "istio-system"}}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return err
	}
	if _, err := c.Env.Client.CoreV1().Secrets("istio-system").Create(ctx, &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: "cacerts", Namespace: "istio-system"}, Data: data,
	}, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("cacerts Secret: %w", err)
	}

	ms, err := render.Render(render.Options{IncludeCRDs: true, Values: chartValues()})
	if err != nil {
		return err
	}
	manifest := render.YAML(ms)
	if err := os.WriteFile(filepath.Join(c.Dir, "zmesh-chart.yaml"), manifest, 0o644); err != nil {
		return err
	}
	// Server-side: the HTTPRoute CRD is too large for client-side apply.
	if out, err := c.Env.KubectlRun(ctx, string(manifest), "apply", "--server-side", "-f", "-"); err != nil {
		return fmt.Errorf("apply the chart: %w: %s", err, out)
	}
	c.say("applied the chart (%d objects, rendered with Helm's SDK) in %s", len(ms), time.Since(start).Round(10*time.Millisecond))
	for _, w := range []string{"daemonset/zmesh-cni-agent", "deployment/zmeshd", "daemonset/ztunnel"} {
		out, err := c.Env.KubectlRun(ctx, "", "-n", "istio-system", "rollout", "status", w, "--timeout=180s")
		if err != nil {
			return fmt.Errorf("rollout of %s: %w: %s\n%s", w, err, out, c.podsReport(ctx))
		}
		c.say("%s", strings.TrimSpace(out))
	}
	for _, n := range c.Nodes {
		p := n.Kubelet.PodOf("istio-system", "ztunnel")
		if p == nil {
			return fmt.Errorf("%s: no ztunnel pod runs", n.Name)
		}
		n.ZtunnelMetrics = netip.AddrPortFrom(p.IP, 15020).String()
		n.ZtunnelReady = netip.AddrPortFrom(p.IP, 15021).String()
		n.inHost = true
	}
	c.say("zmesh installed from the chart in %s", time.Since(start).Round(10*time.Millisecond))
	return nil
}

// podsReport lists istio-system's pods with their node, phase and
// readiness, for a rollout that did not finish.
func (c *Cluster) podsReport(ctx context.Context) string {
	pods, err := c.Env.Client.CoreV1().Pods("istio-system").List(ctx, metav1.ListOptions{})
	if err != nil {
		return err.Error()
	}
	var b strings.Builder
	for _, p := range pods.Items {
		fmt.Fprintf(&b, "  %s on %q: %s ready=%v\n", p.Name, p.Spec.NodeName, p.Status.Phase, podReady(&p))
	}
	return b.String()
}
