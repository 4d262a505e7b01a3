package deploy

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	authzv1 "k8s.io/api/authorization/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/zmesh/zmesh/internal/kubetest"
)

var (
	env *kubetest.Env
	// reviewer makes SubjectAccessReviews without client-side throttling:
	// there are a hundred of them.
	reviewer kubernetes.Interface
)

func TestMain(m *testing.M) {
	code := func() int {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
		defer cancel()
		var err error
		if env, err = kubetest.Start(ctx); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer env.Stop()
		cfg := rest.CopyConfig(env.Config)
		cfg.QPS, cfg.Burst = -1, 0
		if reviewer, err = kubernetes.NewForConfig(cfg); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		// Both tests need the manifests applied; they are what is tested.
		if out, err := env.KubectlRun(ctx, "", "apply", "--server-side", "-f", "crds/"); err != nil {
			fmt.Fprintln(os.Stderr, out, err)
			return 1
		}
		if out, err := env.KubectlRun(ctx, "", "apply", "-f", "rbac/"); err != nil {
			fmt.Fprintln(os.Stderr, out, err)
			return 1
		}
		return m.Run()
	}()
	os.Exit(code)
}

// TestCRDsMatchPinnedModules regenerates the CRDs and compares: the
// committed copies are those of the module versions in go.mod.
func TestCRDsMatchPinnedModules(t *testing.T) {
	out := t.TempDir()
	cmd := exec.CommandContext(t.Context(), "bash", "gen-crds.sh", out)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("gen-crds.sh: %v\n%s", err, b)
	}
	want, _ := filepath.Glob(filepath.Join(out, "*.yaml"))
	got, _ := filepath.Glob("crds/*.yaml")
	if len(got) != len(want) {
		t.Fatalf("crds/ has %d files, the modules give %d: run make generate-crds", len(got), len(want))
	}
	for _, w := range want {
		a, err := os.ReadFile(w)
		if err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(filepath.Join("crds", filepath.Base(w)))
		if err != nil {
			t.Fatalf("%v: run make generate-crds", err)
		}
		if !bytes.Equal(a, b) {
			t.Errorf("crds/%s differs from the pinned module's: run make generate-crds", filepath.Base(w))
		}
	}
}

// TestCRDsValidate checks that the installed CRDs validate what users
// apply: Istio's docs' YAML is accepted, a typo refused.
func TestCRDsValidate(t *testing.T) {
	ctx := t.Context()
	for _, crd := range []string{"authorizationpolicies.security.istio.io", "peerauthentications.security.istio.io", "gateways.gateway.networking.k8s.io"} {
		if out, err := env.KubectlRun(ctx, "", "wait", "--for=condition=Established", "--timeout=60s", "crd/"+crd); err != nil {
			t.Fatal(out, err)
		}
	}
	for _, tc := range []struct {
		name, yaml string
		refusal    string // empty: accepted
	}{
		{name: "valid AuthorizationPolicy", yaml: `
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-sleep, namespace: default}
spec:
  selector: {matchLabels: {app: httpbin}}
  action: ALLOW
  rules:
  - from: [{source: {principals: ["cluster.local/ns/default/sa/sleep"]}}]
    to: [{operation: {ports: ["8080"]}}]
`},
		{name: "AuthorizationPolicy with action ALOW", refusal: "spec.action", yaml: `
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: typo, namespace: default}
spec:
  action: ALOW
`},
		{name: "AuthorizationPolicy v1beta1", yaml: `
apiVersion: security.istio.io/v1beta1
kind: AuthorizationPolicy
metadata: {name: deny-all, namespace: default}
spec: {}
`},
		{name: "PeerAuthentication STRICT", yaml: `
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: default}
spec:
  mtls: {mode: STRICT}
`},
		{name: "PeerAuthentication with mode STRIKT", refusal: "spec.mtls.mode", yaml: `
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: typo, namespace: default}
spec:
  mtls: {mode: STRIKT}
`},
		{name: "waypoint Gateway", yaml: `
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata:
  labels: {istio.io/waypoint-for: service}
  name: waypoint
  namespace: default
spec:
  gatewayClassName: istio-waypoint
  listeners:
  - name: mesh
    port: 15008
    protocol: HBONE
`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, err := env.KubectlRun(ctx, tc.yaml, "apply", "-f", "-")
			switch {
			case tc.refusal == "" && err != nil:
				t.Fatalf("refused: %v", err)
			case tc.refusal != "" && err == nil:
				t.Fatalf("accepted: %s", out)
			case tc.refusal != "" && !strings.Contains(out, tc.refusal):
				t.Fatalf("refusal does not name %s: %s", tc.refusal, out)
			}
			t.Logf("%s", strings.TrimSpace(out))
		})
	}
}

// access is one request a component makes of the API server.
type access struct {
	verb, group, resource, subresource, namespace string
}

func (a access) String() string {
	r := a.resource
	if a.subresource != "" {
		r += "/" + a.subresource
	}
	if a.group != "" {
		r += "." + a.group
	}
	if a.namespace != "" {
		r = a.namespace + "/" + r
	}
	return a.verb + " " + r
}

// TestRBAC asks the API server (SubjectAccessReview) whether each
// component's service account may make the requests its code makes, and
// may not make others, as deploy/rbac grants them.
func TestRBAC(t *testing.T) { checkRBAC(t, "istio-system") }

