package noderunner

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"syscall"
	"time"

	"github.com/containernetworking/cni/libcni"
	current "github.com/containernetworking/cni/pkg/types/100"
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
	c := libcni.NewCNIConfig([]string{s.binDir}, nil)
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
	ns, err := netenv.NewNS("pod")
	if err != nil {
		return nil, err
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
		NetNS:       "/run/netns/" + ns.Name,
		IfName:      "eth0",
		Args:        args,
	}}
	started := time.Now()
	res, err := s.cni("ADD", p.rt)
	p.CNIAdd = time.Since(started)
	if err != nil {
		// As a kubelet: the sandbox failed; clean it (the caller retries).
		s.cni("DEL", p.rt)
		ns.Close()
		return nil, fmt.Errorf("CNI ADD: %w", err)
	}
	for _, ipc := range res.IPs {
		if a, ok := netip.AddrFromSlice(ipc.Address.IP); ok && a.Unmap().Is4() {
			p.IP = a.Unmap()
		}
	}
	if !p.IP.IsValid() || (want.IsValid() && p.IP != want) {
		s.cni("DEL", p.rt)
		ns.Close()
		return nil, fmt.Errorf("CNI ADD returned %v, want one IPv4 address (%v)", res.IPs, want)
	}
	var cmd *exec.Cmd
	if c, bin, ok := s.images.zmeshContainer(pod); ok {
		if cmd, err = s.images.command(ctx, pod, c, bin, p.IP, s.hostIP); err != nil {
			s.cni("DEL", p.rt)
			ns.Close()
			return nil, fmt.Errorf("container %s: %w", c.Name, err)
		}
		p.Container = c
	} else if s.app != nil {
		cmd = s.app(pod)
	}
	if cmd != nil {
		if err := ns.Do(cmd.Start); err != nil {
			s.cni("DEL", p.rt)
			ns.Close()
			return nil, fmt.Errorf("start the pod's process: %w", err)
		}
		p.cmd, p.exited = cmd, make(chan struct{})
		go func() {
			cmd.Wait()
			if f, ok := cmd.Stdout.(*os.File); ok {
				f.Close()
			}
			close(p.exited)
		}()
		if p.Container == nil {
			if err := waitListening(ctx, ns, p.IP); err != nil {
				s.stop(p)
				return nil, err
			}
		}
	}
	return p, nil
}

// errDel marks a failed CNI DEL: the pod's namespace is kept, so that stop
// can be tried again.
var errDel = errors.New("CNI DEL")

// stop ends a pod: its process, CNI DEL, its namespace.
func (s sandbox) stop(p *RunningPod) error {
	if p.cmd != nil {
		p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.exited:
		case <-time.After(5 * time.Second):
			p.cmd.Process.Kill()
			<-p.exited
		}
	}
	if _, err := s.cni("DEL", p.rt); err != nil {
		return fmt.Errorf("%w of %s/%s: %w", errDel, p.Namespace, p.Name, err)
	}
	if p.Container != nil {
		s.images.release(p)
	}
	return p.NS.Close()
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

// Pid is the pod's process id (0 when it runs none).
func (p *RunningPod) Pid() int {
	if p.cmd == nil || p.cmd.Process == nil {
		return 0
	}
	return p.cmd.Process.Pid
}
