package dir

import (
	"errors"
	"maps"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	securityv1beta1 "istio.io/api/security/v1beta1"

	"github.com/zmesh/zmesh/controlplane/model"
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

const allowPolicy = `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-shop, namespace: shop}
spec:
  rules: [{from: [{source: {namespaces: [shop]}}]}]
`

// reread decodes the directory as Run does after a change.
func reread(t *testing.T, src *Source) *Update {
	t.Helper()
	files, _, err := src.read()
	if err != nil {
		t.Fatal(err)
	}
	return src.decode(files)
}

func policyActions(u *Update) map[string]string {
	out := map[string]string{}
	for _, p := range u.Snapshot.AuthorizationPolicies {
		out[p.Name] = p.Spec.Action.String()
	}
	return out
}

func TestBrokenDocumentKeepsEveryObjectOfItsFile(t *testing.T) {
	both := denyPolicy + "---\n" + allowPolicy
	for _, tc := range []struct {
		name, edit string
		want       map[string]string
	}{
		{"yaml syntax error", strings.Replace(both, "rules: [{from: [{source: {namespaces: [legacy]}}]}]", "rules: [{from: [{source: {namespaces: [legacy]}}]", 1),
			map[string]string{"deny-legacy": "DENY", "allow-shop": "ALLOW"}},
		{"tab indentation", strings.Replace(both, "  action: DENY", "\taction: DENY", 1),
			map[string]string{"deny-legacy": "DENY", "allow-shop": "ALLOW"}},
		{"typo in the kind", strings.Replace(both, "kind: AuthorizationPolicy\nmetadata: {name: deny-legacy", "kind: AuthorizationPolcy\nmetadata: {name: deny-legacy", 1),
			map[string]string{"deny-legacy": "DENY", "allow-shop": "ALLOW"}},
		{"bad value", strings.Replace(both, "action: DENY", "action: DENNY", 1),
			map[string]string{"deny-legacy": "DENY", "allow-shop": "ALLOW"}},
		{"typo in the name and a bad value", strings.Replace(both, "name: deny-legacy, namespace: shop}\nspec:\n  action: DENY", "name: deny-legacyy, namespace: shop}\nspec:\n  action: DENNY", 1),
			map[string]string{"deny-legacy": "DENY", "allow-shop": "ALLOW"}},
		// The other document's good edit is served; the broken one keeps
		// its last good version.
		{"good edit beside a broken document", strings.Replace(both, "namespaces: [legacy]}}]}]", "namespaces: [legacy]}}]", 1) + "---\n" +
			strings.Replace(allowPolicy, "allow-shop", "allow-ops", 1),
			map[string]string{"deny-legacy": "DENY", "allow-shop": "ALLOW", "allow-ops": "ALLOW"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := t.TempDir()
			write(t, d, "mesh.yaml", nsAndPod)
			write(t, d, "policy.yaml", both)
			src := &Source{Dir: d}
			if u, err := src.Load(); err != nil || len(u.Errors) != 0 || len(u.Snapshot.AuthorizationPolicies) != 2 {
				t.Fatalf("first load: %v %v", err, u)
			}
			write(t, d, "policy.yaml", tc.edit)
			u := reread(t, src)
			if len(u.Errors) != 1 || !strings.Contains(u.Errors[0].Error(), "policy.yaml: document 1") {
				t.Errorf("errors = %v, want one naming policy.yaml's first document", u.Errors)
			}
			if got := policyActions(u); !maps.Equal(got, tc.want) {
				t.Errorf("policies served = %v, want %v", got, tc.want)
			}
			// Kept again at the next read: what was kept is remembered.
			write(t, d, "mesh.yaml", nsAndPod+"\n# touched\n")
			if got := policyActions(reread(t, src)); !maps.Equal(got, tc.want) {
				t.Errorf("next read serves %v, want %v", got, tc.want)
			}
			// Fixed: served as written, the removed document gone.
			write(t, d, "policy.yaml", allowPolicy)
			u = reread(t, src)
			if got := policyActions(u); len(u.Errors) != 0 || !maps.Equal(got, map[string]string{"allow-shop": "ALLOW"}) {
				t.Errorf("after the fix: policies %v, errors %v", got, u.Errors)
			}
		})
	}
}

func TestUnreadKindDoesNotHoldDeletions(t *testing.T) {
	d := t.TempDir()
	const secret = "apiVersion: v1\nkind: Secret\nmetadata: {name: notes, namespace: shop}\nstringData: {a: b}\n"
	write(t, d, "all.yaml", nsAndPod+"---\n"+secret+"---\n"+denyPolicy)
	src := &Source{Dir: d}
	u, err := src.Load()
	if err != nil || len(u.Errors) != 1 || !errors.Is(u.Errors[0], model.ErrKindNotRead) {
		t.Fatalf("load: %v, errors %v, want the Secret reported as not read", err, u.Errors)
	}
	write(t, d, "all.yaml", nsAndPod+"---\n"+secret)
	if u := reread(t, src); len(u.Snapshot.AuthorizationPolicies) != 0 || len(u.Kept) != 0 {
		t.Fatalf("policy removed from a file whose only error is an unread kind: served %v, kept %v", policyActions(u), u.Kept)
	}
}

func TestLastGoodVersionsSurviveARestart(t *testing.T) {
	d, state := t.TempDir(), t.TempDir()
	write(t, d, "mesh.yaml", nsAndPod)
	write(t, d, "policy.yaml", denyPolicy+"---\n"+allowPolicy)
	if _, err := (&Source{Dir: d, StateDir: state}).Load(); err != nil {
		t.Fatal(err)
	}

	// zmeshd stops; the file is broken meanwhile; zmeshd starts again.
	write(t, d, "policy.yaml", "apiVersion: security.istio.io/v1\nkind: [\n")
	u, err := (&Source{Dir: d, StateDir: state}).Load()
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"deny-legacy": "DENY", "allow-shop": "ALLOW"}
	if got := policyActions(u); !maps.Equal(got, want) {
		t.Fatalf("after a restart with a broken file: %v, want the last good %v", got, want)
	}
	if len(u.Snapshot.Pods) != 1 || len(u.Kept) != 2 {
		t.Errorf("pods %d, kept %v", len(u.Snapshot.Pods), u.Kept)
	}

	// Without the state, nothing to keep: what the restart would lose.
	if u, _ := (&Source{Dir: d}).Load(); len(u.Snapshot.AuthorizationPolicies) != 0 {
		t.Fatalf("no state dir, yet %v", policyActions(u))
	}
	// A state written for another directory is not served.
	other := t.TempDir()
	write(t, other, "policy.yaml", "kind: [\n")
	if u, _ := (&Source{Dir: other, StateDir: state}).Load(); len(u.Snapshot.AuthorizationPolicies) != 0 {
		t.Fatalf("another directory's state served: %v", policyActions(u))
	}

	// Once fixed, the state follows: a later restart serves the fix.
	write(t, d, "policy.yaml", allowPolicy)
	if _, err := (&Source{Dir: d, StateDir: state}).Load(); err != nil {
		t.Fatal(err)
	}
	write(t, d, "policy.yaml", "kind: [\n")
	u, _ = (&Source{Dir: d, StateDir: state}).Load()
	if got := policyActions(u); !maps.Equal(got, map[string]string{"allow-shop": "ALLOW"}) {
		t.Fatalf("after fix, restart, break: %v", got)
	}
}
