package kubetest

import (
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// TestRepositoryStandsAlone: a clone of this repository alone builds and
// runs its tests, so no tracked file may reach for a directory beside it.
func TestRepositoryStandsAlone(t *testing.T) {
	_, file, _, _ := runtime.Caller(0)
	root := filepath.Join(filepath.Dir(file), "..", "..")
	out, err := exec.Command("git", "-C", root, "ls-files").Output()
	if err != nil {
		t.Fatalf("git ls-files: %v", err)
	}
	outside := "../" + "shared" // split so this file does not match itself
	for _, f := range strings.Fields(string(out)) {
		b, err := os.ReadFile(filepath.Join(root, f))
		if err != nil {
			continue // deleted in the work tree
		}
		if strings.Contains(string(b), outside) {
			t.Errorf("%s refers to %s: the repository must not need files outside itself", f, outside)
		}
	}
}

// TestBuildKeepsTheCache: with the binaries cached, Build rebuilds
// nothing (a rebuild of kube-apiserver would take minutes and change the
// file).
func TestBuildKeepsTheCache(t *testing.T) {
	if err := Build(t.Context(), nil); err != nil {
		t.Fatal(err)
	}
	before := map[string]os.FileInfo{}
	for _, b := range Binaries {
		fi, err := os.Stat(filepath.Join(BinDir(), b))
		if err != nil {
			t.Fatal(err)
		}
		before[b] = fi
	}
	if err := Build(t.Context(), nil); err != nil {
		t.Fatal(err)
	}
	for _, b := range Binaries {
		fi, err := os.Stat(filepath.Join(BinDir(), b))
		if err != nil {
			t.Fatal(err)
		}
		if !fi.ModTime().Equal(before[b].ModTime()) || fi.Size() != before[b].Size() {
			t.Errorf("%s was rebuilt although it was cached at %s", b, KubeVersion)
		}
	}
}
