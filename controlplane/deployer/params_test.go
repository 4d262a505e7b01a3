package deployer

import (
	"encoding/json"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
)

// withParams is a waypoint Gateway whose parametersRef names ConfigMap
// "sizing".
func withParams() *gatewayv1.Gateway {
	return gateway(func(g *gatewayv1.Gateway) {
		g.Spec.Infrastructure = &gatewayv1.GatewayInfrastructure{ParametersRef: &gatewayv1.LocalParametersReference{Kind: "ConfigMap", Name: "sizing"}}
	})
}

func configMap(data map[string]string) *corev1.ConfigMap {
	return &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: "apps", Name: "sizing"}, Data: data}
}

// convert reads an apply configuration as its typed object.
func convert[T any](t *testing.T, from any) *T {
	t.Helper()
	b, err := json.Marshal(from)
	if err != nil {
		t.Fatal(err)
	}
	out := new(T)
	if err := json.Unmarshal(b, out); err != nil {
		t.Fatal(err)
	}
	return out
}

// TestCustomize: the patches of the parameters ConfigMap are strategic
// merge patches over the generated objects, as Istio applies them: a
// container is merged by name (its resources set, the rest kept), an
// autoscaler is created from the controller's base and takes the
// replicas over, the Service gets an annotation.
func TestCustomize(t *testing.T) {
	gw := withParams()
	want := desired(gw, Options{Image: image, Sizing: Sizing{Replicas: 2}})
	bad := customize(gw, &want, "sizing", configMap(map[string]string{
		paramDeployment: `
spec:
  template:
    spec:
      containers:
      - name: waypoint
        resources:
          requests: {cpu: 500m}
      terminationGracePeriodSeconds: 90
`,
		paramHPA: `
spec:
  minReplicas: 2
  maxReplicas: 8
`,
		paramService:        `metadata: {annotations: {example.com/lb: internal}}`,
		paramServiceAccount: `metadata: {annotations: {iam.example.com/role: waypoint}}`,
	}))
	if bad != nil {
		t.Fatal(bad.message)
	}
	d := convert[appsv1.Deployment](t, want.deployment)
	c := d.Spec.Template.Spec.Containers
	if len(c) != 1 || c[0].Name != "waypoint" || c[0].Image != image || !c[0].Resources.Requests.Cpu().Equal(resource.MustParse("500m")) || len(c[0].Args) == 0 {
		t.Errorf("container not merged by name: %+v", c)
	}
	if g := d.Spec.Template.Spec.TerminationGracePeriodSeconds; g == nil || *g != 90 {
		t.Errorf("terminationGracePeriodSeconds %v, want 90", g)
	}
	if d.Spec.Replicas != nil {
		t.Errorf("replicas %d with an autoscaler, want left to it", *d.Spec.Replicas)
	}
	h := convert[autoscalingv2.HorizontalPodAutoscaler](t, want.hpa)
	if h.Name != "waypoint" || h.Spec.MaxReplicas != 8 || *h.Spec.MinReplicas != 2 || h.Spec.ScaleTargetRef.Name != "waypoint" ||
		len(h.OwnerReferences) != 1 || h.OwnerReferences[0].UID != gw.UID {
		t.Errorf("HPA %+v", h)
	}
	if s := convert[corev1.Service](t, want.service); s.Annotations["example.com/lb"] != "internal" || s.Spec.Selector["gateway.networking.k8s.io/gateway-name"] != "waypoint" {
		t.Errorf("Service %+v", s.ObjectMeta)
	}
	if sa := convert[corev1.ServiceAccount](t, want.serviceAccount); sa.Annotations["iam.example.com/role"] != "waypoint" {
		t.Errorf("ServiceAccount %+v", sa.ObjectMeta)
	}

	// Replicas set by the deployment patch stay, autoscaler or not.
	want = desired(gw, Options{Image: image})
	if bad := customize(gw, &want, "sizing", configMap(map[string]string{paramDeployment: "spec: {replicas: 4}", paramHPA: "spec: {maxReplicas: 8}"})); bad != nil {
		t.Fatal(bad.message)
	}
	if r := want.deployment.Spec.Replicas; r == nil || *r != 4 {
		t.Errorf("replicas %v, want 4", r)
	}
}

