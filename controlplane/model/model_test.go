package model

import (
	"errors"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
)

const mixed = `
# a namespace
apiVersion: v1
kind: Namespace
metadata:
  name: shop
  labels: {istio.io/dataplane-mode: ambient}
---
# only a comment
---
apiVersion: security.istio.io/v1beta1
kind: AuthorizationPolicy
metadata: {name: allow-nothing, namespace: shop}
spec: {}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: strict, namespace: shop}
spec:
  mtls: {mode: STRICT}
  bogus: 1
---
apiVersion: v1
kind: Secret
metadata: {name: x, namespace: shop}
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: shop}
spec:
  containers: [{name: app, image: app}]
status: {podIP: 10.0.0.5}
`

func TestDecodeKeepsGoodDocumentsAndNamesBadOnes(t *testing.T) {
	var s Snapshot
	errs := s.Decode(strings.NewReader(mixed), "mesh.yaml")
	if len(s.Namespaces) != 1 || len(s.AuthorizationPolicies) != 1 || len(s.Pods) != 1 {
		t.Fatalf("decoded %d namespaces, %d policies, %d pods; want 1 each", len(s.Namespaces), len(s.AuthorizationPolicies), len(s.Pods))
	}
	if len(s.PeerAuthentications) != 0 {
		t.Errorf("a PeerAuthentication with an unknown field was kept")
	}
	if len(errs) != 2 {
		t.Fatalf("errors = %v, want 2 (unknown field, unread kind)", errs)
	}
	var de *DecodeError
	if !errors.As(errs[0], &de) || de.Doc != 3 || !strings.Contains(errs[0].Error(), "bogus") {
		t.Errorf("first error = %v, want document 3 naming the field bogus", errs[0])
	}
	if !strings.Contains(errs[1].Error(), "Secret") || !strings.Contains(errs[1].Error(), "document 4") {
		t.Errorf("second error = %v, want document 4 naming Secret", errs[1])
	}
	if s.AuthorizationPolicies[0].Name != "allow-nothing" {
		t.Errorf("v1beta1 policy stored as %q", s.AuthorizationPolicies[0].Name)
	}
}

func TestNormalizeFilePod(t *testing.T) {
	var s Snapshot
	if errs := s.Decode(strings.NewReader(mixed), "mesh.yaml"); len(errs) != 2 {
		t.Fatal(errs)
	}
	p := s.Pods[0]
	NormalizeFilePod(p)
	if p.UID != FilePodUID("shop", "web") || p.UID == FilePodUID("shop", "web2") {
		t.Errorf("uid %q is not the stable UUIDv5 of shop/web", p.UID)
	}
	if p.Status.Phase != corev1.PodRunning || len(p.Status.PodIPs) != 1 || p.Status.PodIPs[0].IP != "10.0.0.5" {
		t.Errorf("status = %+v, want Running with podIPs [10.0.0.5]", p.Status)
	}
}

func TestSnapshotNamespaceLookup(t *testing.T) {
	var s Snapshot
	s.Decode(strings.NewReader(mixed+"---\napiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n"), "x")
	s.Sort()
	if s.Namespace("shop") == nil || s.Namespace("a") == nil || s.Namespace("zzz") != nil {
		t.Errorf("Namespace lookup wrong over %v", s.Namespaces)
	}
}

const l7 = `apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata: {name: reviews, namespace: shop}
spec:
  hosts: [reviews]
  http: [{route: [{destination: {host: reviews, subset: v2}}]}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: shop}
spec: {host: reviews, subsets: [{name: v2, labels: {version: v2}}]}
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: jwt, namespace: shop}
spec: {jwtRules: [{issuer: "https://issuer.example"}]}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: ingress, namespace: shop}
spec: {servers: [{port: {number: 80, name: http, protocol: HTTP}, hosts: ["*"]}]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: reviews, namespace: shop}
spec: {parentRefs: [{name: reviews, kind: Service, group: ""}]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: echo, namespace: shop}
spec: {}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: typo, namespace: shop}
spec: {hostz: [reviews]}
`

func TestDecodeReadsTheL7Kinds(t *testing.T) {
	var s Snapshot
	errs := s.Decode(strings.NewReader(l7), "l7.yaml")
	if len(s.VirtualServices) != 1 || len(s.DestinationRules) != 1 || len(s.RequestAuthentications) != 1 ||
		len(s.IstioGateways) != 1 || len(s.HTTPRoutes) != 1 || len(s.GRPCRoutes) != 1 || len(s.Gateways) != 0 {
		t.Fatalf("decoded %d VS, %d DR, %d RA, %d Istio gateways, %d HTTPRoutes, %d GRPCRoutes, %d Gateway API gateways",
			len(s.VirtualServices), len(s.DestinationRules), len(s.RequestAuthentications), len(s.IstioGateways), len(s.HTTPRoutes), len(s.GRPCRoutes), len(s.Gateways))
	}
	if len(errs) != 1 || !strings.Contains(errs[0].Error(), "hostz") {
		t.Errorf("errors = %v, want one naming the unknown field hostz", errs)
	}
	if s.VirtualServices[0].Spec.Http[0].Route[0].Destination.Subset != "v2" {
		t.Errorf("v1alpha3 VirtualService not kept whole: %v", s.VirtualServices[0].Spec.String())
	}
}

// An object the API server would refuse for its name is refused here too:
// translation keys everything by namespace/name.
func TestDecodeRejectsBadNames(t *testing.T) {
	for _, tc := range []struct{ doc, want string }{
		{"apiVersion: v1\nkind: Service\nmetadata: {namespace: app}\nspec: {selector: {app: web}}", "metadata.name: missing"},
		{"apiVersion: v1\nkind: Pod\nmetadata: {name: a/b, namespace: app}", `metadata.name: "a/b"`},
		{"apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p, namespace: Bad_NS}", `metadata.namespace: "Bad_NS"`},
	} {
		s := &Snapshot{}
		errs := s.Decode(strings.NewReader(tc.doc), "f.yaml")
		if len(errs) != 1 || !strings.Contains(errs[0].Error(), tc.want) || len(s.Services)+len(s.Pods)+len(s.AuthorizationPolicies) != 0 {
			t.Errorf("%q: errors %v, want one with %q and nothing added", tc.doc, errs, tc.want)
		}
	}
}
