package dir

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	securityv1beta1 "istio.io/api/security/v1beta1"
)

const nsAndPod = `apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: shop}
spec: {containers: [{name: app, image: app}]}
status: {podIP: 10.1.0.5}
`

const denyPolicy = `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-legacy, namespace: shop}
spec:
  action: DENY
  rules: [{from: [{source: {namespaces: [legacy]}}]}]
`

func write(t *testing.T, dir, name, content string) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestLoadNormalizesPods(t *testing.T) {
	d := t.TempDir()
	write(t, d, "mesh.yaml", nsAndPod)
	write(t, d, "README.md", "not config")
	u, err := (&Source{Dir: d}).Load()
	if err != nil || len(u.Errors) != 0 {
		t.Fatal(err, u.Errors)
	}
	if len(u.Snapshot.Pods) != 1 || u.Snapshot.Pods[0].UID == "" || u.Snapshot.Pods[0].Status.Phase != "Running" {
		t.Fatalf("pods = %+v", u.Snapshot.Pods)
	}
}

func TestBadEditKeepsTheLastGoodVersion(t *testing.T) {
	d := t.TempDir()
	write(t, d, "mesh.yaml", nsAndPod)
	write(t, d, "policy.yaml", denyPolicy)
	src := &Source{Dir: d}
	if _, err := src.Load(); err != nil {
		t.Fatal(err)
	}

	// A typo in the policy's action: rejected, and the DENY keeps serving.
	write(t, d, "policy.yaml", strings.Replace(denyPolicy, "action: DENY", "action: DENNY", 1))
	files, _, err := src.read()
	if err != nil {
		t.Fatal(err)
	}
	u := src.decode(files)
	if len(u.Errors) != 1 || !strings.Contains(u.Errors[0].Error(), "policy.yaml: document 1") || !strings.Contains(u.Errors[0].Error(), "DENNY") {
		t.Fatalf("errors = %v, want one naming policy.yaml and the bad value", u.Errors)
	}
	if len(u.Kept) != 1 || u.Kept[0].String() != "AuthorizationPolicy shop/deny-legacy" {
		t.Fatalf("kept = %v", u.Kept)
	}
	if aps := u.Snapshot.AuthorizationPolicies; len(aps) != 1 || aps[0].Spec.Action != securityv1beta1.AuthorizationPolicy_DENY {
		t.Fatalf("policies served = %v, want the last good DENY", aps)
	}

	// Removing the file removes the policy: deletion is not an error.
	os.Remove(filepath.Join(d, "policy.yaml"))
	files, _, _ = src.read()
	if u := src.decode(files); len(u.Snapshot.AuthorizationPolicies) != 0 || len(u.Errors) != 0 {
		t.Fatalf("after delete: %d policies, errors %v", len(u.Snapshot.AuthorizationPolicies), u.Errors)
	}
}

func TestRunPublishesChanges(t *testing.T) {
	d := t.TempDir()
	write(t, d, "mesh.yaml", nsAndPod)
	updates := make(chan *Update, 10)
	src := &Source{Dir: d, Interval: 10 * time.Millisecond}
	go src.Run(t.Context(), func(u *Update) { updates <- u })
	first := <-updates
	if len(first.Snapshot.AuthorizationPolicies) != 0 {
		t.Fatal("policy before it was written")
	}
	write(t, d, "policy.yaml", denyPolicy)
	select {
	case u := <-updates:
		if len(u.Snapshot.AuthorizationPolicies) != 1 {
			t.Fatalf("after writing a policy: %d policies", len(u.Snapshot.AuthorizationPolicies))
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no update after a file was written")
	}
	select {
	case u := <-updates:
		t.Fatalf("a second update with nothing changed: %+v", u)
	case <-time.After(100 * time.Millisecond):
	}
}
