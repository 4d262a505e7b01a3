package status

import (
	"slices"
	"strings"
	"testing"

	"github.com/zmesh/zmesh/controlplane/l7"
	"github.com/zmesh/zmesh/controlplane/model"
	"github.com/zmesh/zmesh/controlplane/model/modeltest"
)

// A consumer route (the Gateway API conformance suite's
// MeshConsumerRoute: an HTTPRoute of another namespace for a Service,
// sending to that Service without a ReferenceGrant) is in force on the
// Service's waypoint: Accepted and ResolvedRefs on its parent, as a
// producer route is.
func TestConsumerRouteStatus(t *testing.T) {
	snap := modeltest.Decode(t, []byte(`
apiVersion: v1
kind: Namespace
metadata: {name: gateway-conformance-mesh, labels: {istio.io/dataplane-mode: ambient, istio.io/use-waypoint: namespace}}
---
apiVersion: v1
kind: Namespace
metadata: {name: gateway-conformance-mesh-consumer, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: namespace, namespace: gateway-conformance-mesh}
spec:
  gatewayClassName: istio-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
---
apiVersion: v1
kind: Service
metadata: {name: echo-v1, namespace: gateway-conformance-mesh}
spec:
  clusterIP: 10.96.7.1
  selector: {app: echo, version: v1}
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: mesh-echo-add-header, namespace: gateway-conformance-mesh-consumer}
spec:
  parentRefs:
  - {group: "", kind: Service, name: echo-v1, namespace: gateway-conformance-mesh}
  rules:
  - filters:
    - type: ResponseHeaderModifier
      responseHeaderModifier:
        set: [{name: X-Header-Set, value: set}]
    backendRefs:
    - {name: echo-v1, namespace: gateway-conformance-mesh, port: 80}
`))
	var problems []l7.Problem
	for _, gw := range snap.Gateways {
		problems = append(problems, l7.Build(l7.Options{Mesh: model.DefaultMesh()}, snap, gw).Problems...)
	}
	got := summary(RouteStatuses(model.DefaultMesh(), snap, problems))
	want := []string{
		"HTTPRoute gateway-conformance-mesh-consumer/mesh-echo-add-header: parent Service echo-v1 [istio.io/gateway-controller] Accepted=True Accepted: Route was valid; ResolvedRefs=True ResolvedRefs: All references resolved",
	}
	if !slices.Equal(got, want) {
		t.Errorf("statuses:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}
