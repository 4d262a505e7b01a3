package deployer

import (
	"strings"
	"testing"

	"istio.io/api/label"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
)

func gateway(mod func(*gatewayv1.Gateway)) *gatewayv1.Gateway {
	gw := &gatewayv1.Gateway{
		ObjectMeta: metav1.ObjectMeta{Namespace: "apps", Name: "waypoint", UID: "uid-1", Generation: 3},
		Spec: gatewayv1.GatewaySpec{
			GatewayClassName: ClassName,
			Listeners:        []gatewayv1.Listener{{Name: "mesh", Port: 15008, Protocol: "HBONE"}},
		},
	}
	if mod != nil {
		mod(gw)
	}
	return gw
}

func TestValidate(t *testing.T) {
	for _, tc := range []struct {
		name   string
		mod    func(*gatewayv1.Gateway)
		reason gatewayv1.GatewayConditionReason // empty: valid
		field  string
	}{
		{name: "istio docs waypoint"},
		{name: "waypoint-for workload", mod: func(g *gatewayv1.Gateway) { g.Labels = map[string]string{label.IoIstioWaypointFor.Name: "workload"} }},
		{name: "waypoint-for typo", mod: func(g *gatewayv1.Gateway) { g.Labels = map[string]string{label.IoIstioWaypointFor.Name: "services"} },
			reason: gatewayv1.GatewayReasonInvalid, field: `metadata.labels["istio.io/waypoint-for"]`},
		{name: "no listener", mod: func(g *gatewayv1.Gateway) { g.Spec.Listeners = nil },
			reason: gatewayv1.GatewayReasonListenersNotValid, field: "spec.listeners"},
		{name: "wrong port", mod: func(g *gatewayv1.Gateway) { g.Spec.Listeners[0].Port = 15009 },
			reason: gatewayv1.GatewayReasonListenersNotValid, field: "spec.listeners[0].port"},
		{name: "wrong protocol", mod: func(g *gatewayv1.Gateway) { g.Spec.Listeners[0].Protocol = gatewayv1.HTTPProtocolType },
			reason: gatewayv1.GatewayReasonListenersNotValid, field: "spec.listeners[0].protocol"},
		{name: "wrong name", mod: func(g *gatewayv1.Gateway) { g.Spec.Listeners[0].Name = "hbone" },
			reason: gatewayv1.GatewayReasonListenersNotValid, field: "spec.listeners[0].name"},
		{name: "extra listener", mod: func(g *gatewayv1.Gateway) {
			g.Spec.Listeners = append(g.Spec.Listeners, gatewayv1.Listener{Name: "http", Port: 80, Protocol: gatewayv1.HTTPProtocolType})
		}, reason: gatewayv1.GatewayReasonListenersNotValid, field: "spec.listeners[1].name"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := validate(gateway(tc.mod))
			if tc.reason == "" {
				if got != nil {
					t.Fatalf("validate = %+v, want valid", got)
				}
				return
			}
			if got == nil {
				t.Fatal("validate = valid")
			}
			if got.reason != tc.reason || !strings.HasPrefix(got.message, tc.field+":") {
				t.Fatalf("validate = %s %q, want %s naming %s", got.reason, got.message, tc.reason, tc.field)
			}
		})
	}
}

