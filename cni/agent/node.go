package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"sync"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/zmesh/zmesh/bpf"
	"github.com/zmesh/zmesh/cni/cniapi"
	"github.com/zmesh/zmesh/cni/redirect"
)

// Membership says whether a pod is in the mesh and under which service
// account. Implementations: Kubernetes informers (in a cluster) and
// zmeshd's workload stream (no cluster).
type Membership interface {
	Lookup(namespace, name string) (serviceAccount string, ambient bool)
}

// MembershipFunc adapts a function to Membership.
type MembershipFunc func(namespace, name string) (string, bool)

// Lookup implements Membership.
func (f MembershipFunc) Lookup(ns, name string) (string, bool) { return f(ns, name) }

// Node captures this node's ambient pods: redirection routing, the
// sk_lookup program pinned under BPFRoot/<uid>, and the hand-over to
// ztunnel.
type Node struct {
	BPFRoot string
	ZDS     *ZDSServer
	Members Membership
	// HostNetns is the namespace holding the node's routes to its pods
	// (where kubelet probes come from); 0 means the agent's own.
	HostNetns netns.NsHandle
	Log       *slog.Logger

	mu   sync.Mutex
	pods map[string]redirect.Config
}

func (n *Node) log() *slog.Logger {
	if n.Log == nil {
		return slog.Default()
	}
	return n.Log
}

func (n *Node) dir(uid string) string { return filepath.Join(n.BPFRoot, uid) }

// Add captures an ambient pod and returns once ztunnel took it; a pod not in
// the mesh is left alone (false).
func (n *Node) Add(ctx context.Context, p *cniapi.Pod) (bool, error) {
	if err := p.Validate(); err != nil {
		return false, err
	}
	sa, ambient := n.Members.Lookup(p.Namespace, p.Name)
	if !ambient {
		return false, nil
	}
	var ips []netip.Addr
	for _, s := range p.IPs {
		ip, err := netip.ParseAddr(s)
		if err != nil {
			return false, fmt.Errorf("pod ip %q: %w", s, err)
		}
		ips = append(ips, ip)
	}
	ns, err := netns.GetFromPath(p.Netns)
	if err != nil {
		return false, fmt.Errorf("open pod netns %q: %w", p.Netns, err)
	}
	defer ns.Close()
	cfg := redirect.Config{PodIPs: ips}
	for _, ip := range ips {
		if src, err := n.probeSource(ip); err == nil {
			cfg.ProbeSources = append(cfg.ProbeSources, src)
		} else {
			n.log().Warn("no probe source for pod", "pod", p.Namespace+"/"+p.Name, "ip", ip.String(), "reason", err.Error())
		}
	}

	undo, err := n.capture(ns, ips, cfg, p.UID)
	if err != nil {
		return false, err
	}
	pod, err := n.zdsPod(ns, p, sa, ips)
	if err == nil {
		err = n.ZDS.AddPod(ctx, pod)
		if err != nil {
			// The server keeps what it was given; take it back.
			n.ZDS.DelPod(context.WithoutCancel(ctx), p.UID)
		}
	}
	if err != nil {
		undo()
		return false, fmt.Errorf("hand pod %s/%s to ztunnel: %w", p.Namespace, p.Name, err)
	}
	n.mu.Lock()
	if n.pods == nil {
		n.pods = map[string]redirect.Config{}
	}
	n.pods[p.UID] = cfg
	n.mu.Unlock()
	n.log().Info("pod captured", "pod", p.Namespace+"/"+p.Name, "uid", p.UID, "ips", p.IPs)
	return true, nil
}

// capture installs routing and the pinned program; undo removes both.
func (n *Node) capture(ns netns.NsHandle, ips []netip.Addr, cfg redirect.Config, uid string) (undo func(), err error) {
	dir := n.dir(uid)
	undo = func() {
		bpf.Unpin(dir)
		redirect.Remove(ns, cfg)
	}
	if err := redirect.Apply(ns, cfg); err != nil {
		undo()
		return nil, err
	}
	c, err := bpf.Load()
	if err != nil {
		undo()
		return nil, err
	}
	defer c.Close()
	if bpf.Pinned(dir) {
		// Already captured (a retried ADD): replace the old attachment.
		bpf.Unpin(dir)
	}
	l, err := c.Attach(int(ns))
	if err != nil {
		undo()
		return nil, err
	}
	defer l.Close()
	err = c.Enroll(ips...)
	for _, src := range cfg.ProbeSources {
		if err == nil {
			err = c.AddProbeSource(src)
		}
	}
	if err == nil {
		err = c.Pin(l, dir)
	}
	if err != nil {
		undo()
		return nil, err
	}
	return undo, nil
}

