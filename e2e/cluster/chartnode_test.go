package cluster

import (
	"os"
	"path/filepath"
	"reflect"
	"testing"
)

// TestResolveIn: links inside a process's root resolve against that root,
// absolute or relative, also through several; a missing file is an error.
func TestResolveIn(t *testing.T) {
	root := t.TempDir()
	for _, d := range []string{"run/secrets/tokens", "etc"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(root, "run/secrets/tokens/istio-token"), []byte("t"), 0o600); err != nil {
		t.Fatal(err)
	}
	os.MkdirAll(filepath.Join(root, "var"), 0o755)
	must := func(err error) {
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.Symlink("/run", filepath.Join(root, "var/run")))
	must(os.Symlink("../var/run/secrets", filepath.Join(root, "etc/secrets")))
	must(os.Symlink("/etc/secrets", filepath.Join(root, "secrets")))
	want := filepath.Join(root, "run/secrets/tokens/istio-token")
	for _, path := range []string{"/var/run/secrets/tokens/istio-token", "/etc/secrets/tokens/istio-token", "/secrets/tokens/istio-token", "/run/./secrets/tokens/istio-token"} {
		got, err := resolveIn(root, path)
		if err != nil || got != want {
			t.Errorf("resolveIn(%s) = %q, %v; want %q", path, got, err, want)
		}
	}
	if _, err := resolveIn(root, "/var/run/secrets/tokens/none"); err == nil {
		t.Error("a missing file resolved")
	}
	must(os.Symlink("/loop", filepath.Join(root, "loop")))
	if _, err := resolveIn(root, "/loop/x"); err == nil {
		t.Error("a link loop resolved")
	}
}

// TestMergeValues: tables merge key by key at every depth, other values
// replace, new keys are added.
func TestMergeValues(t *testing.T) {
	dst := map[string]any{
		"global":  map[string]any{"hub": "zmesh", "tag": "e2e"},
		"zmeshd":  map[string]any{"replicas": 1, "resources": map[string]any{"limits": "1Gi"}},
		"ztunnel": map[string]any{"drainGraceSeconds": 2},
	}
	mergeValues(dst, map[string]any{
		"global":  map[string]any{"tag": "next"},
		"zmeshd":  map[string]any{"resources": map[string]any{"requests": "1"}},
		"ztunnel": "off",
		"cni":     map[string]any{"enabled": false},
	})
	want := map[string]any{
		"global":  map[string]any{"hub": "zmesh", "tag": "next"},
		"zmeshd":  map[string]any{"replicas": 1, "resources": map[string]any{"limits": "1Gi", "requests": "1"}},
		"ztunnel": "off",
		"cni":     map[string]any{"enabled": false},
	}
	if !reflect.DeepEqual(dst, want) {
		t.Errorf("merged %v\nwant   %v", dst, want)
	}
}
