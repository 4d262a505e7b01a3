package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"path/filepath"
	"sync"
	"time"

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
//
// A pod a source has not seen yet is the common case on CNI ADD: the
// runtime sets a pod up moments after it was created. Lookup must then
// ask the authority (the API server, or wait for zmeshd to list the pod),
// within a bound, and return an error wrapping ErrMembershipUnknown when
// it cannot decide: CNI ADD then fails and the runtime retries. Answering
// "not ambient" on a miss would start an ambient pod outside the mesh.
type Membership interface {
	Lookup(ctx context.Context, namespace, name string) (serviceAccount string, ambient bool, err error)
}

// ErrMembershipUnknown means a source could not decide whether a pod is in
// the mesh.
var ErrMembershipUnknown = errors.New("pod's mesh membership unknown")

// MembershipFunc adapts a function that always knows (tests, static
// configurations) to Membership.
type MembershipFunc func(namespace, name string) (string, bool)

// Lookup implements Membership.
func (f MembershipFunc) Lookup(_ context.Context, ns, name string) (string, bool, error) {
	sa, ambient := f(ns, name)
	return sa, ambient, nil
}

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
	pods map[string]*captured
	busy map[string]chan struct{} // pods an operation is under way for
}

// lockPod serialises the operations on one pod: the plugin's ADD/DEL and
// the reconciler's enrolment/release may meet.
func (n *Node) lockPod(uid string) (unlock func()) {
	for {
		n.mu.Lock()
		if n.busy == nil {
			n.busy = map[string]chan struct{}{}
		}
		ch, held := n.busy[uid]
		if !held {
			ch = make(chan struct{})
			n.busy[uid] = ch
			n.mu.Unlock()
			return func() {
				n.mu.Lock()
				delete(n.busy, uid)
				n.mu.Unlock()
				close(ch)
			}
		}
		n.mu.Unlock()
		<-ch
	}
}

// captured is what the agent keeps of a pod it captured: enough to release
// it without the runtime's help (its namespace stays open).
type captured struct {
	pod CapturedPod
	cfg redirect.Config
	ns  netns.NsHandle // the agent's own handle, closed on release
}

// CapturedPod is a pod this agent holds captured.
type CapturedPod struct {
	UID, Name, Namespace, ServiceAccount string
	IPs                                  []netip.Addr
}

func (n *Node) log() *slog.Logger {
	if n.Log == nil {
		return slog.Default()
	}
	return n.Log
}

func (n *Node) dir(uid string) string { return filepath.Join(n.BPFRoot, uid) }

// Captured lists the pods this agent holds captured.
func (n *Node) Captured() []CapturedPod {
	n.mu.Lock()
	defer n.mu.Unlock()
	out := make([]CapturedPod, 0, len(n.pods))
	for _, c := range n.pods {
		out = append(out, c.pod)
	}
	return out
}

// IsCaptured reports whether the agent holds the pod captured.
func (n *Node) IsCaptured(uid string) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.pods[uid] != nil
}

// Add captures an ambient pod and returns once ztunnel took it; a pod not in
// the mesh is left alone (false). A pod whose membership cannot be decided
// is an error, so the runtime retries rather than start it unprotected.
//
// Add is idempotent: the reconciler may have enrolled the running pod a
// moment before the runtime's ADD arrives. Capturing it a second time
// would attach a fresh program with an empty listener map while ztunnel,
// which already serves the pod, keeps its listeners in the old one: the
// pod would be cut off for good. A pod captured in the same network
// namespace is left as it is; one captured in another namespace (the
// runtime recreated its sandbox without a DEL) is released first.
func (n *Node) Add(ctx context.Context, p *cniapi.Pod) (bool, error) {
	if err := p.Validate(); err != nil {
		return false, err
	}
	sa, ambient, err := n.Members.Lookup(ctx, p.Namespace, p.Name)
	if err != nil {
		return false, fmt.Errorf("pod %s/%s: %w", p.Namespace, p.Name, err)
	}
	if !ambient {
		return false, nil
	}
	ips, err := parseIPs(p.IPs)
	if err != nil {
		return false, err
	}
	defer n.lockPod(p.UID)()
	ns, err := netns.GetFromPath(p.Netns)
	if err != nil {
		return false, fmt.Errorf("open pod netns %q: %w", p.Netns, err)
	}
	switch n.capturedIn(p.UID, ns) {
	case sameNetns:
		ns.Close()
		n.log().Info("pod already captured", "pod", p.Namespace+"/"+p.Name, "uid", p.UID)
		return true, nil
	case otherNetns:
		n.log().Info("pod captured in another network namespace: recapturing", "pod", p.Namespace+"/"+p.Name, "uid", p.UID)
		if err := n.release(ctx, p.UID); err != nil {
			ns.Close()
			return false, fmt.Errorf("release pod %s/%s's previous capture: %w", p.Namespace, p.Name, err)
		}
	}
	if err := n.add(ctx, ns, p, sa, ips); err != nil {
		ns.Close()
		return false, err
	}
	return true, nil
}

