package noderunner

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestMountPathKeptWhileMounted: a mountPath directory the node runners
// created on the machine stays while another mount namespace (a pod of
// another test process) has a volume mounted on it, so that pod keeps its
// volume; the last process to close removes it.
func TestMountPathKeptWhileMounted(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("needs root (mount namespaces, trusted xattrs)")
	}
	base := filepath.Join("/run", fmt.Sprintf("zmesh-e2e-test-%d", os.Getpid()))
	mountPath := filepath.Join(base, "secrets", "tokens")
	t.Cleanup(func() { os.RemoveAll(base) })
	src := t.TempDir()
	if err := os.WriteFile(filepath.Join(src, "istio-token"), []byte("token"), 0o600); err != nil {
		t.Fatal(err)
	}
	im := &Images{}
	im.remember(src, mountPath) // this process's pod: it creates the directories

	// Another process's pod, in a mount namespace of its own, mounts its
	// volume there.
	pod := exec.Command("unshare", "--mount", "--propagation", "slave", "sh", "-c", mountScript, "sh", src, mountPath, "ro", "--", "sleep", "60")
	pod.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := pod.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pod.Process.Kill(); pod.Wait() })
	podToken := filepath.Join("/proc", fmt.Sprint(pod.Process.Pid), "root", mountPath, "istio-token")
	deadline := time.Now().Add(10 * time.Second)
	for {
		if b, err := os.ReadFile(podToken); err == nil && string(b) == "token" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the pod's volume never appeared at its mountPath")
		}
		time.Sleep(20 * time.Millisecond)
	}

	// This process closes first.
	if err := im.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(mountPath); err != nil {
		t.Errorf("the mountPath was removed while another namespace mounts on it: %v", err)
	}
	if b, err := os.ReadFile(podToken); err != nil || string(b) != "token" {
		t.Errorf("the other pod lost its volume when this process closed: %q, %v", b, err)
	}

	// The other process: its pod stops, it closes, and nothing is left.
	pod.Process.Kill()
	pod.Wait()
	// The kernel tears the namespace down just after its last process
	// is reaped.
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		mounts, err := machineMountPoints()
		if err == nil && !slices.ContainsFunc(mounts, func(m string) bool { return strings.HasPrefix(m, base) }) {
			break
		}
	}
	other := &Images{}
	other.remember(src, mountPath)
	if !slices.Contains(made.paths, mountPath) || !slices.Contains(made.paths, base) {
		t.Errorf("a process using marked directories does not record them: %v", made.paths)
	}
	if err := other.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(base); !os.IsNotExist(err) {
		entries, _ := os.ReadDir(base)
		mounts, _ := machineMountPoints()
		var under []string
		for _, m := range mounts {
			if strings.HasPrefix(m, base) {
				under = append(under, m)
			}
		}
		t.Errorf("after the last user closed, %s is still there (%v): %v; mounts under it: %v", base, err, strings.Join(names(entries), ","), under)
	}
}

func names(es []os.DirEntry) []string {
	var out []string
	for _, e := range es {
		out = append(out, e.Name())
	}
	return out
}
