package main

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/clientcmd"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
	gatewayclient "sigs.k8s.io/gateway-api/pkg/client/clientset/versioned"

	"github.com/zmesh/zmesh/internal/kubetest"
)

// TestWaypointOnKubernetes runs the waypoint commands against a real API
// server with deploy/crds, as a user would after installing zmesh.
func TestWaypointOnKubernetes(t *testing.T) {
	env := kubetest.ForTest(t)
	ctx := t.Context()
	kubectl := func(args ...string) {
		t.Helper()
		if out, err := env.KubectlRun(ctx, "", args...); err != nil {
			t.Fatal(out, err)
		}
	}
	kubectl("apply", "--server-side", "-f", "../../deploy/crds/")
	kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd/gateways.gateway.networking.k8s.io")
	kubectl("create", "namespace", "apps")
	kubectl("label", "namespace", "apps", "istio.io/dataplane-mode=ambient")
	gwc, err := gatewayclient.NewForConfig(env.Config)
	if err != nil {
		t.Fatal(err)
	}
	gateways := gwc.GatewayV1().Gateways("apps")
	run := func(args ...string) (string, string, int) {
		t.Helper()
		return zmeshctl(t, append(args, "--kubeconfig", env.Kubeconfig)...)
	}
	mustRun := func(args ...string) string {
		t.Helper()
		stdout, stderr, code := run(args...)
		if code != 0 {
			t.Fatalf("zmeshctl %s: exit %d, stderr %q", strings.Join(args, " "), code, stderr)
		}
		return stdout
	}

	// apply --enroll-namespace: the Gateway istioctl writes, and the label.
	out := mustRun("waypoint", "apply", "-n", "apps", "--for", "service", "--enroll-namespace")
	want := "waypoint apps/waypoint applied\nnamespace apps labeled with \"istio.io/use-waypoint: waypoint\"\n"
	if out != want {
		t.Errorf("apply printed %q, want %q", out, want)
	}
	gw, err := gateways.Get(ctx, "waypoint", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	l := gw.Spec.Listeners
	if gw.Spec.GatewayClassName != "istio-waypoint" || len(l) != 1 || l[0].Name != "mesh" || l[0].Port != 15008 || l[0].Protocol != "HBONE" ||
		gw.Labels["istio.io/waypoint-for"] != "service" {
		t.Errorf("applied gateway: class %q, listeners %+v, labels %v", gw.Spec.GatewayClassName, l, gw.Labels)
	}
	if len(gw.ManagedFields) == 0 || gw.ManagedFields[0].Manager != "zmeshctl" || gw.ManagedFields[0].Operation != metav1.ManagedFieldsOperationApply {
		t.Errorf("managed fields %+v, want server-side apply by zmeshctl", gw.ManagedFields)
	}
	ns, err := env.Client.CoreV1().Namespaces().Get(ctx, "apps", metav1.GetOptions{})
	if err != nil || ns.Labels["istio.io/use-waypoint"] != "waypoint" {
		t.Fatalf("namespace labels %v, %v", ns.GetLabels(), err)
	}

	// Applying again updates in place.
	mustRun("waypoint", "apply", "-n", "apps", "--for", "workload")
	if gw, err := gateways.Get(ctx, "waypoint", metav1.GetOptions{}); err != nil || gw.Labels["istio.io/waypoint-for"] != "workload" {
		t.Fatalf("re-apply --for workload: labels %v, %v", gw.GetLabels(), err)
	}
	// A second waypoint may not take the namespace without --overwrite.
	_, stderr, code := run("waypoint", "apply", "-n", "apps", "--name", "other", "--enroll-namespace")
	if code != exitFailure || !strings.Contains(stderr, `namespace apps already uses waypoint "waypoint"`) {
		t.Errorf("enrolling a second waypoint: exit %d, %q", code, stderr)
	}
	if _, err := gateways.Get(ctx, "other", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("the refused apply created its gateway: %v", err)
	}

	// --wait returns once zmeshd (here: the test) marks it Programmed.
	done := make(chan struct{})
	var waitOut, waitErr string
	var waitCode int
	go func() {
		defer close(done)
		waitOut, waitErr, waitCode = zmeshctl(t, "waypoint", "apply", "-n", "apps", "--name", "reviews-wp", "--wait", "--kubeconfig", env.Kubeconfig)
	}()
	setProgrammed(t, gwc, "apps", "reviews-wp")
	select {
	case <-done:
	case <-time.After(60 * time.Second):
		t.Fatal("apply --wait did not return after the gateway was programmed")
	}
	if waitCode != 0 || waitOut != "waypoint apps/reviews-wp applied\nwaypoint apps/reviews-wp is ready\n" {
		t.Errorf("apply --wait: exit %d, stdout %q, stderr %q", waitCode, waitOut, waitErr)
	}
	_, stderr, code = run("waypoint", "apply", "-n", "apps", "--name", "never", "--wait", "--waypoint-timeout", "2s")
	if code != exitFailure || !strings.Contains(stderr, "waypoint apps/never not programmed within 2s") {
		t.Errorf("apply --wait on a waypoint nobody programs: exit %d, %q", code, stderr)
	}

	// Another class's Gateway is not a waypoint: list, status and delete
	// --all leave it alone.
	other := &gatewayv1.Gateway{
		ObjectMeta: metav1.ObjectMeta{Name: "ingress", Namespace: "apps"},
		Spec:       gatewayv1.GatewaySpec{GatewayClassName: "istio", Listeners: []gatewayv1.Listener{{Name: "http", Port: 80, Protocol: "HTTP"}}},
	}
	if _, err := gateways.Create(ctx, other, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	listWant := "" +
		"NAME         REVISION   TRAFFIC TYPE   PROGRAMMED\n" +
		"never        default    none           False\n" +
		"reviews-wp   default    none           True\n" +
		"waypoint     default    workload       False\n"
	if out := mustRun("waypoint", "list", "-n", "apps"); out != listWant {
		t.Errorf("list:\n%s\nwant:\n%s", out, listWant)
	}
	if out := mustRun("waypoint", "list", "-A"); !strings.HasPrefix(out, "NAMESPACE   NAME") || !strings.Contains(out, "apps        waypoint") {
		t.Errorf("list -A:\n%s", out)
	}
	// The namespace comes from the kubeconfig's context when -n is absent.
	if out, stderr, _ := zmeshctl(t, "waypoint", "list", "--kubeconfig", withNamespace(t, env.Kubeconfig, "apps")); out != listWant {
		t.Errorf("list in the context's namespace:\n%s%s\nwant:\n%s", out, stderr, listWant)
	}
	if out := mustRun("waypoint", "list", "-n", "default"); out != "No waypoints found.\n" {
		t.Errorf("list in an empty namespace: %q", out)
	}
	out = mustRun("waypoint", "status", "-n", "apps", "--name", "reviews-wp")
	if rows := fields(out); len(rows) != 2 || strings.Join(rows[0], " ") != "NAME STATUS TYPE REASON MESSAGE" ||
		strings.Join(rows[1][:4], " ") != "reviews-wp True Programmed Programmed" {
		t.Errorf("status --name reviews-wp:\n%s", out)
	}
	if out := mustRun("waypoint", "status", "-n", "apps"); len(fields(out)) != 4 {
		t.Errorf("status of the namespace's three waypoints:\n%s", out)
	}

	// delete by name, a name that is not a waypoint, then --all.
	if out := mustRun("waypoint", "delete", "-n", "apps", "never"); out != "waypoint apps/never deleted\n" {
		t.Errorf("delete never: %q", out)
	}
	_, stderr, code = run("waypoint", "delete", "-n", "apps", "ingress")
	if code != exitFailure || !strings.Contains(stderr, "waypoint apps/ingress not found") {
		t.Errorf("delete of a non-waypoint gateway: exit %d, %q", code, stderr)
	}
	out = mustRun("waypoint", "delete", "-n", "apps", "--all")
	if out != "waypoint apps/reviews-wp deleted\nwaypoint apps/waypoint deleted\n" {
		t.Errorf("delete --all: %q", out)
	}
	list, err := gateways.List(ctx, metav1.ListOptions{})
	if err != nil || len(list.Items) != 1 || list.Items[0].Name != "ingress" {
		t.Errorf("after delete --all: %v, %v; want only the ingress gateway", list, err)
	}
}

// setProgrammed waits for the gateway to exist and sets its Programmed
// condition, as zmeshd does once the waypoint runs.
func setProgrammed(t *testing.T, gwc gatewayclient.Interface, namespace, name string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	for {
		gw, err := gwc.GatewayV1().Gateways(namespace).Get(ctx, name, metav1.GetOptions{})
		if err == nil {
			meta.SetStatusCondition(&gw.Status.Conditions, metav1.Condition{
				Type: "Programmed", Status: metav1.ConditionTrue, Reason: "Programmed",
				Message: "the test says so", ObservedGeneration: gw.Generation,
			})
			if _, err = gwc.GatewayV1().Gateways(namespace).UpdateStatus(ctx, gw, metav1.UpdateOptions{}); err == nil {
				return
			}
		}
		select {
		case <-ctx.Done():
			t.Fatalf("set %s/%s programmed: %v", namespace, name, err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// withNamespace writes a copy of kubeconfig whose current context's
// namespace is ns.
func withNamespace(t *testing.T, kubeconfig, ns string) string {
	t.Helper()
	cfg, err := clientcmd.LoadFromFile(kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Contexts[cfg.CurrentContext].Namespace = ns
	p := filepath.Join(t.TempDir(), "kubeconfig")
	if err := clientcmd.WriteToFile(*cfg, p); err != nil {
		t.Fatal(err)
	}
	return p
}
