package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	kresource "k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/zmesh/zmesh/internal/kubetest"
)

// ownedObjects lists every object in the cluster that carries the install
// label of namespace ns, by "Kind namespace/name", across every kind the
// API server serves.
func ownedObjects(t *testing.T, env *kubetest.Env, ns string) []string {
	t.Helper()
	dyn, err := dynamic.NewForConfig(env.Config)
	if err != nil {
		t.Fatal(err)
	}
	lists, err := env.Client.Discovery().ServerPreferredResources()
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, l := range lists {
		gv, err := schema.ParseGroupVersion(l.GroupVersion)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range l.APIResources {
			if strings.Contains(r.Name, "/") || !strings.Contains(strings.Join(r.Verbs, ","), "list") {
				continue
			}
			items, err := dyn.Resource(gv.WithResource(r.Name)).List(t.Context(), metav1.ListOptions{LabelSelector: ownerLabel + "=" + ns})
			if err != nil {
				continue // e.g. a CRD deleted a moment ago
			}
			for _, it := range items.Items {
				out = append(out, r.Kind+" "+it.GetNamespace()+"/"+it.GetName())
			}
		}
	}
	return out
}

func withoutCRDs(objs []string) []string {
	var out []string
	for _, o := range objs {
		if !strings.HasPrefix(o, "CustomResourceDefinition ") {
			out = append(out, o)
		}
	}
	return out
}

