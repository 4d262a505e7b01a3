package deploy

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"helm.sh/helm/v4/pkg/action"
	"helm.sh/helm/v4/pkg/chart/v2/loader"
	"helm.sh/helm/v4/pkg/kube"
	"k8s.io/cli-runtime/pkg/genericclioptions"

	"github.com/zmesh/zmesh/deploy/render"
)

// TestChartServerSideDryRun sends everything the chart renders, with its
// defaults and with other values in another namespace, to the API server
// as a server-side apply dry run: each object must pass the server's
// schema (strict field validation, so a misspelt field fails) and
// admission, as `helm install` would send it.
func TestChartServerSideDryRun(t *testing.T) {
	ctx := t.Context()
	for _, tc := range []struct {
		name, namespace string
		values          map[string]any
	}{
		{name: "defaults", namespace: "istio-system"},
		{name: "custom", namespace: "zmesh-dryrun", values: map[string]any{
			"createNamespace": true,
			"global":          map[string]any{"hub": "registry.example/mesh", "tag": "v1", "imagePullSecrets": []any{"regcred"}, "trustDomain": "corp.example"},
			"zmeshd": map[string]any{"replicas": 3, "caSecretName": "corp-ca", "tolerations": []any{map[string]any{"key": "infra", "operator": "Exists"}},
				"affinity": map[string]any{"podAntiAffinity": map[string]any{"preferredDuringSchedulingIgnoredDuringExecution": []any{
					map[string]any{"weight": 100, "podAffinityTerm": map[string]any{"topologyKey": "kubernetes.io/hostname"}}}}}},
			"ztunnel": map[string]any{"drainGraceSeconds": 10, "meshCIDRs": "10.0.0.0/16", "priorityClassName": ""},
			"cni":     map[string]any{"binDir": "/var/lib/rancher/k3s/data/cni", "confDir": "/var/lib/rancher/k3s/agent/etc/cni/net.d"},
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ms, err := render.Render(render.Options{Namespace: tc.namespace, Values: tc.values, IncludeCRDs: true})
			if err != nil {
				t.Fatal(err)
			}
			if tc.namespace != "istio-system" {
				// A dry run creates nothing: the namespace the objects go
				// in must exist.
				createNamespace(ctx, t, tc.namespace)
			}
			out, err := env.KubectlRun(ctx, string(render.YAML(ms)), "apply", "--server-side", "--dry-run=server", "--validate=strict", "-f", "-")
			if err != nil {
				t.Fatalf("dry run refused: %v\n%s", err, out)
			}
			applied := strings.Count(out, "(server dry run)")
			if applied != len(ms) {
				t.Fatalf("%d objects rendered, %d accepted:\n%s", len(ms), applied, out)
			}
			t.Logf("%d objects accepted by the API server (server-side apply, dry run)", applied)
		})
	}
}

// TestChartRBAC installs the RBAC the chart renders (in a namespace of its
// own, so that it does not borrow deploy/rbac's grants) and asks the API
// server the same questions as TestRBAC: the chart grants each component
// what its code needs and nothing of what it must not do.
func TestChartRBAC(t *testing.T) {
	const ns = "zmesh-chart"
	ctx := t.Context()
	ms, err := render.Render(render.Options{Namespace: ns})
	if err != nil {
		t.Fatal(err)
	}
	var rbac []render.Manifest
	for _, m := range ms {
		switch m.Kind {
		case "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding":
			rbac = append(rbac, m)
		}
	}
	if len(rbac) != 9 {
		t.Fatalf("the chart renders %d RBAC objects, want 9 (3 service accounts; zmeshd's ClusterRole, Role and bindings; the agent's ClusterRole and binding)", len(rbac))
	}
	createNamespace(ctx, t, ns)
	yaml := string(render.YAML(rbac))
	if out, err := env.KubectlRun(ctx, yaml, "apply", "-f", "-"); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	t.Cleanup(func() {
		c, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		env.KubectlRun(c, yaml, "delete", "--ignore-not-found", "-f", "-")
	})
	checkRBAC(t, ns)
}

