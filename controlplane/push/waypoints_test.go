package push

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/zmesh/zmesh/controlplane/l7"
	"github.com/zmesh/zmesh/controlplane/model"
	"github.com/zmesh/zmesh/controlplane/model/modeltest"
	"github.com/zmesh/zmesh/controlplane/translate"
	"github.com/zmesh/zmesh/controlplane/xds"
)

const twoWaypoints = `
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {istio.io/use-waypoint: waypoint}}
---
apiVersion: v1
kind: Namespace
metadata: {name: bank}
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
metadata: {name: vault-wp, namespace: bank}
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
spec:
  clusterIP: 10.96.1.2
  selector: {app: cart}
  ports: [{name: http, port: 80}]
---
apiVersion: v1
kind: Service
metadata: {name: vault, namespace: bank, labels: {istio.io/use-waypoint: vault-wp}}
spec:
  clusterIP: 10.96.2.2
  selector: {app: vault}
  ports: [{name: http, port: 80}]
`

type routeProblems chan []l7.Problem

func (r routeProblems) ReportRoutes(_ context.Context, _ *model.Snapshot, ps []l7.Problem) { r <- ps }

// Each waypoint Gateway gets a view of its own Services only; a Gateway of
// another class gets none.
func TestPipelineBuildsOneViewPerWaypoint(t *testing.T) {
	srv := xds.New(nil, nil, xds.TypeAddress, xds.TypeAuthorization)
	if err := srv.ServeViews(xds.EnvoyTypes...); err != nil {
		t.Fatal(err)
	}
	rep := routeProblems(make(chan []l7.Problem, 4))
	p := &Pipeline{XDS: srv, Options: translate.Options{Mesh: model.DefaultMesh()}, Waypoints: true, RouteReporter: rep}
	go p.Run(t.Context())
	p.Update(modeltest.Decode(t, []byte(twoWaypoints)))
	select {
	case <-rep:
	case <-time.After(10 * time.Second):
		t.Fatal("no waypoint build reported")
	}
	if got, want := srv.Views(), []xds.ViewKey{{Namespace: "bank", Name: "vault-wp"}, {Namespace: "shop", Name: "waypoint"}}; !slices.Equal(got, want) {
		t.Fatalf("views %v, want %v", got, want)
	}
	for key, want := range map[xds.ViewKey]string{
		{Namespace: "shop", Name: "waypoint"}: "inbound-vip|80|http|cart.shop.svc.cluster.local",
		{Namespace: "bank", Name: "vault-wp"}: "inbound-vip|80|http|vault.bank.svc.cluster.local",
	} {
		if got := srv.ViewResources(key, xds.TypeCluster); !slices.Equal(got, []string{want}) {
			t.Errorf("view %s: clusters %v, want [%s]", key, got, want)
		}
		if got := srv.ViewResources(key, xds.TypeEndpoint); !slices.Equal(got, []string{want}) {
			t.Errorf("view %s: endpoints %v, want [%s]", key, got, want)
		}
	}

	// A new snapshot rebuilds the views: vault leaves its waypoint, whose
	// view empties; the Gateway of shop goes, and so does its view.
	next := strings.Replace(twoWaypoints, "labels: {istio.io/use-waypoint: vault-wp}", "labels: {}", 1)
	next = strings.Replace(next, "metadata: {name: waypoint, namespace: shop}\nspec:\n  gatewayClassName: istio-waypoint", "metadata: {name: waypoint, namespace: shop}\nspec:\n  gatewayClassName: istio", 1)
	p.Update(modeltest.Decode(t, []byte(next)))
	select {
	case <-rep:
	case <-time.After(10 * time.Second):
		t.Fatal("no second build reported")
	}
	if got, want := srv.Views(), []xds.ViewKey{{Namespace: "bank", Name: "vault-wp"}}; !slices.Equal(got, want) {
		t.Errorf("views after the change %v, want %v", got, want)
	}
	if got := srv.ViewResources(xds.ViewKey{Namespace: "bank", Name: "vault-wp"}, xds.TypeCluster); len(got) != 0 {
		t.Errorf("vault-wp still has clusters %v after vault left it", got)
	}
}

// waypointMesh is bigMesh with a waypoint per namespace serving its
// Services (enrolled: the pods carry the redirection annotation).
func waypointMesh() *model.Snapshot {
	s := bigMesh()
	for i, ns := range s.Namespaces {
		ns = ns.DeepCopy()
		ns.Labels[model.LabelUseWaypoint] = "waypoint"
		s.Namespaces[i] = ns
		s.Gateways = append(s.Gateways, &gatewayv1.Gateway{
			ObjectMeta: metav1.ObjectMeta{Name: "waypoint", Namespace: ns.Name},
			Spec:       gatewayv1.GatewaySpec{GatewayClassName: model.WaypointClass},
		})
	}
	s.Sort()
	return s
}

// BenchmarkWaypointViews is one snapshot's waypoint work on bigMesh with a
// waypoint per namespace: every Gateway built once and its view diffed
// against the previous one (nothing changed: the cost every push pays).
func BenchmarkWaypointViews(b *testing.B) {
	snap := waypointMesh()
	srv := xds.New(nil, nil)
	if err := srv.ServeViews(xds.EnvoyTypes...); err != nil {
		b.Fatal(err)
	}
	opts := l7.Options{Mesh: model.DefaultMesh()}
	views, _, _ := BuildViews(opts, snap)
	if _, _, err := srv.SetViews(views); err != nil {
		b.Fatal(err)
	}
	resources := 0
	for _, v := range views {
		for _, m := range v {
			resources += len(m)
		}
	}
	b.ReportAllocs()
	for b.Loop() {
		views, _, _ := BuildViews(opts, snap)
		if c, r, err := srv.SetViews(views); err != nil || c+r != 0 {
			b.Fatalf("SetViews: %d changed, %d removed, %v", c, r, err)
		}
	}
	b.ReportMetric(float64(len(views)), "waypoints")
	b.ReportMetric(float64(resources), "resources")
}