// checkRBAC runs the reviews of TestRBAC for the components' service
// accounts in namespace ns.
func checkRBAC(t *testing.T, ns string) {
	list := func(verbs, group, resource, sub, ns string) []access {
		var out []access
		for _, v := range strings.Fields(verbs) {
			out = append(out, access{v, group, resource, sub, ns})
		}
		return out
	}
	var zmeshdAllowed []access
	for _, r := range []string{"pods", "namespaces", "services", "serviceaccounts", "nodes"} {
		zmeshdAllowed = append(zmeshdAllowed, list("get list watch", "", r, "", "")...)
	}
	for _, r := range [][2]string{{"security.istio.io", "authorizationpolicies"}, {"security.istio.io", "peerauthentications"}, {"security.istio.io", "requestauthentications"}, {"networking.istio.io", "serviceentries"}, {"networking.istio.io", "virtualservices"}, {"networking.istio.io", "destinationrules"}, {"gateway.networking.k8s.io", "gateways"}, {"gateway.networking.k8s.io", "gatewayclasses"}, {"gateway.networking.k8s.io", "httproutes"}, {"gateway.networking.k8s.io", "grpcroutes"}} {
		zmeshdAllowed = append(zmeshdAllowed, list("get list watch", r[0], r[1], "", "")...)
		zmeshdAllowed = append(zmeshdAllowed, list("update patch", r[0], r[1], "status", "apps")...)
	}
	zmeshdAllowed = append(zmeshdAllowed, list("create", "gateway.networking.k8s.io", "gatewayclasses", "", "")...)
	zmeshdAllowed = append(zmeshdAllowed, list("update", "gateway.networking.k8s.io", "gateways", "finalizers", "apps")...)
	zmeshdAllowed = append(zmeshdAllowed, list("get list watch create update patch delete", "apps", "deployments", "", "apps")...)
	zmeshdAllowed = append(zmeshdAllowed, list("get list watch create update patch delete", "", "services", "", "apps")...)
	zmeshdAllowed = append(zmeshdAllowed, list("get list watch create update patch delete", "", "serviceaccounts", "", "apps")...)
	zmeshdAllowed = append(zmeshdAllowed, list("create", "authentication.k8s.io", "tokenreviews", "", "")...)
	zmeshdAllowed = append(zmeshdAllowed, list("get list watch create update patch", "coordination.k8s.io", "leases", "", ns)...)
	zmeshdAllowed = append(zmeshdAllowed, list("create patch", "", "events", "", ns)...)

	agentAllowed := append(list("get list watch patch", "", "pods", "", "apps"), list("get list watch", "", "namespaces", "", "")...)

	for _, tc := range []struct {
		sa      string
		allowed []access
		denied  []access
	}{
		{sa: "zmeshd", allowed: zmeshdAllowed, denied: []access{
			{"get", "", "secrets", "", "apps"},
			{"patch", "", "pods", "", "apps"},
			{"update", "gateway.networking.k8s.io", "gateways", "", "apps"},
			{"delete", "security.istio.io", "authorizationpolicies", "", "apps"},
			{"create", "coordination.k8s.io", "leases", "", "apps"},
			{"create", "", "pods", "", "apps"},
		}},
		{sa: "ztunnel", denied: []access{
			{"get", "", "pods", "", "apps"},
			{"list", "", "pods", "", ""},
			{"create", "authentication.k8s.io", "tokenreviews", "", ""},
			{"get", "", "secrets", "", ns},
		}},
		{sa: "zmesh-cni-agent", allowed: agentAllowed, denied: []access{
			{"update", "", "pods", "", "apps"},
			{"delete", "", "pods", "", "apps"},
			{"patch", "", "namespaces", "", ""},
			{"get", "", "secrets", "", "apps"},
			{"create", "apps", "deployments", "", "apps"},
		}},
	} {
		t.Run(tc.sa, func(t *testing.T) {
			for _, a := range tc.allowed {
				if ok, reason := review(t, ns, tc.sa, a); !ok {
					t.Errorf("%s may not %s: %s", tc.sa, a, reason)
				}
			}
			for _, a := range tc.denied {
				if ok, _ := review(t, ns, tc.sa, a); ok {
					t.Errorf("%s may %s", tc.sa, a)
				}
			}
			t.Logf("%s: %d allowed, %d denied as expected", tc.sa, len(tc.allowed), len(tc.denied))
		})
	}
}

func review(t *testing.T, ns, sa string, a access) (bool, string) {
	t.Helper()
	r, err := reviewer.AuthorizationV1().SubjectAccessReviews().Create(t.Context(), &authzv1.SubjectAccessReview{
		Spec: authzv1.SubjectAccessReviewSpec{
			User:   "system:serviceaccount:" + ns + ":" + sa,
			Groups: []string{"system:serviceaccounts", "system:serviceaccounts:" + ns, "system:authenticated"},
			ResourceAttributes: &authzv1.ResourceAttributes{
				Verb: a.verb, Group: a.group, Resource: a.resource, Subresource: a.subresource, Namespace: a.namespace,
			},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return r.Status.Allowed, r.Status.Reason + r.Status.EvaluationError
}
