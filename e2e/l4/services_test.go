package l4

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// TestServices: pod to pod on the same node and across nodes; a Service
// VIP balanced over endpoints on both nodes; an endpoint turning NotReady
// or deleted gets no new connections.
func TestServices(t *testing.T) {
	apply(t, "services.yaml", "svc")
	pods := waitPods(t, "svc", 4)
	client := pods["client"]
	eventually(t, 15*time.Second, "all four pods captured", func() bool {
		for name := range pods {
			if !redirected(t, "svc", name) {
				return false
			}
		}
		return true
	})
	reach(t, client, pods["echo-1"].Addr(echoPort), true, "client -> echo-1 (same node, node-1)")
	reach(t, client, pods["echo-2"].Addr(echoPort), true, "client -> echo-2 (across nodes, node-2)")

	ip := strings.TrimSpace(kubectl(t, "get", "service", "-n", "svc", "echo", "-o", "jsonpath={.spec.clusterIP}"))
	vip := netip.AddrPortFrom(netip.MustParseAddr(ip), 9000)
	// The VIP works once zmeshd has pushed the service with its endpoints.
	reach(t, client, vip, true, "client -> service echo "+vip.String())
	counts := func(n int) (map[string]int, int) {
		per, failed := map[string]int{}, 0
		for range n {
			pod, _, err := client.Echo(t.Context(), vip)
			if err != nil {
				failed++
				continue
			}
			per[strings.TrimPrefix(pod, "svc/")]++
		}
		return per, failed
	}
	eventually(t, 15*time.Second, "the VIP answering from all three endpoints", func() bool {
		per, _ := counts(30)
		return len(per) == 3
	})
	per, failed := counts(90)
	t.Logf("90 new connections to %s: answered by %v, %d failed", vip, per, failed)
	if failed > 0 || per["echo-1"] == 0 || per["echo-2"] == 0 || per["echo-3"] == 0 {
		t.Errorf("VIP not balanced across the three endpoints on both nodes: %v, %d failed", per, failed)
	}

	// echo-3's readiness probe fails: the EndpointSlice says not ready.
	if err := pods["echo-3"].Node.Kubelet.SetReady(t.Context(), "svc", "echo-3", false); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	eventually(t, 15*time.Second, "echo-3 no longer chosen", func() bool {
		per, _ := counts(20)
		return per["echo-3"] == 0
	})
	t.Logf("echo-3 NotReady: out of rotation %s after its Ready condition turned False", time.Since(start).Round(time.Millisecond))
	per, failed = counts(60)
	t.Logf("60 new connections with echo-3 NotReady: %v, %d failed", per, failed)
	if per["echo-3"] > 0 || failed > 0 {
		t.Errorf("a NotReady endpoint got new connections or connections failed: %v, %d failed", per, failed)
	}

	// echo-2 deleted: the kubelet stops it, CNI DEL, the pod goes.
	start = time.Now()
	kubectl(t, "delete", "pod", "-n", "svc", "echo-2", "--wait=true")
	t.Logf("kubectl delete pod echo-2 returned after %s", time.Since(start).Round(time.Millisecond))
	eventually(t, 15*time.Second, "echo-2 no longer chosen", func() bool {
		per, _ := counts(20)
		return per["echo-2"] == 0
	})
	per, failed = counts(60)
	t.Logf("60 new connections after echo-2 was deleted: %v, %d failed", per, failed)
	if per["echo-2"] > 0 || failed > 0 || per["echo-1"] != 60 {
		t.Errorf("after deleting echo-2 and with echo-3 NotReady, want every connection on echo-1: %v, %d failed", per, failed)
	}
	if _, err := mesh.Env.Client.CoreV1().Pods("svc").Get(t.Context(), "echo-2", metav1.GetOptions{}); err == nil {
		t.Error("echo-2 still exists")
	}
}