// zdsPod opens the descriptors ztunnel gets: netns and the pinned maps.
func (n *Node) zdsPod(ns netns.NsHandle, p *cniapi.Pod, sa string, ips []netip.Addr) (*Pod, error) {
	nsfd, err := unix.FcntlInt(uintptr(ns), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	c, err := bpf.OpenPinned(n.dir(p.UID))
	if err != nil {
		unix.Close(nsfd)
		return nil, err
	}
	defer c.Close()
	lfd, bfd, err := c.MapFDs()
	if err != nil {
		unix.Close(nsfd)
		return nil, err
	}
	return &Pod{
		UID: p.UID, Name: p.Name, Namespace: p.Namespace, ServiceAccount: sa, IPs: ips,
		NetnsFD: nsfd, SockmapFD: lfd, BypassFD: bfd,
	}, nil
}

// probeSource is the address the host namespace uses towards the pod.
func (n *Node) probeSource(podIP netip.Addr) (netip.Addr, error) {
	nl, err := netlink.NewHandleAt(n.HostNetns)
	if n.HostNetns == 0 {
		nl, err = netlink.NewHandle()
	}
	if err != nil {
		return netip.Addr{}, err
	}
	defer nl.Close()
	routes, err := nl.RouteGet(podIP.AsSlice())
	if err != nil || len(routes) == 0 {
		return netip.Addr{}, fmt.Errorf("route to %s: %w", podIP, err)
	}
	src, ok := netip.AddrFromSlice(routes[0].Src)
	if !ok {
		return netip.Addr{}, fmt.Errorf("route to %s has no source", podIP)
	}
	return src.Unmap(), nil
}

// Del releases a pod: ztunnel first, then the program and routing. What is
// already gone (netns deleted, never captured) is fine.
func (n *Node) Del(ctx context.Context, p *cniapi.Pod) error {
	if p.UID == "" {
		return errors.New("pod: missing uid")
	}
	var errs []error
	if err := n.ZDS.DelPod(ctx, p.UID); err != nil {
		errs = append(errs, err)
	}
	if err := bpf.Unpin(n.dir(p.UID)); err != nil {
		errs = append(errs, err)
	}
	n.mu.Lock()
	cfg, known := n.pods[p.UID]
	delete(n.pods, p.UID)
	n.mu.Unlock()
	if known && p.Netns != "" {
		if ns, err := netns.GetFromPath(p.Netns); err == nil {
			errs = append(errs, redirect.Remove(ns, cfg))
			ns.Close()
		} else if !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// Check verifies an ambient pod's capture is intact.
func (n *Node) Check(ctx context.Context, p *cniapi.Pod) error {
	if _, ambient := n.Members.Lookup(p.Namespace, p.Name); !ambient {
		return nil
	}
	if !bpf.Pinned(n.dir(p.UID)) {
		return fmt.Errorf("pod %s/%s: capture program not attached", p.Namespace, p.Name)
	}
	n.mu.Lock()
	cfg, ok := n.pods[p.UID]
	n.mu.Unlock()
	if !ok {
		return fmt.Errorf("pod %s/%s: not captured by this agent", p.Namespace, p.Name)
	}
	ns, err := netns.GetFromPath(p.Netns)
	if err != nil {
		return fmt.Errorf("open pod netns %q: %w", p.Netns, err)
	}
	defer ns.Close()
	return redirect.Check(ns, cfg)
}

// EnrollRunning captures a pod that is already running (its namespace or
// the pod was labelled after it started): its network namespace is found
// by its address among running processes, then it is captured as on ADD.
func (n *Node) EnrollRunning(ctx context.Context, p *cniapi.Pod, procRoot string) (bool, error) {
	if len(p.IPs) == 0 {
		return false, fmt.Errorf("pod %s/%s: no IP to find its network namespace by", p.Namespace, p.Name)
	}
	ip, err := netip.ParseAddr(p.IPs[0])
	if err != nil {
		return false, fmt.Errorf("pod ip %q: %w", p.IPs[0], err)
	}
	path, err := FindNetns(procRoot, ip)
	if err != nil {
		return false, err
	}
	// Pin the namespace by a path that outlives the process we found it
	// through: the agent's own fd.
	h, err := netns.GetFromPath(path)
	if err != nil {
		return false, err
	}
	defer h.Close()
	q := *p
	q.Netns = fmt.Sprintf("/proc/%d/fd/%d", os.Getpid(), int(h))
	return n.Add(ctx, &q)
}

// ReleaseRunning lets a running pod go (its namespace or the pod lost the
// ambient label): ztunnel first, then capture; traffic flows directly again.
func (n *Node) ReleaseRunning(ctx context.Context, p *cniapi.Pod, procRoot string) error {
	q := *p
	if len(p.IPs) > 0 {
		if ip, err := netip.ParseAddr(p.IPs[0]); err == nil {
			if path, err := FindNetns(procRoot, ip); err == nil {
				h, err := netns.GetFromPath(path)
				if err == nil {
					defer h.Close()
					q.Netns = fmt.Sprintf("/proc/%d/fd/%d", os.Getpid(), int(h))
				}
			}
		}
	}
	return n.Del(ctx, &q)
}
