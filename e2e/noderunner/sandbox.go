package noderunner

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/invoke"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"

	"github.com/zmesh/zmesh/e2e/netenv"
)

// sandbox is what both modes of the node runner do for a pod, the part of a
// container runtime the mesh depends on: a network namespace set up by the
// node's CNI configuration through libcni, run from the node's host
// namespace (whatever the conflist holds when the pod starts: on a meshed
// node, the primary plugins and then zmesh-cni, whose ADD returns only
// after ztunnel took the pod), the pod's process inside it, and the
// reverse.
type sandbox struct {
	host            *netenv.NS
	binDir, confDir string
	app             func(pod *corev1.Pod) *exec.Cmd
	// images runs pods of zmesh images as their binaries (nil: every pod
	// runs app); hostIP is the node's address for their downward API.
	images *Images
	hostIP netip.Addr
	// netnsDir, when set, is a shared mount where each pod's network
	// namespace is bind-mounted too, and the path CNI is given: pods with
	// mount namespaces of their own (the CNI agent) see namespaces made
	// after they started there, as a node's /var/run/netns is seen with
	// HostToContainer propagation.
	netnsDir string
}

// conf loads the node's CNI configuration as a runtime does: the first
// conflist of the directory.
func (s sandbox) conf() (*libcni.NetworkConfigList, error) {
	files, err := libcni.ConfFiles(s.confDir, []string{".conflist"})
	if err != nil {
		return nil, err
	}
	if len(files) == 0 {
		return nil, fmt.Errorf("no conflist in %s", s.confDir)
	}
	return libcni.ConfListFromFile(files[0])
}

func (s sandbox) cni(op string, rt *libcni.RuntimeConf) (*current.Result, error) {
	list, err := s.conf()
	if err != nil {
		return nil, err
	}
	var ex invoke.Exec
	if s.images != nil && s.images.HostRoot != "" {
		ex = &nodeExec{DefaultExec: invoke.DefaultExec{RawExec: &invoke.RawExec{Stderr: os.Stderr}}, images: s.images}
	}
	c := libcni.NewCNIConfig([]string{s.binDir}, ex)
	var res *current.Result
	err = s.host.Do(func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		if op == "DEL" {
			return c.DelNetworkList(ctx, list, rt)
		}
		r, err := c.AddNetworkList(ctx, list, rt)
		if err != nil {
			return err
		}
		res, err = current.NewResultFromResult(r)
		return err
	})
	return res, err
}

// start creates the pod's namespace, runs CNI ADD with the kubelet's
// CNI_ARGS (and IP=want when want is valid: host-local then hands out
// exactly that address), starts the pod's process and waits
// until it listens. On error nothing of the pod is left.
func (s sandbox) start(ctx context.Context, pod *corev1.Pod, want netip.Addr) (*RunningPod, error) {
	if pod.Spec.HostNetwork {
		return s.startHost(ctx, pod)
	}
	ns, err := netenv.NewNS("pod")
	if err != nil {
		return nil, err
	}
	nsPath := "/run/netns/" + ns.Name
	if s.netnsDir != "" {
		shared := filepath.Join(s.netnsDir, ns.Name)
		if err := shareNetns(nsPath, shared); err != nil {
			s.closeNS(ns)
			return nil, err
		}
		nsPath = shared
	}
	args := [][2]string{
		{"IgnoreUnknown", "1"},
		{"K8S_POD_NAMESPACE", pod.Namespace},
		{"K8S_POD_NAME", pod.Name},
		{"K8S_POD_INFRA_CONTAINER_ID", "zmesh-e2e-" + string(pod.UID)},
		{"K8S_POD_UID", string(pod.UID)},
	}
	if want.IsValid() {
		args = append(args, [2]string{"IP", want.String()})
	}
	p := &RunningPod{UID: pod.UID, Namespace: pod.Namespace, Name: pod.Name, NS: ns, rt: &libcni.RuntimeConf{
		ContainerID: "zmesh-e2e-" + string(pod.UID),
		NetNS:       nsPath,
		IfName:      "eth0",
		Args:        args,
	}}
	started := time.Now()
	res, err := s.cni("ADD", p.rt)
	p.CNIAdd = time.Since(started)
	if err != nil {
		// As a kubelet: the sandbox failed; clean it (the caller retries).
		s.cni("DEL", p.rt)
		s.closeNS(ns)
		return nil, fmt.Errorf("CNI ADD: %w", err)
	}
	for _, ipc := range res.IPs {
		if a, ok := netip.AddrFromSlice(ipc.Address.IP); ok && a.Unmap().Is4() {
			p.IP = a.Unmap()
		}
	}
	if !p.IP.IsValid() || (want.IsValid() && p.IP != want) {
		s.cni("DEL", p.rt)
		s.closeNS(ns)
		return nil, fmt.Errorf("CNI ADD returned %v, want one IPv4 address (%v)", res.IPs, want)
	}
	if err := s.run(ctx, pod, p); err != nil {
		s.cni("DEL", p.rt)
		s.closeNS(ns)
		return nil, err
	}
	if p.Container == nil && p.cmd != nil {
		if err := waitListening(ctx, ns, p.IP); err != nil {
			s.stop(p)
			return nil, err
		}
	}
	return p, nil
}

