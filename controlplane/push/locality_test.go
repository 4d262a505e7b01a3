package push

import (
	"net/netip"
	"slices"
	"testing"

	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"

	"github.com/zmesh/zmesh/controlplane/l7"
	"github.com/zmesh/zmesh/controlplane/model"
	"github.com/zmesh/zmesh/controlplane/model/modeltest"
	"github.com/zmesh/zmesh/controlplane/xds"
)

const localities = `
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {istio.io/dataplane-mode: ambient, istio.io/use-waypoint: waypoint}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: shop}
spec:
  gatewayClassName: istio-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
---
apiVersion: v1
kind: Node
metadata: {name: west, labels: {topology.kubernetes.io/region: us, topology.kubernetes.io/zone: west}}
---
apiVersion: v1
kind: Node
metadata: {name: east, labels: {topology.kubernetes.io/region: us, topology.kubernetes.io/zone: east}}
---
apiVersion: v1
kind: Node
metadata: {name: plain}
---
apiVersion: v1
kind: Service
metadata: {name: cart, namespace: shop}
spec:
  clusterIP: 10.96.1.2
  selector: {app: cart}
  ports: [{name: http, port: 80}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: cart, namespace: shop}
spec:
  host: cart
  trafficPolicy:
    outlierDetection: {consecutive5xxErrors: 3}
---
apiVersion: v1
kind: Pod
metadata: {name: cart-west, namespace: shop, labels: {app: cart}}
spec: {nodeName: west}
status: {podIP: 10.244.1.1}
---
apiVersion: v1
kind: Pod
metadata: {name: cart-east, namespace: shop, labels: {app: cart}}
spec: {nodeName: east}
status: {podIP: 10.244.2.1}
---
# Two replicas in the west share a view; one in the east has its own.
apiVersion: v1
kind: Pod
metadata: {name: waypoint-1, namespace: shop, labels: {gateway.networking.k8s.io/gateway-name: waypoint}}
spec: {nodeName: west, serviceAccountName: waypoint}
status: {podIP: 10.244.1.10}
---
apiVersion: v1
kind: Pod
metadata: {name: waypoint-2, namespace: shop, labels: {gateway.networking.k8s.io/gateway-name: waypoint}}
spec: {nodeName: west, serviceAccountName: waypoint}
status: {podIP: 10.244.1.11}
---
apiVersion: v1
kind: Pod
metadata: {name: waypoint-3, namespace: shop, labels: {gateway.networking.k8s.io/gateway-name: waypoint}}
spec: {nodeName: east, serviceAccountName: waypoint}
status: {podIP: 10.244.2.10}
---
# On a node without topology: served the view without locality.
apiVersion: v1
kind: Pod
metadata: {name: waypoint-4, namespace: shop, labels: {gateway.networking.k8s.io/gateway-name: waypoint}}
spec: {nodeName: plain, serviceAccountName: waypoint}
status: {podIP: 10.244.3.10}
---
# Labelled as the Gateway's pod but running as another identity: never
# placed in its views.
apiVersion: v1
kind: Pod
metadata: {name: impostor, namespace: shop, labels: {gateway.networking.k8s.io/gateway-name: waypoint}}
spec: {nodeName: east, serviceAccountName: cart}
status: {podIP: 10.244.2.66}
`

// TestBuildViewsPerLocality: a Gateway gets a view without locality and one
// per locality of its pods (replicas in one locality share it); its pods'
// addresses are located in their locality's view, except a pod of another
// identity or of no known locality; each locality view prioritises the
// endpoints of its own zone, and shares the listener and routes of the
// view without locality.
func TestBuildViewsPerLocality(t *testing.T) {
	snap := modeltest.Decode(t, []byte(localities))
	views, located, _ := BuildViews(l7.Options{Mesh: model.DefaultMesh()}, snap)
	base := xds.ViewKey{Namespace: "shop", Name: "waypoint"}
	west, east := base, base
	west.Locality, east.Locality = "us/west/", "us/east/"
	if len(views) != 3 || views[base] == nil || views[west] == nil || views[east] == nil {
		t.Fatalf("views %v, want %s, %s and %s", slices.Collect(mapsKeys(views)), base, west, east)
	}
	want := map[netip.Addr]xds.ViewKey{
		netip.MustParseAddr("10.244.1.10"): west, netip.MustParseAddr("10.244.1.11"): west, netip.MustParseAddr("10.244.2.10"): east,
	}
	if len(located) != len(want) {
		t.Errorf("located %v, want %v", located, want)
	}
	for a, k := range want {
		if located[a] != k {
			t.Errorf("%s located in %q, want %s", a, located[a], k)
		}
	}
	const cluster = "inbound-vip|80|http|cart.shop.svc.cluster.local"
	first := func(k xds.ViewKey) (string, int) {
		la := views[k][xds.TypeEndpoint][cluster].(*endpointv3.ClusterLoadAssignment)
		for _, g := range la.Endpoints {
			if g.Priority == 0 {
				return g.LbEndpoints[0].GetEndpoint().GetAddress().GetSocketAddress().GetAddress(), len(la.Endpoints)
			}
		}
		return "", len(la.Endpoints)
	}
	if ep, n := first(west); ep != "10.244.1.1" || n != 2 {
		t.Errorf("west view: priority 0 is %q of %d groups, want 10.244.1.1 of 2", ep, n)
	}
	if ep, _ := first(east); ep != "10.244.2.1" {
		t.Errorf("east view: priority 0 is %q, want 10.244.2.1", ep)
	}
	for name, l := range views[base][xds.TypeListener] {
		if views[west][xds.TypeListener][name] != l {
			t.Errorf("listener %s is built again for the locality view", name)
		}
	}
	la := views[base][xds.TypeEndpoint][cluster].(*endpointv3.ClusterLoadAssignment)
	for _, g := range la.Endpoints {
		if g.Priority != 0 {
			t.Errorf("the view without locality has priority %d", g.Priority)
		}
	}
}

func mapsKeys[K comparable, V any](m map[K]V) func(func(K) bool) {
	return func(yield func(K) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}
