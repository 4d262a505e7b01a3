package main

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/zmesh/zmesh/internal/kubetest"
	"github.com/zmesh/zmesh/internal/testutil"
	"github.com/zmesh/zmesh/ztunnel/state"
)

const kubePolicies = `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: web-from-client, namespace: shop}
spec:
  selector: {matchLabels: {app: web}}
  action: ALLOW
  rules: [{from: [{source: {principals: ["cluster.local/ns/shop/sa/client"]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: get-only, namespace: shop}
spec:
  selector: {matchLabels: {app: web}}
  action: ALLOW
  rules: [{to: [{operation: {methods: ["GET"]}}]}]
`

// TestKubernetesModeFeedsZtunnel runs zmeshd against a real API server:
// objects created with kubectl reach ztunnel's state over delta xDS, a pod
// is HBONE only once the agent's annotation says it is captured, and a
// policy ztunnel cannot enforce in full carries a status condition.
func TestKubernetesModeFeedsZtunnel(t *testing.T) {
	env := kubetest.ForTest(t)
	ctx := t.Context()
	env.MustKubectl(t, "", "apply", "--server-side", "-f", "../../deploy/crds/")
	if err := env.WaitEstablished(t.Context(), 60*time.Second, "authorizationpolicies.security.istio.io", "gateways.gateway.networking.k8s.io", "httproutes.gateway.networking.k8s.io"); err != nil {
		t.Fatal(err)
	}
	for _, ns := range []string{"istio-system", "shop"} {
		if _, err := env.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	env.MustKubectl(t, "", "label", "namespace", "shop", "istio.io/dataplane-mode=ambient")

	xdsAddr, monAddr := freePort(t), freePort(t)
	f, err := parseFlags([]string{"--kubeconfig", env.Kubeconfig, "--ca-dir", t.TempDir(),
		"--xds-address", xdsAddr, "--secure-address", "", "--monitoring-address", monAddr, "--log-level", "warn"})
	if err != nil {
		t.Fatal(err)
	}
	zctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- run(zctx, f) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
	waitReady(t, monAddr)

	cc, err := grpc.NewClient(xdsAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	store, _ := ztunnelStore(t, cc)

	// A running pod, as a kubelet would report it; not yet annotated.
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "shop", Labels: map[string]string{"app": "web"}},
		Spec:       corev1.PodSpec{NodeName: "node-a", ServiceAccountName: "default", Containers: []corev1.Container{{Name: "app", Image: "app"}}},
	}
	if pod, err = env.Client.CoreV1().Pods("shop").Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	pod.Status = corev1.PodStatus{Phase: corev1.PodRunning, PodIP: "10.1.0.5", PodIPs: []corev1.PodIP{{IP: "10.1.0.5"}},
		Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}}}
	start := time.Now()
	if pod, err = env.Client.CoreV1().Pods("shop").UpdateStatus(ctx, pod, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitStore(t, store, "pod web, not yet HBONE", func(s *state.Snapshot) bool {
		w := s.WorkloadsOnNode("node-a")
		return len(w) == 1 && w[0].Protocol.String() == "NONE"
	})
	t.Logf("pod status written -> workload in ztunnel's state: %s", time.Since(start).Round(time.Millisecond))

	// The agent's annotation turns it into an HBONE workload.
	start = time.Now()
	env.MustKubectl(t, "", "annotate", "pod", "-n", "shop", "web", "ambient.istio.io/redirection=enabled")
	waitStore(t, store, "pod web over HBONE", func(s *state.Snapshot) bool {
		w := s.WorkloadsOnNode("node-a")
		return len(w) == 1 && w[0].Protocol.String() == "HBONE"
	})
	t.Logf("annotation -> HBONE in ztunnel's state: %s", time.Since(start).Round(time.Millisecond))

	// Policies through kubectl, as a user applies them.
	path := filepath.Join(t.TempDir(), "policies.yaml")
	os.WriteFile(path, []byte(kubePolicies), 0o644)
	start = time.Now()
	env.MustKubectl(t, "", "apply", "-f", path)
	waitStore(t, store, "both policies, listed on web", func(s *state.Snapshot) bool {
		w := s.WorkloadsOnNode("node-a")
		return len(s.Policies()) == 2 && len(w) == 1 && len(w[0].Policies) == 2
	})
	t.Logf("kubectl apply -> policies in ztunnel's state: %s", time.Since(start).Round(time.Millisecond))

	// The L7 policy is sent fail-closed and says why in its status.
	deadline := time.Now().Add(15 * time.Second)
	for {
		out, err := env.KubectlRun(ctx, "", "get", "authorizationpolicy", "-n", "shop", "get-only", "-o", "jsonpath={.status.conditions[0].type}={.status.conditions[0].status}: {.status.conditions[0].message}")
		if err == nil && strings.HasPrefix(out, "ZtunnelAccepted=False") && strings.Contains(out, "waypoint") {
			t.Logf("get-only status: %s", out)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("get-only status = %q (%v), want ZtunnelAccepted=False naming a waypoint", out, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	out, err := env.KubectlRun(ctx, "", "get", "authorizationpolicy", "-n", "shop", "web-from-client", "-o", "jsonpath={.status.conditions[0].type}={.status.conditions[0].status}")
	if err != nil || out != "ZtunnelAccepted=True" {
		t.Errorf("web-from-client status = %q (%v), want ZtunnelAccepted=True", out, err)
	}

	// The leader publishes the mesh roots in every namespace.
	eventuallyKubectl(t, env, "istio-ca-root-cert in shop", func(out string) bool { return strings.HasPrefix(out, "-----BEGIN CERTIFICATE-----") },
		"get", "configmap", "-n", "shop", "istio-ca-root-cert", "-o", `jsonpath={.data.root-cert\.pem}`)

	// An HTTPRoute on a Service no waypoint serves says so in its status.
	route := `apiVersion: v1
kind: Service
metadata: {name: cart, namespace: shop}
spec: {selector: {app: cart}, ports: [{name: http, port: 80}]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: cart, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: cart, port: 80}]
  rules: [{backendRefs: [{name: cart, port: 80}]}]
`
	env.MustKubectl(t, route, "apply", "-f", "-")
	eventuallyKubectl(t, env, "HTTPRoute cart's parent status", func(out string) bool {
		return strings.HasPrefix(out, "istio.io/gateway-controller Accepted=False NoMatchingParent")
	}, "get", "httproute", "-n", "shop", "cart", "-o", "jsonpath={.status.parents[0].controllerName} {.status.parents[0].conditions[0].type}={.status.parents[0].conditions[0].status} {.status.parents[0].conditions[0].reason}")

	// Deleting the pod removes the workload.
	if err := env.Client.CoreV1().Pods("shop").Delete(ctx, "web", metav1.DeleteOptions{GracePeriodSeconds: new(int64)}); err != nil {
		t.Fatal(err)
	}
	waitStore(t, store, "no workload", func(s *state.Snapshot) bool { return len(s.Workloads()) == 0 })
}

// eventuallyKubectl runs kubectl args until ok accepts its output.
func eventuallyKubectl(t *testing.T, env *kubetest.Env, what string, ok func(string) bool, args ...string) {
	t.Helper()
	testutil.Eventually(t, 20*time.Second, what, func() error {
		out, err := env.KubectlRun(t.Context(), "", args...)
		if err == nil && !ok(out) {
			err = fmt.Errorf("%q", out)
		}
		return err
	})
}

func waitReady(t *testing.T, monAddr string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := http.Get("http://" + monAddr + "/ready")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("zmeshd not ready: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestLeaderElectionHandsOver runs two replicas: both serve xDS, only the
// leader writes status, and when it stops the other takes the lease and
// writes the status of what changed since.
func TestLeaderElectionHandsOver(t *testing.T) {
	env := kubetest.ForTest(t)
	ctx := t.Context()
	env.MustKubectl(t, "", "apply", "--server-side", "-f", "../../deploy/crds/")
	if err := env.WaitEstablished(t.Context(), 60*time.Second, "authorizationpolicies.security.istio.io"); err != nil {
		t.Fatal(err)
	}
	for _, ns := range []string{"istio-system", "shop"} {
		if _, err := env.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	start := func(name string) (xdsAddr string, stop func()) {
		xdsAddr, monAddr := freePort(t), freePort(t)
		f, err := parseFlags([]string{"--kubeconfig", env.Kubeconfig, "--ca-dir", t.TempDir(), "--identity", name,
			"--xds-address", xdsAddr, "--secure-address", "", "--monitoring-address", monAddr, "--log-level", "warn"})
		if err != nil {
			t.Fatal(err)
		}
		zctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- run(zctx, f) }()
		var once bool
		stop = func() {
			if once {
				return
			}
			once = true
			cancel()
			if err := <-done; err != nil {
				t.Errorf("%s: %v", name, err)
			}
		}
		t.Cleanup(stop)
		waitReady(t, monAddr)
		return xdsAddr, stop
	}
	holder := func() string {
		l, err := env.Client.CoordinationV1().Leases("istio-system").Get(ctx, "zmeshd", metav1.GetOptions{})
		if err != nil || l.Spec.HolderIdentity == nil {
			return ""
		}
		return *l.Spec.HolderIdentity
	}
	waitHolder := func(want string) time.Duration {
		start := time.Now()
		for holder() != want {
			if time.Since(start) > 30*time.Second {
				t.Fatalf("lease held by %q, want %q", holder(), want)
			}
			time.Sleep(50 * time.Millisecond)
		}
		return time.Since(start)
	}
	statusOf := func(name string) string {
		out, _ := env.KubectlRun(ctx, "", "get", "authorizationpolicy", "-n", "shop", name, "-o", "jsonpath={.status.conditions[0].type}={.status.conditions[0].status}")
		return out
	}
	waitStatus := func(name, want string) {
		deadline := time.Now().Add(20 * time.Second)
		for statusOf(name) != want {
			if time.Now().After(deadline) {
				t.Fatalf("status of %s = %q, want %q", name, statusOf(name), want)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	policy := func(name string) string {
		return "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: " + name + ", namespace: shop}\nspec:\n  rules: [{to: [{operation: {methods: [GET]}}]}]\n"
	}
	apply := func(yaml string) {
		path := filepath.Join(t.TempDir(), "p.yaml")
		os.WriteFile(path, []byte(yaml), 0o644)
		env.MustKubectl(t, "", "apply", "-f", path)
	}

	_, stopA := start("zmeshd-a")
	waitHolder("zmeshd-a")
	xdsB, _ := start("zmeshd-b")
	cc, err := grpc.NewClient(xdsB, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	store, _ := ztunnelStore(t, cc)

	apply(policy("first"))
	waitStatus("first", "ZtunnelAccepted=False")
	if h := holder(); h != "zmeshd-a" {
		t.Fatalf("lease moved to %q before the leader stopped", h)
	}
	waitStore(t, store, "policy first served by the standby replica", func(s *state.Snapshot) bool { return len(s.Policies()) == 1 })

	stopA()
	took := waitHolder("zmeshd-b")
	t.Logf("leader zmeshd-a stopped: zmeshd-b holds the lease %s later", took.Round(time.Millisecond))
	apply(policy("second"))
	waitStatus("second", "ZtunnelAccepted=False")
	waitStore(t, store, "policy second", func(s *state.Snapshot) bool { return len(s.Policies()) == 2 })
}