type captureState int

const (
	notCaptured captureState = iota
	sameNetns
	otherNetns
)

// capturedIn says whether the pod is captured, and whether in ns. The
// caller holds lockPod.
func (n *Node) capturedIn(uid string, ns netns.NsHandle) captureState {
	n.mu.Lock()
	c := n.pods[uid]
	n.mu.Unlock()
	if c == nil {
		return notCaptured
	}
	if c.ns.Equal(ns) {
		return sameNetns
	}
	return otherNetns
}

func parseIPs(in []string) ([]netip.Addr, error) {
	var ips []netip.Addr
	for _, s := range in {
		ip, err := netip.ParseAddr(s)
		if err != nil {
			return nil, fmt.Errorf("pod ip %q: %w", s, err)
		}
		ips = append(ips, ip.Unmap())
	}
	return ips, nil
}

// add captures the pod in ns and hands it to ztunnel; on success the node
// owns ns.
func (n *Node) add(ctx context.Context, ns netns.NsHandle, p *cniapi.Pod, sa string, ips []netip.Addr) error {
	start := time.Now()
	cfg := n.redirectConfig(p, ips)
	undo, err := n.capture(ns, ips, cfg, p.UID)
	if err != nil {
		return err
	}
	capturedAt := time.Now()
	pod, err := n.zdsPod(ns, p.UID, p.Name, p.Namespace, sa, ips)
	if err == nil {
		err = n.ZDS.AddPod(ctx, pod)
		if err != nil {
			// The server keeps what it was given; take it back.
			n.ZDS.DelPod(context.WithoutCancel(ctx), p.UID)
		}
	}
	if err != nil {
		undo()
		return fmt.Errorf("hand pod %s/%s to ztunnel: %w", p.Namespace, p.Name, err)
	}
	n.keep(&captured{pod: CapturedPod{UID: p.UID, Name: p.Name, Namespace: p.Namespace, ServiceAccount: sa, IPs: ips}, cfg: cfg, ns: ns})
	// How long the capture and ztunnel's part took: a slow pod start is
	// one or the other.
	n.log().Info("pod captured", "pod", p.Namespace+"/"+p.Name, "uid", p.UID, "ips", p.IPs,
		"capture", capturedAt.Sub(start).Round(time.Millisecond).String(), "ztunnel", time.Since(capturedAt).Round(time.Millisecond).String())
	return nil
}

func (n *Node) keep(c *captured) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.pods == nil {
		n.pods = map[string]*captured{}
	}
	if old := n.pods[c.pod.UID]; old != nil && old.ns != c.ns {
		old.ns.Close() // a retried ADD
	}
	n.pods[c.pod.UID] = c
}