// startHost starts a hostNetwork pod: its process in the node's host
// namespace, at the node's address, with no CNI.
func (s sandbox) startHost(ctx context.Context, pod *corev1.Pod) (*RunningPod, error) {
	if _, _, ok := s.images.zmeshContainer(pod); !ok {
		return nil, fmt.Errorf("hostNetwork pod %s/%s: only zmesh images run in the node's namespace", pod.Namespace, pod.Name)
	}
	p := &RunningPod{UID: pod.UID, Namespace: pod.Namespace, Name: pod.Name, NS: s.host, IP: s.hostIP, HostNetwork: true}
	if err := s.run(ctx, pod, p); err != nil {
		return nil, err
	}
	return p, nil
}

// run starts (or, after it exited, starts again) the pod's process inside
// its namespace: the zmesh container's binary, or the App.
func (s sandbox) run(ctx context.Context, pod *corev1.Pod, p *RunningPod) error {
	var cmd *exec.Cmd
	if c, bin, ok := s.images.zmeshContainer(pod); ok {
		var err error
		if cmd, err = s.images.command(ctx, pod, c, bin, p.IP, s.hostIP); err != nil {
			return fmt.Errorf("container %s: %w", c.Name, err)
		}
		p.Container = c
	} else if s.app != nil {
		cmd = s.app(pod)
	}
	if cmd == nil {
		return nil
	}
	if err := p.NS.Do(cmd.Start); err != nil {
		return fmt.Errorf("start the pod's process: %w", err)
	}
	exited := make(chan struct{})
	p.mu.Lock()
	if p.stopping != nil && isClosed(p.stopping) {
		// Stopped while this (re)start was under way.
		p.mu.Unlock()
		cmd.Process.Kill()
		cmd.Wait()
		return errors.New("the pod is stopping")
	}
	p.cmd, p.exited = cmd, exited
	p.mu.Unlock()
	go func() {
		cmd.Wait()
		if f, ok := cmd.Stdout.(*os.File); ok {
			f.Close()
		}
		close(exited)
	}()
	return nil
}

// errDel marks a failed CNI DEL: the pod's namespace is kept, so that stop
// can be tried again.
var errDel = errors.New("CNI DEL")

