package status

import (
	"bytes"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"testing"

	"github.com/zmesh/zmesh/controlplane/l7"
	"github.com/zmesh/zmesh/controlplane/model"
	"github.com/zmesh/zmesh/controlplane/model/modeltest"
)

const routesInput = `
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {istio.io/use-waypoint: waypoint}}
---
apiVersion: v1
kind: Namespace
metadata: {name: plain}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: shop}
spec:
  gatewayClassName: istio-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: ingress, namespace: shop}
spec:
  gatewayClassName: istio
  listeners: [{name: http, port: 80, protocol: HTTP}]
---
apiVersion: v1
kind: Service
metadata: {name: cart, namespace: shop}
spec: {selector: {app: cart}, ports: [{name: http, port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: lonely, namespace: plain}
spec: {selector: {app: lonely}, ports: [{name: http, port: 80}]}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: cart, namespace: shop}
spec:
  hosts: [cart]
  http: [{route: [{destination: {host: cart}}]}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: lonely, namespace: shop}
spec:
  hosts: [lonely.plain.svc.cluster.local]
  http: [{route: [{destination: {host: lonely.plain.svc.cluster.local}}]}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: private, namespace: plain}
spec:
  hosts: [cart.shop.svc.cluster.local]
  exportTo: ["."]
  http: [{route: [{destination: {host: cart.shop.svc.cluster.local}}]}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: shared, namespace: plain}
spec:
  hosts: [cart.shop.svc.cluster.local]
  exportTo: [shop]
  http: [{route: [{destination: {host: cart.shop.svc.cluster.local}}]}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: edge, namespace: shop}
spec:
  hosts: [shop.example.com]
  gateways: [ingress]
  http: [{route: [{destination: {host: cart}}]}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: cart, namespace: shop}
spec:
  host: cart.shop.svc.cluster.local
  trafficPolicy: {tls: {mode: SIMPLE}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: cart, namespace: shop}
spec:
  parentRefs:
  - {group: "", kind: Service, name: cart, port: 80}
  - {group: "", kind: Service, name: lonely, namespace: plain}
  rules: [{backendRefs: [{name: cart, port: 80}]}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: to-waypoint, namespace: shop}
spec:
  parentRefs: [{name: waypoint}, {name: ingress}]
  rules: [{backendRefs: [{name: missing, port: 80}]}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: ingress-only, namespace: shop}
spec:
  parentRefs: [{name: ingress}]
`

func summary(sts []RouteStatus) []string {
	var out []string
	for _, st := range sts {
		if c := st.Condition; c != nil {
			out = append(out, fmt.Sprintf("%s: %s=%v %s: %s", st.Object, c.Type, c.Status, c.Reason, c.Message))
		}
		for _, p := range st.Parents {
			var cs []string
			for _, c := range p.Conditions {
				cs = append(cs, fmt.Sprintf("%s=%s %s: %s", c.Type, c.Status, c.Reason, c.Message))
			}
			kind := "Gateway"
			if p.ParentRef.Kind != nil {
				kind = string(*p.ParentRef.Kind)
			}
			out = append(out, fmt.Sprintf("%s: parent %s %s [%s] %s", st.Object, kind, p.ParentRef.Name, p.ControllerName, strings.Join(cs, "; ")))
		}
		if st.Condition == nil && len(st.Parents) == 0 {
			out = append(out, fmt.Sprintf("%s: no parent of ours", st.Object))
		}
	}
	return out
}

// Each L7 object gets what a user needs to know: applied by which
// waypoint, ignored in part and why, or served by no waypoint.
func TestRouteStatuses(t *testing.T) {
	snap := modeltest.Decode(t, []byte(routesInput))
	problems := []l7.Problem{
		{Object: l7.ObjectRef{Kind: "DestinationRule", Namespace: "shop", Name: "cart"}, Field: "spec.trafficPolicy.tls", Message: "not supported by the waypoint", Reason: l7.ReasonUnsupportedValue},
		{Object: l7.ObjectRef{Kind: "HTTPRoute", Namespace: "shop", Name: "to-waypoint"}, Field: "spec.rules[0].backendRefs[0]", Message: "Service shop/missing not found", Reason: l7.ReasonBackendNotFound},
		// In force: informational, never a failed condition.
		{Object: l7.ObjectRef{Kind: "VirtualService", Namespace: "shop", Name: "cart"}, Reason: l7.ReasonAccepted},
		{Object: l7.ObjectRef{Kind: "HTTPRoute", Namespace: "shop", Name: "cart"}, Field: "spec", Message: "overrides VirtualService shop/other", Reason: l7.ReasonConflicted},
	}
	got := summary(RouteStatuses(model.DefaultMesh(), snap, problems))
	want := []string{
		"VirtualService plain/private: WaypointAccepted=false WaypointNotFound: no host of [cart.shop.svc.cluster.local] is a Service bound to a waypoint (istio.io/use-waypoint) this object is exported to: not applied",
		"VirtualService plain/shared: WaypointAccepted=true Accepted: applied by waypoint shop/waypoint",
		"VirtualService shop/cart: WaypointAccepted=true Accepted: applied by waypoint shop/waypoint",
		"VirtualService shop/lonely: WaypointAccepted=false WaypointNotFound: no host of [lonely.plain.svc.cluster.local] is a Service bound to a waypoint (istio.io/use-waypoint) this object is exported to: not applied",
		"DestinationRule shop/cart: WaypointAccepted=false UnsupportedValue: spec.trafficPolicy.tls: not supported by the waypoint",
		"HTTPRoute shop/cart: parent Service cart [istio.io/gateway-controller] Accepted=True Accepted: Route was valid; ResolvedRefs=True ResolvedRefs: All references resolved",
		"HTTPRoute shop/cart: parent Service lonely [istio.io/gateway-controller] Accepted=False NoMatchingParent: Service plain/lonely is bound to no waypoint (no istio.io/use-waypoint label on it or its namespace); ResolvedRefs=True ResolvedRefs: All references resolved",
		"HTTPRoute shop/to-waypoint: parent Gateway waypoint [istio.io/gateway-controller] Accepted=True Accepted: Route was valid; ResolvedRefs=False BackendNotFound: spec.rules[0].backendRefs[0]: Service shop/missing not found",
		"GRPCRoute shop/ingress-only: no parent of ours",
	}
	if !slices.Equal(got, want) {
		t.Errorf("statuses:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

// With files (no API server) the statuses are logged, once per change.
func TestReportRoutesLogsChanges(t *testing.T) {
	var buf bytes.Buffer
	r := &Reporter{Log: slog.New(slog.NewTextHandler(&buf, nil)), Mesh: model.DefaultMesh()}
	snap := modeltest.Decode(t, []byte(routesInput))
	r.ReportRoutes(t.Context(), snap, nil)
	first := buf.String()
	for _, want := range []string{
		`msg="config accepted" object="VirtualService shop/cart"`,
		`msg="config problem" object="HTTPRoute shop/cart" parent=lonely condition=Accepted reason=NoMatchingParent`,
	} {
		if !strings.Contains(first, want) {
			t.Errorf("log lacks %q:\n%s", want, first)
		}
	}
	buf.Reset()
	r.ReportRoutes(t.Context(), snap, nil)
	if buf.Len() != 0 {
		t.Errorf("an unchanged report logged again:\n%s", buf.String())
	}
}