// TestInstallVerifyUninstall installs the chart on a real API server
// (etcd + apiserver + controller-manager + scheduler, no kubelet: no pod
// ever runs), checks what verify-install reports, and uninstalls.
func TestInstallVerifyUninstall(t *testing.T) {
	env := kubetest.ForTest(t)
	ctx := t.Context()
	run := func(args ...string) (string, string, int) {
		t.Helper()
		return zmeshctl(t, append(args, "--kubeconfig", env.Kubeconfig)...)
	}

	// A Ready node, so the DaemonSets want a pod that never runs.
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-a", Labels: map[string]string{"kubernetes.io/os": "linux"}}}
	node, err := env.Client.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	node.Status = corev1.NodeStatus{
		Conditions:  []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue, LastHeartbeatTime: metav1.Now()}},
		Allocatable: corev1.ResourceList{corev1.ResourceCPU: kresource.MustParse("4"), corev1.ResourceMemory: kresource.MustParse("8Gi"), corev1.ResourcePods: kresource.MustParse("110")},
		Capacity:    corev1.ResourceList{corev1.ResourceCPU: kresource.MustParse("4"), corev1.ResourceMemory: kresource.MustParse("8Gi"), corev1.ResourcePods: kresource.MustParse("110")},
	}
	if _, err := env.Client.CoreV1().Nodes().UpdateStatus(ctx, node, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}

	out, errOut, code := run("install")
	if code != 0 {
		t.Fatalf("install: exit %d\n%s", code, errOut)
	}
	t.Logf("install:\n%s%s", errOut, out)
	for _, want := range []string{"created Namespace istio-system", "CRDs applied and established", "applied Deployment istio-system/zmeshd", "applied DaemonSet istio-system/ztunnel"} {
		if !strings.Contains(errOut, want) {
			t.Errorf("install's progress lacks %q", want)
		}
	}
	d, err := env.Client.AppsV1().Deployments("istio-system").Get(ctx, "zmeshd", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if d.Labels[ownerLabel] != "istio-system" {
		t.Errorf("zmeshd Deployment labels %v lack %s=istio-system", d.Labels, ownerLabel)
	}
	managers := map[string]bool{}
	for _, mf := range d.ManagedFields {
		managers[mf.Manager] = mf.Operation == metav1.ManagedFieldsOperationApply
	}
	if !managers[installManager] {
		t.Errorf("zmeshd Deployment's fields are not applied by %s: %v", installManager, managers)
	}

	// No kubelet runs the pods: verify-install names what is not ready,
	// and the CRDs as established.
	out, errOut, code = run("verify-install")
	if code != 1 {
		t.Fatalf("verify-install with no pod running: exit %d, want 1\n%s%s", code, out, errOut)
	}
	for _, want := range []string{"Deployment istio-system/zmeshd (0/2 available)", "DaemonSet istio-system/ztunnel (0/1 nodes ready)"} {
		if !strings.Contains(errOut, want) {
			t.Errorf("verify-install's error lacks %q:\n%s", want, errOut)
		}
	}
	sawCRD := false
	for _, row := range fields(out) {
		if len(row) >= 4 && row[0] == "CustomResourceDefinition" && row[2] == "httproutes.gateway.networking.k8s.io" {
			sawCRD = row[3] == "Established"
		}
	}
	if !sawCRD {
		t.Errorf("verify-install does not show the HTTPRoute CRD established:\n%s", out)
	}
	// With the workloads off, what remains (CRDs, GatewayClass-free
	// objects) is all ready.
	off := []string{"--set", "zmeshd.enabled=false", "--set", "ztunnel.enabled=false", "--set", "cni.enabled=false"}
	if out, errOut, code = run(append([]string{"verify-install"}, off...)...); code != 0 {
		t.Fatalf("verify-install of the CRDs alone: exit %d\n%s%s", code, out, errOut)
	}
	// A deleted object is reported missing.
	if err := env.Client.CoreV1().ServiceAccounts("istio-system").Delete(ctx, "ztunnel", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, errOut, code = run("verify-install"); code != 1 || !strings.Contains(errOut, "ServiceAccount istio-system/ztunnel (missing)") {
		t.Errorf("verify-install after deleting ztunnel's ServiceAccount: exit %d, %q", code, errOut)
	}

	// The namespace's deletion waits for its pods, which only a kubelet
	// ends: the test plays node-a's kubelet and removes them once deleted.
	stop := make(chan struct{})
	kubelet := make(chan struct{})
	go func() {
		defer close(kubelet)
		zero := int64(0)
		for {
			select {
			case <-stop:
				return
			case <-time.After(500 * time.Millisecond):
			}
			pods, err := env.Client.CoreV1().Pods("istio-system").List(ctx, metav1.ListOptions{})
			if err != nil {
				continue
			}
			for _, p := range pods.Items {
				if p.DeletionTimestamp != nil {
					env.Client.CoreV1().Pods("istio-system").Delete(ctx, p.Name, metav1.DeleteOptions{GracePeriodSeconds: &zero})
				}
			}
		}
	}()
	_, errOut, code = run("uninstall")
	close(stop)
	<-kubelet
	if code != 0 {
		t.Fatalf("uninstall: exit %d\n%s", code, errOut)
	}
	left := ownedObjects(t, env, "istio-system")
	if rest := withoutCRDs(left); len(rest) > 0 {
		t.Errorf("uninstall left %v", rest)
	}
	if len(left) == 0 {
		t.Error("uninstall without --purge deleted the CRDs")
	}
	if _, err := env.Client.CoreV1().Namespaces().Get(ctx, "istio-system", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("the namespace install created is still there: %v", err)
	}

	if _, errOut, code = run("uninstall", "--purge"); code != 0 {
		t.Fatalf("uninstall --purge: exit %d\n%s", code, errOut)
	}
	if left := ownedObjects(t, env, "istio-system"); len(left) > 0 {
		t.Errorf("uninstall --purge left %v", left)
	}
}

// TestInstallUpgradePrunes installs into a namespace that exists, then
// installs again with other values: changed objects are updated, those
// the new values no longer render are deleted, and neither the namespace
// nor a user's object in it is touched, not even by uninstall.
func TestInstallUpgradePrunes(t *testing.T) {
	env := kubetest.ForTest(t)
	ctx := t.Context()
	apps := env.Client.AppsV1()
	run := func(args ...string) string {
		t.Helper()
		_, errOut, code := zmeshctl(t, append(args, "--kubeconfig", env.Kubeconfig, "-n", "mesh")...)
		if code != 0 {
			t.Fatalf("zmeshctl %s: exit %d\n%s", strings.Join(args, " "), code, errOut)
		}
		return errOut
	}
	if _, err := env.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "mesh"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	users := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "users-own", Namespace: "mesh", Labels: map[string]string{"app": "zmeshd"}}}
	if _, err := env.Client.CoreV1().ConfigMaps("mesh").Create(ctx, users, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	run("install")
	if _, err := env.Client.PolicyV1().PodDisruptionBudgets("mesh").Get(ctx, "zmeshd", metav1.GetOptions{}); err != nil {
		t.Fatalf("first install: zmeshd's PDB: %v", err)
	}
	if _, err := apps.DaemonSets("mesh").Get(ctx, "zmesh-cni-agent", metav1.GetOptions{}); err != nil {
		t.Fatalf("first install: the CNI agent: %v", err)
	}

	progress := run("install", "--set", "zmeshd.replicas=3", "--set", "zmeshd.podDisruptionBudget.enabled=false", "--set", "cni.enabled=false")
	t.Logf("upgrade:\n%s", progress)
	d, err := apps.Deployments("mesh").Get(ctx, "zmeshd", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if d.Spec.Replicas == nil || *d.Spec.Replicas != 3 {
		t.Errorf("upgrade left zmeshd at %v replicas, want 3", d.Spec.Replicas)
	}
	gone := []struct {
		kind string
		get  func() error
	}{
		{"PodDisruptionBudget mesh/zmeshd", func() error {
			_, err := env.Client.PolicyV1().PodDisruptionBudgets("mesh").Get(ctx, "zmeshd", metav1.GetOptions{})
			return err
		}},
		{"DaemonSet mesh/zmesh-cni-agent", func() error {
			_, err := apps.DaemonSets("mesh").Get(ctx, "zmesh-cni-agent", metav1.GetOptions{})
			return err
		}},
		{"ServiceAccount mesh/zmesh-cni-agent", func() error {
			_, err := env.Client.CoreV1().ServiceAccounts("mesh").Get(ctx, "zmesh-cni-agent", metav1.GetOptions{})
			return err
		}},
	}
	for _, g := range gone {
		if err := g.get(); !apierrors.IsNotFound(err) {
			t.Errorf("%s: still there after the upgrade turned it off (%v)", g.kind, err)
		}
		if !strings.Contains(progress, "pruned "+g.kind) {
			t.Errorf("the upgrade's progress does not say it pruned %s", g.kind)
		}
	}
	if _, err := apps.DaemonSets("mesh").Get(ctx, "ztunnel", metav1.GetOptions{}); err != nil {
		t.Errorf("the upgrade removed ztunnel, which it still renders: %v", err)
	}

	run("uninstall")
	if rest := withoutCRDs(ownedObjects(t, env, "mesh")); len(rest) > 0 {
		t.Errorf("uninstall left %v", rest)
	}
	if _, err := env.Client.CoreV1().ConfigMaps("mesh").Get(ctx, "users-own", metav1.GetOptions{}); err != nil {
		t.Errorf("the user's ConfigMap: %v", err)
	}
	ns, err := env.Client.CoreV1().Namespaces().Get(ctx, "mesh", metav1.GetOptions{})
	if err != nil || ns.DeletionTimestamp != nil {
		t.Errorf("uninstall deleted the namespace it did not create: %v", err)
	}
}

// TestPrecheck runs precheck as an admin on a fresh cluster (passes), with
// another install's CRDs and an istiod (warns, fails), and as a user who
// may create nothing (fails, naming what is denied).
func TestPrecheck(t *testing.T) {
	env := kubetest.ForTest(t)
	ctx := t.Context()
	// verdicts maps each CHECK to its VERDICT, by the header's columns.
	verdicts := func(out string) map[string]string {
		v := map[string]string{}
		lines := strings.Split(out, "\n")
		at, detail := strings.Index(lines[0], "VERDICT"), strings.Index(lines[0], "DETAIL")
		for _, l := range lines[1:] {
			if at > 0 && detail > at && len(l) > detail {
				v[strings.TrimSpace(l[:at])] = strings.TrimSpace(l[at:detail])
			}
		}
		return v
	}
	out, errOut, code := zmeshctl(t, "precheck", "--kubeconfig", env.Kubeconfig)
	if code != 0 {
		t.Fatalf("precheck on a fresh cluster: exit %d\n%s%s", code, out, errOut)
	}
	t.Logf("precheck:\n%s", out)
	v := verdicts(out)
	for check, want := range map[string]string{"kubernetes version": "OK", "CRDs": "OK", "other mesh": "OK",
		"permissions": "OK", "node kernels": "WARN", "node BPF features": "UNKNOWN"} {
		if v[check] != want {
			t.Errorf("check %q: %q, want %q", check, v[check], want)
		}
	}
	if !strings.Contains(out, "cannot be checked from the API server") {
		t.Error("precheck does not say the BPF features cannot be checked remotely")
	}

	env.MustKubectl(t, "", "apply", "--server-side", "-f", "../../deploy/crds/istio.io_customresourcedefinitions.gen.yaml")
	env.MustKubectl(t, "", "create", "namespace", "istio-system")
	istiod := &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: "istiod", Namespace: "istio-system", Labels: map[string]string{"app": "istiod"}},
		Spec: appsv1.DeploymentSpec{
			Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "istiod"}},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"app": "istiod"}},
				Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "discovery", Image: "istio/pilot"}}},
			},
		},
	}
	if _, err := env.Client.AppsV1().Deployments("istio-system").Create(ctx, istiod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	out, _, code = zmeshctl(t, "precheck", "--kubeconfig", env.Kubeconfig)
	v = verdicts(out)
	if code != 1 || v["CRDs"] != "WARN" || v["other mesh"] != "FAIL" || !strings.Contains(out, "istio-system/istiod") {
		t.Errorf("precheck with Istio's CRDs and an istiod: exit %d, CRDs %q, other mesh %q\n%s", code, v["CRDs"], v["other mesh"], out)
	}

	// A user with no rights: the same kubeconfig, impersonating a service
	// account nobody granted anything.
	cfg, err := clientcmd.LoadFromFile(env.Kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range cfg.AuthInfos {
		a.Impersonate = "system:serviceaccount:default:nobody"
	}
	weak := filepath.Join(t.TempDir(), "weak.kubeconfig")
	if err := clientcmd.WriteToFile(*cfg, weak); err != nil {
		t.Fatal(err)
	}
	defer os.Remove(weak)
	deadline := time.Now().Add(10 * time.Second)
	for {
		out, _, code = zmeshctl(t, "precheck", "--kubeconfig", weak, "-n", "mesh")
		v = verdicts(out)
		if v["permissions"] == "FAIL" || time.Now().After(deadline) {
			break
		}
		time.Sleep(500 * time.Millisecond)
	}
	if code != 1 || v["permissions"] != "FAIL" || !strings.Contains(out, "create deployments.apps in mesh") || !strings.Contains(out, "create clusterroles.rbac.authorization.k8s.io cluster-wide") {
		t.Errorf("precheck as a user with no rights: exit %d, permissions %q\n%s", code, v["permissions"], out)
	}
}