func (n *Node) redirectConfig(p *cniapi.Pod, ips []netip.Addr) redirect.Config {
	cfg := redirect.Config{PodIPs: ips}
	for _, ip := range ips {
		if src, err := n.probeSource(ip); err == nil {
			cfg.ProbeSources = append(cfg.ProbeSources, src)
		} else {
			n.log().Warn("no probe source for pod", "pod", p.Namespace+"/"+p.Name, "ip", ip.String(), "reason", err.Error())
		}
	}
	return cfg
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
func (n *Node) zdsPod(ns netns.NsHandle, uid, name, namespace, sa string, ips []netip.Addr) (*Pod, error) {
	nsfd, err := unix.FcntlInt(uintptr(ns), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	c, err := bpf.OpenPinned(n.dir(uid))
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
		UID: uid, Name: name, Namespace: namespace, ServiceAccount: sa, IPs: ips,
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

// Del releases a pod (see release). What is already gone (netns deleted,
// never captured) is fine.
func (n *Node) Del(ctx context.Context, p *cniapi.Pod) error {
	if p.UID == "" {
		return errors.New("pod: missing uid")
	}
	defer n.lockPod(p.UID)()
	return n.release(ctx, p.UID)
}

// release lets a pod go: capture first, so that new connections take the
// direct path at once, then ztunnel, which closes what it still has in the
// pod. The other order leaves a moment where the pod is captured with no
// ztunnel behind it, and connections opened then are refused.
func (n *Node) release(ctx context.Context, uid string) error {
	var errs []error
	if err := bpf.Unpin(n.dir(uid)); err != nil {
		errs = append(errs, err)
	}
	n.mu.Lock()
	c := n.pods[uid]
	delete(n.pods, uid)
	n.mu.Unlock()
	if c != nil {
		errs = append(errs, redirect.Remove(c.ns, c.cfg))
	}
	if err := n.ZDS.DelPod(ctx, uid); err != nil {
		errs = append(errs, err)
	}
	if c != nil {
		c.ns.Close()
		n.log().Info("pod released", "pod", c.pod.Namespace+"/"+c.pod.Name, "uid", uid)
	}
	return errors.Join(errs...)
}

// Check verifies an ambient pod's capture is intact.
func (n *Node) Check(ctx context.Context, p *cniapi.Pod) error {
	_, ambient, err := n.Members.Lookup(ctx, p.Namespace, p.Name)
	if err != nil {
		return fmt.Errorf("pod %s/%s: %w", p.Namespace, p.Name, err)
	}
	if !ambient {
		return nil
	}
	if !bpf.Pinned(n.dir(p.UID)) {
		return fmt.Errorf("pod %s/%s: capture program not attached", p.Namespace, p.Name)
	}
	n.mu.Lock()
	c := n.pods[p.UID]
	n.mu.Unlock()
	if c == nil {
		return fmt.Errorf("pod %s/%s: not captured by this agent", p.Namespace, p.Name)
	}
	ns, err := netns.GetFromPath(p.Netns)
	if err != nil {
		return fmt.Errorf("open pod netns %q: %w", p.Netns, err)
	}
	defer ns.Close()
	return redirect.Check(ns, c.cfg)
}

// EnrollRunning captures a pod that is already running (its namespace or
// the pod was labelled after it started): its network namespace is found
// by its address among running processes, then it is captured as on ADD,
// and the application's connections open at the change are destroyed once
// ztunnel took the pod: they went directly and would now hang.
func (n *Node) EnrollRunning(ctx context.Context, p *cniapi.Pod, procRoot string) (bool, error) {
	if err := p.Validate(); err != nil {
		return false, err
	}
	sa, ambient, err := n.Members.Lookup(ctx, p.Namespace, p.Name)
	if err != nil {
		return false, fmt.Errorf("pod %s/%s: %w", p.Namespace, p.Name, err)
	}
	if !ambient {
		return false, nil
	}
	defer n.lockPod(p.UID)()
	if n.IsCaptured(p.UID) {
		return true, nil // CNI ADD came first
	}
	return true, n.enrollRunning(ctx, p, sa, procRoot)
}

func (n *Node) enrollRunning(ctx context.Context, p *cniapi.Pod, sa, procRoot string) error {
	ips, err := parseIPs(p.IPs)
	if err != nil {
		return err
	}
	if len(ips) == 0 {
		return fmt.Errorf("pod %s/%s: no IP to find its network namespace by", p.Namespace, p.Name)
	}
	path, err := FindNetns(procRoot, ips[0])
	if err != nil {
		return err
	}
	// The agent's own handle outlives the process we found it through.
	ns, err := netns.GetFromPath(path)
	if err != nil {
		return err
	}
	open, lerr := socketsToKill(ns, ips, appConnections)
	if err := n.add(ctx, ns, p, sa, ips); err != nil {
		ns.Close()
		return err
	}
	n.destroy(ns, p.Namespace+"/"+p.Name, open, lerr)
	return nil
}

// destroy aborts the connections listed before a change, now that it is
// done; failing to is logged, not fatal: the change itself happened.
func (n *Node) destroy(ns netns.NsHandle, pod string, open []tcpSocket, listErr error) {
	if listErr != nil {
		n.log().Warn("cannot list the pod's open connections", "pod", pod, "reason", listErr.Error())
		return
	}
	killed, err := destroySockets(ns, open)
	if err != nil {
		n.log().Warn("cannot destroy the pod's open connections", "pod", pod, "reason", err.Error())
	}
	if killed > 0 {
		n.log().Info("connections open at the change destroyed", "pod", pod, "count", killed)
	}
}

// releaseCaptured lets a captured, running pod go (it left the mesh; the
// caller holds lockPod): capture, then ztunnel, then every connection that
// went through the capture is destroyed, so none hangs on a path that no
// longer exists.
func (n *Node) releaseCaptured(ctx context.Context, uid string) error {
	n.mu.Lock()
	c := n.pods[uid]
	n.mu.Unlock()
	if c == nil {
		return n.release(ctx, uid)
	}
	// Our own handle: release closes c.ns.
	ns, err := netns.GetFromPath(fmt.Sprintf("/proc/self/fd/%d", int(c.ns)))
	if err != nil {
		return n.release(ctx, uid)
	}
	defer ns.Close()
	open, lerr := socketsToKill(ns, c.pod.IPs, allConnections)
	err = n.release(ctx, uid)
	n.destroy(ns, c.pod.Namespace+"/"+c.pod.Name, open, lerr)
	return err
}

// ReleaseRunning lets a running pod go (its namespace or the pod lost the
// ambient label); see releaseCaptured. Of a pod this agent does not hold,
// whatever is pinned is removed.
func (n *Node) ReleaseRunning(ctx context.Context, p *cniapi.Pod, procRoot string) error {
	defer n.lockPod(p.UID)()
	return n.releaseCaptured(ctx, p.UID)
}
