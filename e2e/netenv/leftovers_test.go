package netenv

import (
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// A process naming the run's directory and the directory itself are
// reported; once both are gone, nothing about the directory is.
func TestLeftBehindNamesProcessesAndDir(t *testing.T) {
	dir := t.TempDir()
	cmd := exec.Command("sh", "-c", "sleep 30", dir)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	about := func(keep bool) (procs, dirs int) {
		for _, l := range LeftBehind(dir, nil, keep) {
			switch {
			case strings.HasPrefix(l, "process ") && strings.Contains(l, dir):
				procs++
			case l == "temporary directory "+dir:
				dirs++
			}
		}
		return
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		if p, d := about(false); p == 1 && d == 1 {
			break
		} else if time.Now().After(deadline) {
			t.Fatalf("with a process and the directory left: %d processes, %d directories reported, want 1 and 1", p, d)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if _, d := about(true); d != 0 {
		t.Fatal("a kept directory was reported")
	}
	cmd.Process.Kill()
	cmd.Wait()
	if p, _ := about(true); p != 0 {
		t.Fatalf("%d processes reported after the only one was killed", p)
	}
}

// TestBPFEntries lists what is under root, at any depth, but not root.
func TestBPFEntries(t *testing.T) {
	root := t.TempDir()
	if err := os.MkdirAll(filepath.Join(root, "zmesh", "pods"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "zmesh", "pods", "map"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	got := BPFEntries(root)
	want := []string{filepath.Join(root, "zmesh"), filepath.Join(root, "zmesh", "pods"), filepath.Join(root, "zmesh", "pods", "map")}
	if !slices.Equal(got, want) {
		t.Errorf("BPFEntries = %q, want %q", got, want)
	}
	if got := BPFEntries(filepath.Join(root, "absent")); got != nil {
		t.Errorf("BPFEntries of a missing root = %q, want none", got)
	}
}
