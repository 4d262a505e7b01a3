package status

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	istioclient "istio.io/client-go/pkg/clientset/versioned"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
	gatewayclient "sigs.k8s.io/gateway-api/pkg/client/clientset/versioned"

	"github.com/zmesh/zmesh/controlplane/l7"
	"github.com/zmesh/zmesh/controlplane/model"
	"github.com/zmesh/zmesh/controlplane/model/modeltest"
	"github.com/zmesh/zmesh/internal/kubetest"
	"github.com/zmesh/zmesh/internal/testutil"
)

const kubeObjects = `
apiVersion: v1
kind: Namespace
metadata: {name: shop}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: shop}
spec:
  gatewayClassName: istio-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
---
apiVersion: v1
kind: Service
metadata: {name: cart, namespace: shop}
spec: {selector: {app: cart}, ports: [{name: http, port: 80}]}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: cart, namespace: shop}
spec:
  host: cart.shop.svc.cluster.local
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: cart, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: cart, port: 80}]
  rules: [{backendRefs: [{name: cart, port: 80}]}]
`

// TestStatusOnKubernetes writes, as zmeshd's service account
// (deploy/rbac), the status of a DestinationRule and an HTTPRoute to a real
// API server: first what is wrong (a field the waypoint cannot honour; a
// Service bound to no waypoint), then, once fixed, Accepted. Another
// controller's parent status on the route is left alone.
func TestStatusOnKubernetes(t *testing.T) {
	env := kubetest.ForTest(t)
	ctx := t.Context()
	env.MustKubectl(t, "", "apply", "--server-side", "-f", "../../deploy/crds/")
	env.MustKubectl(t, "", "apply", "-f", "../../deploy/rbac/")
	if err := env.WaitEstablished(t.Context(), 60*time.Second, "httproutes.gateway.networking.k8s.io", "destinationrules.networking.istio.io", "gateways.gateway.networking.k8s.io"); err != nil {
		t.Fatal(err)
	}
	env.MustKubectl(t, kubeObjects, "apply", "-f", "-")

	cfg := env.AsServiceAccount("istio-system", "zmeshd")
	ic, err := istioclient.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	gc, err := gatewayclient.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	admin, err := gatewayclient.NewForConfig(env.Config)
	if err != nil {
		t.Fatal(err)
	}
	// Another controller's parent, which must survive our writes.
	route, err := admin.GatewayV1().HTTPRoutes("shop").Get(ctx, "cart", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	route.Status.Parents = []gatewayv1.RouteParentStatus{{
		ParentRef: gatewayv1.ParentReference{Name: "edge"}, ControllerName: "example.com/other",
		Conditions: []metav1.Condition{{Type: "Accepted", Status: metav1.ConditionTrue, Reason: "Accepted", LastTransitionTime: metav1.Now()}},
	}}
	if _, err := admin.GatewayV1().HTTPRoutes("shop").UpdateStatus(ctx, route, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}

	r := &Reporter{Log: slog.New(slog.DiscardHandler), Istio: ic, Gateway: gc, Mesh: model.DefaultMesh()}
	// Broken: the namespace binds nothing to the waypoint, and the rule
	// has a field the waypoint refuses.
	snap := modeltest.Decode(t, []byte(kubeObjects))
	tls := []l7.Problem{{Object: l7.ObjectRef{Kind: "DestinationRule", Namespace: "shop", Name: "cart"}, Field: "spec.trafficPolicy.tls", Message: "not supported by the waypoint"}}
	r.ReportRoutes(ctx, snap, tls)
	waitDR(t, ic, "False", "UnsupportedValue", "spec.trafficPolicy.tls")
	waitRoute(t, admin, "False", "NoMatchingParent", "bound to no waypoint")

	// Fixed: the namespace is bound, the field is gone.
	snap = modeltest.Decode(t, []byte(strings.Replace(kubeObjects, "metadata: {name: shop}", "metadata: {name: shop, labels: {istio.io/use-waypoint: waypoint}}", 1)))
	r.ReportRoutes(ctx, snap, nil)
	waitDR(t, ic, "True", "Accepted", "shop/waypoint")
	route = waitRoute(t, admin, "True", "Accepted", "Route was valid")
	if len(route.Status.Parents) != 2 || route.Status.Parents[0].ControllerName != "example.com/other" {
		t.Errorf("route parents %+v: want the other controller's kept, and ours", route.Status.Parents)
	}
}

func waitDR(t *testing.T, ic istioclient.Interface, status, reason, msg string) {
	t.Helper()
	testutil.Eventually(t, 20*time.Second, "DestinationRule status", func() error {
		dr, err := ic.NetworkingV1().DestinationRules("shop").Get(context.Background(), "cart", metav1.GetOptions{})
		if err != nil {
			return err
		}
		for _, c := range dr.Status.GetConditions() {
			if c.GetType() == WaypointAccepted && c.GetStatus() == status && c.GetReason() == reason && strings.Contains(c.GetMessage(), msg) {
				return nil
			}
		}
		return fmt.Errorf("conditions %v, want %s=%s %s %q", dr.Status.GetConditions(), WaypointAccepted, status, reason, msg)
	})
}

func waitRoute(t *testing.T, gc gatewayclient.Interface, status, reason, msg string) *gatewayv1.HTTPRoute {
	t.Helper()
	var route *gatewayv1.HTTPRoute
	testutil.Eventually(t, 20*time.Second, "HTTPRoute status", func() error {
		var err error
		route, err = gc.GatewayV1().HTTPRoutes("shop").Get(context.Background(), "cart", metav1.GetOptions{})
		if err != nil {
			return err
		}
		for _, p := range route.Status.Parents {
			if p.ControllerName != ControllerName || p.ParentRef.Name != "cart" {
				continue
			}
			for _, c := range p.Conditions {
				if c.Type == "Accepted" && string(c.Status) == status && c.Reason == reason && strings.Contains(c.Message, msg) {
					return nil
				}
			}
		}
		return fmt.Errorf("parents %+v, want Accepted=%s %s %q", route.Status.Parents, status, reason, msg)
	})
	return route
}
