package cluster

import (
	"context"
	"net/netip"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Apply runs `kubectl apply -f e2e/testdata/<file>` and, at cleanup,
// deletes the namespaces it names and waits for their pods to be torn
// down by the node runners.
func (c *Cluster) Apply(t testing.TB, file string, namespaces ...string) {
	t.Helper()
	out, err := c.Kubectl(t.Context(), "apply", "-f", filepath.Join(c.Root, "e2e", "testdata", file))
	if err != nil {
		t.Fatalf("kubectl apply -f %s: %v", file, err)
	}
	t.Logf("$ kubectl apply -f e2e/testdata/%s\n%s", file, strings.TrimSpace(out))
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		for _, ns := range namespaces {
			c.Kubectl(ctx, "delete", "namespace", ns, "--wait=false")
		}
		for _, ns := range namespaces {
			for ctx.Err() == nil {
				pods, err := c.Env.Client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
				if err == nil && len(pods.Items) == 0 {
					break
				}
				time.Sleep(100 * time.Millisecond)
			}
		}
	})
}

// MustKubectl runs kubectl, logs the command and its output, and fails the
// test on error.
func (c *Cluster) MustKubectl(t testing.TB, args ...string) string {
	t.Helper()
	out, err := c.Kubectl(t.Context(), args...)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("$ kubectl %s\n%s", strings.Join(args, " "), strings.TrimSpace(out))
	return out
}

// MustWaitPods is WaitPods failing the test on error; it logs where each
// pod runs.
func (c *Cluster) MustWaitPods(t testing.TB, ns string, n int) map[string]*Pod {
	t.Helper()
	pods, err := c.WaitPods(t.Context(), ns, n)
	if err != nil {
		t.Fatal(err)
	}
	for name, p := range pods {
		t.Logf("pod %s/%s running on %s at %s", ns, name, p.Node.Name, p.IP)
	}
	return pods
}

// Eventually polls cond every 20 ms for up to d, failing the test with
// what when it never holds; it returns how long it took.
func Eventually(t testing.TB, d time.Duration, what string, cond func() bool) time.Duration {
	t.Helper()
	start := time.Now()
	for !cond() {
		if time.Since(start) > d {
			t.Fatalf("after %s: %s", d, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return time.Since(start)
}

// ApplyManifest runs `kubectl apply -f -` on manifest, an inline YAML
// that creates namespace ns, and deletes ns at cleanup without waiting.
func (c *Cluster) ApplyManifest(t testing.TB, manifest, ns string) {
	t.Helper()
	if out, err := c.Env.KubectlRun(t.Context(), manifest, "apply", "-f", "-"); err != nil {
		t.Fatalf("apply: %v: %s", err, out)
	}
	t.Cleanup(func() { c.Kubectl(t.Context(), "delete", "namespace", ns, "--wait=false") })
}

// ZmeshctlRun runs the CLI built for the cluster as its admin and returns
// its output (stdout and stderr), for a test that polls it.
func (c *Cluster) ZmeshctlRun(ctx context.Context, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, filepath.Join(c.Bin, "zmeshctl"), append([]string{"--kubeconfig", c.Env.Kubeconfig}, args...)...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// Zmeshctl is ZmeshctlRun within two minutes, logging the command and its
// output; it fails the test on error.
func (c *Cluster) Zmeshctl(t testing.TB, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	out, err := c.ZmeshctlRun(ctx, args...)
	t.Logf("$ zmeshctl %s\n%s", strings.Join(args, " "), strings.TrimSpace(out))
	if err != nil {
		t.Fatalf("zmeshctl %s: %v", strings.Join(args, " "), err)
	}
	return out
}

// ServiceAddr is a Service's ClusterIP and port.
func (c *Cluster) ServiceAddr(t testing.TB, ns, name string, port uint16) netip.AddrPort {
	t.Helper()
	svc, err := c.Env.Client.CoreV1().Services(ns).Get(t.Context(), name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return netip.AddrPortFrom(netip.MustParseAddr(svc.Spec.ClusterIP), port)
}