// stop ends a pod: its process, CNI DEL, its namespace.
func (s sandbox) stop(p *RunningPod) error {
	stopping := p.stopCh()
	p.mu.Lock()
	select {
	case <-stopping:
	default:
		close(stopping)
	}
	cmd, exited := p.cmd, p.exited
	p.mu.Unlock()
	if cmd != nil {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(5 * time.Second):
			cmd.Process.Kill()
			<-exited
		}
	}
	if p.HostNetwork {
		if p.Container != nil {
			s.images.release(p)
		}
		return nil
	}
	if _, err := s.cni("DEL", p.rt); err != nil {
		return fmt.Errorf("%w of %s/%s: %w", errDel, p.Namespace, p.Name, err)
	}
	if p.Container != nil {
		s.images.release(p)
	}
	return s.closeNS(p.NS)
}

// shareNetns bind-mounts a pod's namespace at shared (in netnsDir).
func shareNetns(path, shared string) error {
	if err := os.WriteFile(shared, nil, 0o444); err != nil {
		return err
	}
	if err := unix.Mount(path, shared, "", unix.MS_BIND, ""); err != nil {
		os.Remove(shared)
		return fmt.Errorf("bind %s at %s: %w", path, shared, err)
	}
	return nil
}

// closeNS removes a pod's namespace (and its mount in netnsDir).
func (s sandbox) closeNS(ns *netenv.NS) error {
	if s.netnsDir != "" {
		shared := filepath.Join(s.netnsDir, ns.Name)
		unix.Unmount(shared, unix.MNT_DETACH)
		os.Remove(shared)
	}
	return ns.Close()
}

// waitListening waits for the app to accept on its own address from inside
// its namespace (a pod talking to itself is never captured).
func waitListening(ctx context.Context, ns *netenv.NS, ip netip.Addr) error {
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := ns.Dial(ctx, "tcp", netip.AddrPortFrom(ip, 8080).String())
		if err == nil {
			c.Close()
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the pod's process does not listen on %s:8080: %w", ip, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// stopCh is closed when the pod is being stopped.
func (p *RunningPod) stopCh() chan struct{} {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.stopping == nil {
		p.stopping = make(chan struct{})
	}
	return p.stopping
}

// Pid is the pod's process id (0 when it runs none).
func (p *RunningPod) Pid() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil || p.cmd.Process == nil {
		return 0
	}
	return p.cmd.Process.Pid
}

// LogPath is the file the pod's process writes its stdout and stderr to
// (the container log `kubectl logs` shows), empty when it runs none or its
// output is discarded.
func (p *RunningPod) LogPath() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil {
		return ""
	}
	if f, ok := p.cmd.Stdout.(*os.File); ok {
		return f.Name()
	}
	return ""
}

// nodeExec runs CNI plugins as a container runtime on the node would: with
// the node's host paths (those its pods mount as hostPath, such as the
// agent's socket directory the chained conflist names) at their places,
// in the node's view of the machine (nodeView).
type nodeExec struct {
	invoke.DefaultExec
	images *Images
}

func (e *nodeExec) ExecPlugin(ctx context.Context, plugin string, stdin []byte, environ []string) ([]byte, error) {
	hps := e.images.hostPaths()
	for _, hp := range hps {
		e.images.remember(filepath.Join(e.images.HostRoot, hp), hp)
	}
	ns, err := e.images.view.enter(e.images.HostRoot, hps)
	if err != nil {
		return nil, err
	}
	defer ns.Close()
	// The namespace is nsenter's descriptor 3.
	cmd := exec.CommandContext(ctx, "nsenter", "--mount=/proc/self/fd/3", "--", plugin)
	cmd.ExtraFiles = []*os.File{ns}
	cmd.Env = environ
	cmd.Stdin = bytes.NewReader(stdin)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		// A plugin's error is JSON on stdout.
		var perr types.Error
		if json.Unmarshal(stdout.Bytes(), &perr) == nil && perr.Msg != "" {
			return nil, &perr
		}
		return nil, fmt.Errorf("%s: %w: %s", filepath.Base(plugin), err, bytes.TrimSpace(stderr.Bytes()))
	}
	return stdout.Bytes(), nil
}