func TestDesired(t *testing.T) {
	gw := gateway(func(g *gatewayv1.Gateway) {
		g.Labels = map[string]string{label.IoIstioWaypointFor.Name: "all"}
		g.Spec.Infrastructure = &gatewayv1.GatewayInfrastructure{
			Labels:      map[gatewayv1.LabelKey]gatewayv1.LabelValue{"team": "payments"},
			Annotations: map[gatewayv1.AnnotationKey]gatewayv1.AnnotationValue{"example.com/cost-center": "42"},
		}
	})
	o := desired(gw, Options{Image: "zmesh/waypoint:dev", XDSAddress: "zmeshd.istio-system.svc:15012"})

	for _, m := range []struct {
		kind        string
		name, ns    *string
		labels      map[string]string
		annotations map[string]string
		owners      int
		controller  *bool
		uid         string
	}{
		{"ServiceAccount", o.serviceAccount.Name, o.serviceAccount.Namespace, o.serviceAccount.Labels, o.serviceAccount.Annotations, len(o.serviceAccount.OwnerReferences), o.serviceAccount.OwnerReferences[0].Controller, string(*o.serviceAccount.OwnerReferences[0].UID)},
		{"Deployment", o.deployment.Name, o.deployment.Namespace, o.deployment.Labels, o.deployment.Annotations, len(o.deployment.OwnerReferences), o.deployment.OwnerReferences[0].Controller, string(*o.deployment.OwnerReferences[0].UID)},
		{"Service", o.service.Name, o.service.Namespace, o.service.Labels, o.service.Annotations, len(o.service.OwnerReferences), o.service.OwnerReferences[0].Controller, string(*o.service.OwnerReferences[0].UID)},
	} {
		if *m.name != "waypoint" || *m.ns != "apps" {
			t.Errorf("%s is %s/%s, want apps/waypoint", m.kind, *m.ns, *m.name)
		}
		if m.owners != 1 || !*m.controller || m.uid != "uid-1" {
			t.Errorf("%s: owner references not the Gateway's controller reference", m.kind)
		}
		for k, v := range map[string]string{
			"gateway.networking.k8s.io/gateway-name":       "waypoint",
			"gateway.networking.k8s.io/gateway-class-name": ClassName,
			"gateway.istio.io/managed":                     ManagedLabelValue,
			"istio.io/waypoint-for":                        "all",
			"team":                                         "payments",
		} {
			if m.labels[k] != v {
				t.Errorf("%s label %s = %q, want %q", m.kind, k, m.labels[k], v)
			}
		}
		if m.annotations["example.com/cost-center"] != "42" {
			t.Errorf("%s: infrastructure annotation not copied", m.kind)
		}
	}

	pod := o.deployment.Spec.Template
	sel := o.deployment.Spec.Selector.MatchLabels
	for k, v := range sel {
		if pod.Labels[k] != v {
			t.Errorf("pod template does not match the Deployment's selector %s=%s", k, v)
		}
	}
	for k, v := range o.service.Spec.Selector {
		if pod.Labels[k] != v {
			t.Errorf("pod template does not match the Service's selector %s=%s", k, v)
		}
	}
	if pod.Labels["istio.io/dataplane-mode"] != "none" {
		t.Error("waypoint pods are not opted out of capture")
	}
	if *pod.Spec.ServiceAccountName != "waypoint" {
		t.Errorf("pod runs as %q", *pod.Spec.ServiceAccountName)
	}
	c := pod.Spec.Containers[0]
	if *c.Image != "zmesh/waypoint:dev" || c.Command[0] != "waypoint" {
		t.Errorf("container runs %v from %s", c.Command, *c.Image)
	}
	if !strings.Contains(strings.Join(c.Args, " "), "--xds-address=zmeshd.istio-system.svc:15012") {
		t.Errorf("args %q lack the xDS address", c.Args)
	}
	tok := pod.Spec.Volumes[0].Projected.Sources[0].ServiceAccountToken
	if *tok.Audience != "istio-ca" {
		t.Errorf("token audience %q", *tok.Audience)
	}
	p := o.service.Spec.Ports[0]
	if *p.Name != "mesh" || *p.Port != 15008 || *o.service.Spec.Type != "ClusterIP" {
		t.Errorf("service port %s %d type %s", *p.Name, *p.Port, *o.service.Spec.Type)
	}
	// Replicas are left to users (kubectl scale, an autoscaler).
	if o.deployment.Spec.Replicas != nil {
		t.Error("replicas are set")
	}

	def := desired(gateway(nil), Options{Image: "i"})
	if def.service.Labels["istio.io/waypoint-for"] != ForService {
		t.Errorf("default waypoint-for = %q", def.service.Labels["istio.io/waypoint-for"])
	}
}

func TestGatewayStatus(t *testing.T) {
	gw := gateway(nil)
	// The CRD's default status.
	gw.Status.Conditions = []metav1.Condition{
		{Type: "Accepted", Status: metav1.ConditionUnknown, Reason: "Pending"},
		{Type: "Programmed", Status: metav1.ConditionUnknown, Reason: "Pending"},
		{Type: "example.com/Other", Status: metav1.ConditionTrue, Reason: "Theirs"},
	}
	st := gatewayStatus(gw, outcome{address: "10.96.0.10"})
	cond := func(st gatewayv1.GatewayStatus, typ string) metav1.Condition {
		for _, c := range st.Conditions {
			if c.Type == typ {
				return c
			}
		}
		t.Fatalf("no %s condition", typ)
		return metav1.Condition{}
	}
	if c := cond(st, "Programmed"); c.Status != metav1.ConditionTrue || c.ObservedGeneration != 3 {
		t.Errorf("Programmed = %+v", c)
	}
	if len(st.Addresses) != 1 || st.Addresses[0].Value != "10.96.0.10" || *st.Addresses[0].Type != gatewayv1.IPAddressType {
		t.Errorf("addresses = %+v", st.Addresses)
	}
	if cond(st, "example.com/Other").Reason != "Theirs" {
		t.Error("another controller's condition was changed")
	}
	// Applying the same outcome again changes nothing (no status write).
	gw.Status = st
	again := gatewayStatus(gw, outcome{address: "10.96.0.10"})
	if cond(again, "Programmed").LastTransitionTime != cond(st, "Programmed").LastTransitionTime {
		t.Error("transition time moved without a transition")
	}

	bad := gatewayStatus(gw, outcome{invalid: validate(gateway(func(g *gatewayv1.Gateway) { g.Spec.Listeners[0].Port = 80 }))})
	if c := cond(bad, "Accepted"); c.Status != metav1.ConditionFalse || c.Reason != "ListenersNotValid" || !strings.Contains(c.Message, "spec.listeners[0].port") {
		t.Errorf("Accepted = %+v", c)
	}
	if c := cond(bad, "Programmed"); c.Status != metav1.ConditionFalse || len(bad.Addresses) != 0 {
		t.Errorf("Programmed = %+v, addresses %v", c, bad.Addresses)
	}

	pending := gatewayStatus(gateway(nil), outcome{})
	if c := cond(pending, "Programmed"); c.Status != metav1.ConditionFalse || c.Reason != "AddressNotAssigned" {
		t.Errorf("Programmed without an address = %+v", c)
	}
}
