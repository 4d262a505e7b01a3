package deployer

import (
	"strings"
	"testing"

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
