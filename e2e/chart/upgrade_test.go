package chart

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"

	"github.com/zmesh/zmesh/e2e/cluster"
)

// nextTag is the image tag of the release the scenario upgrades to.
const nextTag = cluster.ChartImageTag + "-next"

// TestUpgrade: zmesh upgraded under traffic as `helm upgrade` does it,
// control plane first, with a client opening a new connection every 10 ms
// to a server on the other node, none of which may fail:
//  0. ztunnel to the previous release (prevZtunnelCommit, a build of an
//     earlier commit of this repository: a real version skew, not a tag);
//  1. zmeshd, two replicas, to a new image: the Deployment rolls
//     (maxSurge 1, maxUnavailable 0) and the leader Lease moves to a
//     replica of the new release, which then writes policy status; the
//     ztunnels, still of the old release (one version behind zmeshd),
//     enforce a policy the new zmeshd sends them;
//  2. ztunnel from the previous release to the new one: the DaemonSet rolls node by node — never two
//     nodes with an old and a new pod at once (an old pod being deleted
//     drains beside the next node's surge, as the controller counts) — and
//     on each node the new pod takes the node's pods over from the old one.
//
// At the end the release goes back to the suite's values (a rollback).
func TestUpgrade(t *testing.T) {
	mesh.Apply(t, "upgrade.yaml", "upgrade")
	pods := mesh.MustWaitPods(t, "upgrade", 2)
	client, server := pods["client"], pods["server"]
	cluster.Eventually(t, 30*time.Second, "client and server captured", func() bool {
		a, _ := mesh.Redirected(t.Context(), "upgrade", "client")
		b, _ := mesh.Redirected(t.Context(), "upgrade", "server")
		return a && b
	})
	dst := server.Addr(echoPort)
	until(t, 30*time.Second, "client -> server across nodes", func() error {
		_, _, err := client.Echo(t.Context(), dst)
		return err
	})
	t.Cleanup(func() {
		// The suite's release again, rolled out, for the scenarios after.
		ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
		defer cancel()
		if err := mesh.UpgradeChart(ctx, nil); err != nil {
			t.Errorf("rollback: %v", err)
			return
		}
		for _, w := range []string{"deployment/zmeshd", "daemonset/ztunnel"} {
			if out, err := mesh.Kubectl(ctx, "-n", "istio-system", "rollout", "status", w, "--timeout=180s"); err != nil {
				t.Errorf("rollback of %s: %v: %s", w, err, out)
			}
		}
	})

	// 0. The ztunnels one release behind, under traffic (a downgrade:
	// the new pod taking a node's pods over is the older one).
	prevBin := prevZtunnel(t)
	prevZtunnel := map[string]any{"image": "zmesh/ztunnel:" + prevTag}
	l := startLoad(client, dst)
	t0 := time.Now()
	upgrade(t, map[string]any{"ztunnel": prevZtunnel})
	rollout(t, "daemonset/ztunnel")
	waitZtunnels(t, "zmesh/ztunnel:"+prevTag, "the previous release")
	time.Sleep(time.Second)
	t1 := time.Now()
	l.Stop()
	ok, failed := l.Between(t0, t1)
	t.Logf("ztunnel rolled back to %s (commit %s), in %s: %d new connections answered, %d failed (slowest %s)",
		prevTag, prevZtunnelCommit[:12], t1.Sub(t0).Round(100*time.Millisecond), ok, len(failed), l.Slowest(t0, t1))
	if len(failed) > 0 || ok == 0 {
		t.Errorf("connections failed while ztunnel rolled to the previous release:%s", cluster.DescribeFailed(failed))
	}
	// The pods run that build, not this tree's: one process per node.
	if n := runningExe(prevBin); n != len(mesh.Nodes) {
		t.Fatalf("%d processes run %s, want one per node (%d)", n, prevBin, len(mesh.Nodes))
	}

	// The chart's default of two zmeshd replicas (the suite runs one):
	// scaling changes no pod template, nothing rolls.
	upgrade(t, map[string]any{"zmeshd": map[string]any{"replicas": 2}, "ztunnel": prevZtunnel})
	rollout(t, "deployment/zmeshd")
	oldZmeshd := podNames(t, "app=zmeshd")
	holder := leaseHolder(t)
	if !slices.Contains(oldZmeshd, holder) {
		t.Fatalf("the zmeshd Lease is held by %q, not one of the replicas %v", holder, oldZmeshd)
	}
	t.Logf("zmeshd replicas %v, leader %s", oldZmeshd, holder)

	// 1. The control plane.
	nextZmeshd := map[string]any{"replicas": 2, "image": "zmesh/zmeshd:" + nextTag}
	l = startLoad(client, dst)
	t0 = time.Now()
	upgrade(t, map[string]any{"zmeshd": nextZmeshd, "ztunnel": prevZtunnel})
	rollout(t, "deployment/zmeshd")
	var newLeader string
	until(t, 45*time.Second, "the Lease held by a replica of the new release", func() error {
		newLeader = leaseHolder(t)
		if slices.Contains(oldZmeshd, newLeader) || !slices.Contains(podNames(t, "app=zmeshd"), newLeader) {
			return fmt.Errorf("held by %q; old replicas %v", newLeader, oldZmeshd)
		}
		return nil
	})
	time.Sleep(time.Second)
	t1 = time.Now()
	l.Stop()
	ok, failed = l.Between(t0, t1)
	t.Logf("zmeshd rolled to %s (replicas %v -> %v), leader %s -> %s, in %s: %d new connections answered, %d failed",
		nextTag, oldZmeshd, podNames(t, "app=zmeshd"), holder, newLeader, t1.Sub(t0).Round(100*time.Millisecond), ok, len(failed))
	if len(failed) > 0 || ok == 0 {
		t.Errorf("connections failed while zmeshd rolled:%s", cluster.DescribeFailed(failed))
	}
	for _, n := range mesh.Nodes {
		if img := ztunnelImage(t, n.Name); img != "zmesh/ztunnel:"+prevTag {
			t.Fatalf("%s runs ztunnel %q, want the old release's", n.Name, img)
		}
	}

	// The new leader writes status, and the old release's ztunnels take
	// the new control plane's policy.
	deny := `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-client, namespace: upgrade}
spec:
  selector: {matchLabels: {app: server}}
  action: DENY
  rules:
  - from:
    - source: {principals: [cluster.local/ns/upgrade/sa/client]}
`
	if out, err := mesh.Env.KubectlRun(t.Context(), deny, "apply", "-f", "-"); err != nil {
		t.Fatalf("apply the DENY: %v: %s", err, out)
	}
	until(t, 30*time.Second, "the old release's ztunnels refuse client -> server", func() error {
		if _, _, err := client.Echo(t.Context(), dst); err == nil {
			return fmt.Errorf("still answered")
		}
		return nil
	})
	var status string
	until(t, 30*time.Second, "deny-client's status written by the new leader", func() error {
		out, err := mesh.Kubectl(t.Context(), "get", "authorizationpolicy", "-n", "upgrade", "deny-client", "-o",
			"jsonpath={.status.conditions[0].type}={.status.conditions[0].status} ({.status.conditions[0].reason})")
		if status = out; err != nil || !strings.HasPrefix(out, "ZtunnelAccepted=True") {
			return fmt.Errorf("status %q: %v", out, err)
		}
		return nil
	})
	if n := runningExe(prevBin); n != len(mesh.Nodes) {
		t.Errorf("%d processes run %s while the DENY was enforced, want one per node (%d)", n, prevBin, len(mesh.Nodes))
	}
	t.Logf("ztunnels %s (commit %s, one release behind zmeshd %s) enforce a DENY zmeshd sent; its status from leader %s: %s",
		prevTag, prevZtunnelCommit[:12], nextTag, newLeader, status)
	mustKubectl(t, "delete", "authorizationpolicy", "-n", "upgrade", "deny-client")
	until(t, 30*time.Second, "client -> server answered again", func() error {
		_, _, err := client.Echo(t.Context(), dst)
		return err
	})

	// 2. The data plane.
	w := watchZtunnels(t)
	l = startLoad(client, dst)
	time.Sleep(500 * time.Millisecond)
	t0 = time.Now()
	upgrade(t, map[string]any{"zmeshd": nextZmeshd, "ztunnel": map[string]any{"image": "zmesh/ztunnel:" + nextTag}})
	rollout(t, "daemonset/ztunnel")
	waitZtunnels(t, "zmesh/ztunnel:"+nextTag, "the new release")
	time.Sleep(time.Second)
	t1 = time.Now()
	l.Stop()
	surge, order := w.stop()
	ok, failed = l.Between(t0, t1)
	if n := runningExe(prevBin); n != 0 {
		t.Errorf("%d processes still run the previous release's %s", n, prevBin)
	}
	t.Logf("ztunnel rolled from %s to %s node by node (%s), in %s: %d new connections answered, %d failed (slowest %s)",
		prevTag, nextTag, strings.Join(order, ", then "), t1.Sub(t0).Round(100*time.Millisecond), ok, len(failed), l.Slowest(t0, t1))
	if len(failed) > 0 || ok == 0 {
		t.Errorf("connections failed while ztunnel rolled:%s", cluster.DescribeFailed(failed))
	}
	if surge > 1 {
		t.Errorf("%d nodes had an old and a new ztunnel pod at once, want one at a time (maxSurge 1)", surge)
	}
	if len(order) != len(mesh.Nodes) {
		t.Errorf("a new ztunnel pod started beside the old one on %v, want every node once", order)
	}
}

