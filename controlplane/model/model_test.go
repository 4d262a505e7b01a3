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
kind: ConfigMap
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
	if !strings.Contains(errs[1].Error(), "ConfigMap") || !strings.Contains(errs[1].Error(), "document 4") {
		t.Errorf("second error = %v, want document 4 naming ConfigMap", errs[1])
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
