package noderunner

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"
)

// nodeView is a mount namespace holding the node's view of the machine:
// its hostPath directories (Images.HostRoot/P) bind-mounted at their
// places P, as a container runtime on that node sees them. CNI plugins run
// in it (nodeExec), so that a plugin finds the agent's socket at the path
// the chained conflist names. One namespace per node, kept by a process
// that only sleeps, and entered by each plugin with nsenter: setting the
// view up again for every plugin (a new namespace, a mount per hostPath)
// cost a dozen processes per CNI call, seconds on a loaded machine.
//
// It is a slave of the machine's mounts, so that the pods' network
// namespaces mounted later in a shared directory (Kubelet.NetnsDir)
// appear in it; its own mounts stay inside.
type nodeView struct {
	mu      sync.Mutex
	holder  *exec.Cmd
	exited  chan struct{}
	mounted []string // hostPaths bound in the holder's namespace
}

// enter returns the view's mount namespace, opened, with every one of
// hostPaths (in the node's tree under root) bound at its place, starting
// the holder or adding mounts as needed. Opened under the lock, it is the
// holder's namespace even if the holder is replaced right after.
func (v *nodeView) enter(root string, hostPaths []string) (*os.File, error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	var add []string
	for _, hp := range hostPaths {
		if !slices.Contains(v.mounted, hp) {
			add = append(add, hp)
		}
	}
	if v.holder != nil && isClosed(v.exited) {
		v.stopLocked()
	}
	// A new hostPath above one mounted already would cover it: start over
	// with all of them, shallowest first.
	for _, hp := range add {
		for _, m := range v.mounted {
			if strings.HasPrefix(m, hp+"/") {
				v.stopLocked()
				add = hostPaths
			}
		}
	}
	if v.holder == nil {
		if err := v.startLocked(); err != nil {
			return nil, err
		}
		add = hostPaths
	}
	ns := fmt.Sprintf("/proc/%d/ns/mnt", v.holder.Process.Pid)
	if len(add) > 0 {
		args := []string{"--mount=" + ns, "sh", "-c", mountScript, "sh"}
		for _, hp := range add {
			args = append(args, filepath.Join(root, hp), hp, "rw")
		}
		args = append(args, "--", "true")
		if out, err := exec.Command("nsenter", args...).CombinedOutput(); err != nil {
			return nil, fmt.Errorf("node view: mount %v: %w: %s", add, err, strings.TrimSpace(string(out)))
		}
		v.mounted = append(v.mounted, add...)
	}
	return os.Open(ns)
}

// startLocked starts the holder and waits until it sleeps in a mount
// namespace of its own: mounting in the namespace it had before unshare
// would be mounting on the machine.
func (v *nodeView) startLocked() error {
	cmd := exec.Command("unshare", "--mount", "--propagation", "slave", "sleep", "infinity")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("node view: %w", err)
	}
	exited := make(chan struct{})
	go func() {
		cmd.Wait()
		close(exited)
	}()
	own, err := os.Readlink("/proc/self/ns/mnt")
	if err != nil {
		cmd.Process.Kill()
		<-exited
		return err
	}
	pid := cmd.Process.Pid
	deadline := time.Now().Add(30 * time.Second)
	for {
		ns, nerr := os.Readlink(fmt.Sprintf("/proc/%d/ns/mnt", pid))
		exe, eerr := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
		if nerr == nil && eerr == nil && ns != own && filepath.Base(exe) == "sleep" {
			break
		}
		if isClosed(exited) || time.Now().After(deadline) {
			cmd.Process.Kill()
			<-exited
			return errors.New("node view: the namespace holder did not start")
		}
		time.Sleep(5 * time.Millisecond)
	}
	v.holder, v.exited, v.mounted = cmd, exited, nil
	return nil
}

func (v *nodeView) stopLocked() {
	if v.holder == nil {
		return
	}
	v.holder.Process.Kill()
	<-v.exited
	v.holder, v.exited, v.mounted = nil, nil, nil
}

// close ends the holder; the namespace goes with the last process in it.
func (v *nodeView) close() {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.stopLocked()
}