// upgrade is UpgradeChart with the suite's values and these over them.
func upgrade(t *testing.T, values map[string]any) {
	t.Helper()
	if err := mesh.UpgradeChart(t.Context(), values); err != nil {
		t.Fatal(err)
	}
	t.Logf("upgraded the release with %v", values)
}

func rollout(t *testing.T, workload string) {
	t.Helper()
	if out, err := mesh.Kubectl(t.Context(), "-n", "istio-system", "rollout", "status", workload, "--timeout=180s"); err != nil {
		t.Fatalf("rollout of %s: %v: %s", workload, err, out)
	}
}

// podNames lists istio-system's pods of the selector that are not being
// deleted.
func podNames(t *testing.T, selector string) []string {
	t.Helper()
	pods, err := mesh.Env.Client.CoreV1().Pods("istio-system").List(t.Context(), metav1.ListOptions{LabelSelector: selector})
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, p := range pods.Items {
		if p.DeletionTimestamp == nil {
			out = append(out, p.Name)
		}
	}
	slices.Sort(out)
	return out
}

// leaseHolder is the holder of zmeshd's leader election Lease.
func leaseHolder(t *testing.T) string {
	t.Helper()
	l, err := mesh.Env.Client.CoordinationV1().Leases("istio-system").Get(t.Context(), "zmeshd", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if l.Spec.HolderIdentity == nil {
		return ""
	}
	return *l.Spec.HolderIdentity
}

// waitZtunnels waits until every node runs only a ztunnel of image, that
// of release.
func waitZtunnels(t *testing.T, image, release string) {
	t.Helper()
	until(t, 60*time.Second, "every node runs only a ztunnel of "+release, func() error {
		for _, n := range mesh.Nodes {
			if img := ztunnelImage(t, n.Name); img != image {
				return fmt.Errorf("%s runs %q", n.Name, img)
			}
		}
		return nil
	})
}

// ztunnelImage is the image of the node's ztunnel pods, "" unless there is
// exactly one.
func ztunnelImage(t *testing.T, node string) string {
	t.Helper()
	pods, err := mesh.Env.Client.CoreV1().Pods("istio-system").List(t.Context(), metav1.ListOptions{
		LabelSelector: "app=ztunnel", FieldSelector: "spec.nodeName=" + node})
	if err != nil {
		t.Fatal(err)
	}
	if len(pods.Items) != 1 {
		return ""
	}
	return pods.Items[0].Spec.Containers[0].Image
}

// ztunnelWatch follows the ztunnel pods as they come and go.
type ztunnelWatch struct {
	w    watch.Interface
	done chan struct{}
	mu   sync.Mutex
	// surge is the most nodes that had two ztunnel pods not being deleted
	// at once; order the nodes in the order they first had two.
	surge int
	order []string
}

func watchZtunnels(t *testing.T) *ztunnelWatch {
	t.Helper()
	w, err := mesh.Env.Client.CoreV1().Pods("istio-system").Watch(t.Context(), metav1.ListOptions{LabelSelector: "app=ztunnel"})
	if err != nil {
		t.Fatal(err)
	}
	zw := &ztunnelWatch{w: w, done: make(chan struct{})}
	go func() {
		defer close(zw.done)
		// As the DaemonSet controller counts them: a pod being deleted
		// (draining on its node) no longer holds the node's place.
		node := map[string]string{}
		for ev := range w.ResultChan() {
			p, ok := ev.Object.(*corev1.Pod)
			if !ok {
				continue
			}
			if ev.Type == watch.Deleted || p.DeletionTimestamp != nil {
				delete(node, string(p.UID))
			} else if p.Spec.NodeName != "" {
				node[string(p.UID)] = p.Spec.NodeName
			}
			per := map[string]int{}
			for _, n := range node {
				per[n]++
			}
			zw.mu.Lock()
			surging := 0
			for n, c := range per {
				if c > 1 {
					surging++
					if !slices.Contains(zw.order, n) {
						zw.order = append(zw.order, n)
					}
				}
			}
			zw.surge = max(zw.surge, surging)
			zw.mu.Unlock()
		}
	}()
	return zw
}

func (zw *ztunnelWatch) stop() (surge int, order []string) {
	zw.w.Stop()
	<-zw.done
	zw.mu.Lock()
	defer zw.mu.Unlock()
	return zw.surge, zw.order
}

// startLoad opens a new connection from one pod to dst every 10 ms, each
// given 3 s to connect and echo, and records each outcome.
func startLoad(from *cluster.Pod, dst netip.AddrPort) *cluster.Load {
	return cluster.StartLoad(from, dst, 10*time.Millisecond, 3*time.Second)
}
