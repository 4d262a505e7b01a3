package deployer

import (
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
)

// Desired hands out the controller's own objects as typed objects: the
// Deployment's pod runs the waypoint command with the XDS address, the
// token and root-cert volumes, under the Gateway's service account.
func TestDesiredTyped(t *testing.T) {
	o, err := Desired(gateway(nil), Options{Image: "zmesh/waypoint:test", XDSAddress: "10.0.0.1:15012"})
	if err != nil {
		t.Fatal(err)
	}
	spec := o.Deployment.Spec.Template.Spec
	if spec.ServiceAccountName != "waypoint" || o.ServiceAccount.Name != "waypoint" || o.Service.Name != "waypoint" {
		t.Errorf("names: sa %q, pod sa %q, service %q; want the Gateway's", o.ServiceAccount.Name, spec.ServiceAccountName, o.Service.Name)
	}
	c := spec.Containers[0]
	if c.Image != "zmesh/waypoint:test" || !strings.Contains(strings.Join(c.Args, " "), "--xds-address=10.0.0.1:15012") {
		t.Errorf("container: image %q args %q", c.Image, c.Args)
	}
	if len(spec.Volumes) != 2 || spec.Volumes[0].Projected == nil || spec.Volumes[1].ConfigMap == nil {
		t.Errorf("volumes: %+v", spec.Volumes)
	}
	if got := o.Deployment.Spec.Template.Labels["gateway.networking.k8s.io/gateway-name"]; got != "waypoint" {
		t.Errorf("pod label gateway-name %q", got)
	}
	if got := o.Service.Spec.Selector["gateway.networking.k8s.io/gateway-name"]; got != "waypoint" {
		t.Errorf("service selector %v", o.Service.Spec.Selector)
	}

	bad := gateway(func(g *gatewayv1.Gateway) { g.Spec.Listeners[0].Port = 15009 })
	if _, err := Desired(bad, Options{Image: "x"}); err == nil || !strings.Contains(err.Error(), "spec.listeners[0].port") {
		t.Errorf("invalid Gateway: %v, want an error naming spec.listeners[0].port", err)
	}
	other := gateway(func(g *gatewayv1.Gateway) { g.Spec.GatewayClassName = "istio" })
	if _, err := Desired(other, Options{Image: "x"}); err == nil || !strings.Contains(err.Error(), "spec.gatewayClassName") {
		t.Errorf("other class: %v", err)
	}
}

// A Gateway's parametersRef is followed as the controller follows it:
// with no ConfigMaps to read, or none of that name, the Gateway is refused
// naming the reference (as its InvalidParameters condition does), never
// programmed as if the reference were not there; the ConfigMap's patches
// reach the Deployment and the Service; a patch that does not apply names
// its key.
func TestDesiredParameters(t *testing.T) {
	opts := Options{Image: "zmesh/waypoint:test", XDSAddress: "10.0.0.1:15012"}
	gw := withParams()
	for name, lookup := range map[string]ConfigMapLookup{
		"no lookup":    nil,
		"no ConfigMap": func(string, string) *corev1.ConfigMap { return nil },
	} {
		_, err := DesiredWith(gw, opts, lookup)
		if err == nil || !strings.Contains(err.Error(), "ConfigMap apps/sizing (spec.infrastructure.parametersRef): not found") {
			t.Errorf("%s: %v, want the missing ConfigMap named", name, err)
		}
	}
	if _, err := Desired(gw, opts); err == nil || !strings.Contains(err.Error(), "spec.infrastructure.parametersRef") {
		t.Errorf("Desired with a parametersRef: %v, want it refused naming the reference", err)
	}

	var asked []string
	lookup := func(data map[string]string) ConfigMapLookup {
		return func(ns, name string) *corev1.ConfigMap {
			asked = append(asked, ns+"/"+name)
			return configMap(data)
		}
	}
	o, err := DesiredWith(gw, opts, lookup(map[string]string{
		paramDeployment: "spec:\n  template:\n    spec:\n      containers:\n      - name: waypoint\n        env:\n        - {name: EXTRA, value: \"1\"}\n",
		paramService:    "metadata:\n  annotations: {team: shop}\n",
	}))
	if err != nil {
		t.Fatal(err)
	}
	if len(asked) != 1 || asked[0] != "apps/sizing" {
		t.Errorf("looked up %v, want apps/sizing", asked)
	}
	c := o.Deployment.Spec.Template.Spec.Containers[0]
	if !slices.ContainsFunc(c.Env, func(e corev1.EnvVar) bool { return e.Name == "EXTRA" && e.Value == "1" }) || !strings.Contains(strings.Join(c.Args, " "), "--xds-address=10.0.0.1:15012") {
		t.Errorf("container after the patch: env %v args %v, want EXTRA=1 added and the args kept", c.Env, c.Args)
	}
	if o.Service.Annotations["team"] != "shop" {
		t.Errorf("service annotations %v, want team=shop", o.Service.Annotations)
	}

	_, err = DesiredWith(gw, opts, lookup(map[string]string{paramDeployment: "spec:\n  template:\n    spec:\n      serviceAccountName: other\n"}))
	if err == nil || !strings.Contains(err.Error(), "data[deployment]: spec.template.spec.serviceAccountName") {
		t.Errorf("a patch changing the identity: %v, want it refused naming the field", err)
	}
	if _, err := DesiredWith(gateway(nil), opts, lookup(nil)); err != nil || len(asked) != 2 {
		t.Errorf("no parametersRef: %v, %d lookups; want no error and no lookup", err, len(asked)-2)
	}
}