// TestCustomizeInvalid: what cannot be applied makes the Gateway
// InvalidParameters, naming the ConfigMap, the key and the problem.
func TestCustomizeInvalid(t *testing.T) {
	for _, tc := range []struct {
		name string
		gw   func(*gatewayv1.Gateway)
		cm   *corev1.ConfigMap
		want string
	}{
		{name: "missing ConfigMap", want: "ConfigMap apps/sizing (spec.infrastructure.parametersRef): not found"},
		{name: "not YAML", cm: configMap(map[string]string{paramDeployment: "spec: [unclosed"}), want: "data[deployment]: not YAML"},
		{name: "not a mapping", cm: configMap(map[string]string{paramDeployment: "- a\n- b"}), want: "data[deployment]: not a YAML mapping"},
		{name: "unknown field", cm: configMap(map[string]string{paramDeployment: "spec: {replcias: 3}"}), want: `data[deployment]: does not decode: json: unknown field "replcias"`},
		{name: "wrong type", cm: configMap(map[string]string{paramHPA: "spec: {maxReplicas: many}"}), want: "data[horizontalPodAutoscaler]: "},
		{name: "unknown key", cm: configMap(map[string]string{"deploymnet": "spec: {}"}), want: "data[deploymnet]: unknown key"},
		{name: "selector", cm: configMap(map[string]string{paramDeployment: "spec: {selector: {matchLabels: {app: x}}}"}), want: "data[deployment]: spec.selector: must stay"},
		{name: "identity", cm: configMap(map[string]string{paramDeployment: "spec: {template: {spec: {serviceAccountName: admin}}}"}), want: `data[deployment]: spec.template.spec.serviceAccountName: "admin", must stay "waypoint"`},
		{name: "renamed", cm: configMap(map[string]string{paramService: "metadata: {name: other}"}), want: "data[service]: metadata: apps/other, must stay apps/waypoint"},
		{name: "service selector", cm: configMap(map[string]string{paramService: "spec: {selector: {app: other}}"}), want: "data[service]: spec.selector:"},
		{name: "autoscaler target", cm: configMap(map[string]string{paramHPA: "spec: {maxReplicas: 3, scaleTargetRef: {name: other}}"}), want: "data[horizontalPodAutoscaler]: spec.scaleTargetRef"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			gw := withParams()
			want := desired(gw, Options{Image: image})
			bad := customize(gw, &want, "sizing", tc.cm)
			if bad == nil {
				t.Fatalf("accepted, want %q", tc.want)
			}
			if bad.reason != gatewayv1.GatewayReasonInvalidParameters || !strings.Contains(bad.message, tc.want) {
				t.Errorf("%s %q, want InvalidParameters containing %q", bad.reason, bad.message, tc.want)
			}
		})
	}
	for _, ref := range []gatewayv1.LocalParametersReference{{Group: "gateway.envoyproxy.io", Kind: "EnvoyProxy", Name: "x"}, {Kind: "Secret", Name: "x"}, {Kind: "ConfigMap"}} {
		gw := gateway(func(g *gatewayv1.Gateway) {
			g.Spec.Infrastructure = &gatewayv1.GatewayInfrastructure{ParametersRef: &ref}
		})
		if _, bad := parametersName(gw); bad == nil || bad.reason != gatewayv1.GatewayReasonInvalidParameters || !strings.Contains(bad.message, "spec.infrastructure.parametersRef") {
			t.Errorf("parametersRef %+v: %+v, want InvalidParameters", ref, bad)
		}
	}
}