// createNamespace creates ns for the test and deletes it afterwards.
func createNamespace(ctx context.Context, t *testing.T, ns string) {
	t.Helper()
	if out, err := env.KubectlRun(ctx, "", "create", "namespace", ns); err != nil {
		t.Fatalf("create namespace %s: %v\n%s", ns, err, out)
	}
	t.Cleanup(func() {
		c, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if out, err := env.KubectlRun(c, "", "delete", "namespace", ns, "--wait=false"); err != nil {
			t.Log(fmt.Sprintf("delete namespace %s: %v\n%s", ns, err, out))
		}
	})
}

// TestChartHelmInstall installs the chart with Helm's own install action
// (the SDK behind `helm install`, server-side apply) into a namespace of
// its own: the CRDs and everything else go in as one release, the release
// fits in its Secret, and `helm uninstall` removes the components but
// keeps the CRDs (users' objects live in them). The CRDs exist already
// (TestMain applied deploy/crds): Helm leaves existing CRDs as they are.
func TestChartHelmInstall(t *testing.T) {
	const ns = "zmesh-helm"
	ctx := t.Context()
	ch, err := loader.LoadDir(render.ChartDir())
	if err != nil {
		t.Fatal(err)
	}
	flags := genericclioptions.NewConfigFlags(false)
	flags.KubeConfig = &env.Kubeconfig
	flags.Namespace = new(ns)
	cfg := action.NewConfiguration()
	if err := cfg.Init(flags, ns, "secret"); err != nil {
		t.Fatal(err)
	}
	install := action.NewInstall(cfg)
	install.ReleaseName, install.Namespace, install.CreateNamespace = "zmesh", ns, true
	install.WaitStrategy = kube.HookOnlyStrategy
	t.Cleanup(func() {
		c, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		env.KubectlRun(c, "", "delete", "namespace", ns, "--ignore-not-found", "--wait=false")
	})
	if _, err := install.RunWithContext(ctx, ch, map[string]any{}); err != nil {
		t.Fatalf("helm install: %v", err)
	}
	for _, obj := range []string{"daemonset/ztunnel", "daemonset/zmesh-cni-agent", "deployment/zmeshd", "service/zmeshd", "poddisruptionbudget/zmeshd", "role/zmeshd"} {
		if out, err := env.KubectlRun(ctx, "", "-n", ns, "get", obj, "-o", "name"); err != nil {
			t.Errorf("after helm install, %s: %v\n%s", obj, err, out)
		}
	}
	out, err := env.KubectlRun(ctx, "", "-n", ns, "get", "secret", "-l", "owner=helm,name=zmesh", "-o", "jsonpath={.items[0].data.release}")
	if err != nil {
		t.Fatalf("release secret: %v\n%s", err, out)
	}
	// The Secret's data is base64 of the gzipped release; the API server
	// refuses Secrets over 1 MiB.
	t.Logf("release Secret: %d bytes of data (limit 1048576)", len(out)*3/4)
	if len(out)*3/4 > 900_000 {
		t.Errorf("the release takes %d bytes of its Secret: too close to the 1 MiB limit", len(out)*3/4)
	}

	uninstall := action.NewUninstall(cfg)
	uninstall.WaitStrategy = kube.HookOnlyStrategy
	if _, err := uninstall.Run("zmesh"); err != nil {
		t.Fatalf("helm uninstall: %v", err)
	}
	if out, err := env.KubectlRun(ctx, "", "get", "crd", "httproutes.gateway.networking.k8s.io", "authorizationpolicies.security.istio.io", "-o", "name"); err != nil {
		t.Errorf("helm uninstall deleted CRDs: %v\n%s", err, out)
	}
	if out, err := env.KubectlRun(ctx, "", "-n", ns, "get", "daemonset/ztunnel", "deployment/zmeshd", "--ignore-not-found", "-o", "name"); err != nil || strings.TrimSpace(out) != "" {
		t.Errorf("after helm uninstall: %v\n%s", err, out)
	}
}
