package netenv

import (
	"os/exec"
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
