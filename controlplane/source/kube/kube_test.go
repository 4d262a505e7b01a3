package kube

import (
	"context"
	"testing"
	"time"

	istioclient "istio.io/client-go/pkg/clientset/versioned"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	gatewayclient "sigs.k8s.io/gateway-api/pkg/client/clientset/versioned"

	"github.com/zmesh/zmesh/controlplane/model"
	"github.com/zmesh/zmesh/internal/kubetest"
)

func TestSnapshotsFollowTheAPIServer(t *testing.T) {
	env := kubetest.ForTest(t)
	if out, err := env.KubectlRun(t.Context(), "", "apply", "--server-side", "-f", "../../../deploy/crds/"); err != nil {
		t.Fatal(out, err)
	}
	if out, err := env.KubectlRun(t.Context(), "", "wait", "--for=condition=Established", "--timeout=60s",
		"crd/authorizationpolicies.security.istio.io", "crd/virtualservices.networking.istio.io", "crd/httproutes.gateway.networking.k8s.io"); err != nil {
		t.Fatal(out, err)
	}
	snaps := runSource(t, env)

	waitFor := func(what string, cond func(*model.Snapshot) bool) *model.Snapshot {
		t.Helper()
		deadline := time.After(20 * time.Second)
		for {
			select {
			case s := <-snaps:
				if cond(s) {
					return s
				}
			case <-deadline:
				t.Fatalf("no snapshot with %s", what)
			}
		}
	}
	waitFor("the default namespace", func(s *model.Snapshot) bool { return s.Namespace("default") != nil })

	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "shop", Labels: map[string]string{"istio.io/dataplane-mode": "ambient"}}}
	if _, err := env.Client.CoreV1().Namespaces().Create(t.Context(), ns, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "default", Labels: map[string]string{"app": "web"}},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "app"}}},
	}
	if _, err := env.Client.CoreV1().Pods("default").Create(t.Context(), pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	s := waitFor("namespace shop and pod web", func(s *model.Snapshot) bool {
		return s.Namespace("shop") != nil && len(s.Pods) == 1
	})
	if s.Namespace("shop").Labels["istio.io/dataplane-mode"] != "ambient" {
		t.Errorf("namespace labels = %v", s.Namespace("shop").Labels)
	}
	if len(s.Pods[0].ManagedFields) != 0 {
		t.Errorf("managed fields kept in the cache")
	}

	// Label change on the namespace: a new snapshot says so.
	ns.Labels = nil
	if _, err := env.Client.CoreV1().Namespaces().Update(t.Context(), ns, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor("namespace shop unlabelled", func(s *model.Snapshot) bool {
		n := s.Namespace("shop")
		return n != nil && n.Labels["istio.io/dataplane-mode"] == ""
	})

	// The Istio and Gateway API kinds, applied as a user would.
	if out, err := env.KubectlRun(t.Context(), istioObjects, "apply", "-f", "-"); err != nil {
		t.Fatal(out, err)
	}
	s = waitFor("the policy, the VirtualService and the HTTPRoute", func(s *model.Snapshot) bool {
		return len(s.AuthorizationPolicies) == 1 && len(s.VirtualServices) == 1 && len(s.HTTPRoutes) == 1
	})
	if s.AuthorizationPolicies[0].Name != "allow-nothing" || s.AuthorizationPolicies[0].Namespace != "shop" {
		t.Errorf("policy = %s/%s", s.AuthorizationPolicies[0].Namespace, s.AuthorizationPolicies[0].Name)
	}
}

const istioObjects = `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-nothing, namespace: shop}
spec: {}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: shop}
spec: {hosts: [reviews], http: [{route: [{destination: {host: reviews}}]}]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: reviews, namespace: shop}
spec: {parentRefs: [{name: reviews, kind: Service, group: ""}]}
`

// runSource runs a Source on env's API server, as its admin, until the
// test ends, and returns the snapshots it publishes.
func runSource(t *testing.T, env *kubetest.Env) <-chan *model.Snapshot {
	src := &Source{
		Kube:    env.Client,
		Istio:   istioclient.NewForConfigOrDie(env.Config),
		Gateway: gatewayclient.NewForConfigOrDie(env.Config),
	}
	snaps := make(chan *model.Snapshot, 100)
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- src.Run(ctx, func(s *model.Snapshot) { snaps <- s }) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
	return snaps
}
