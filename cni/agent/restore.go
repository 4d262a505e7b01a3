package agent

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"

	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/zmesh/zmesh/bpf"
	"github.com/zmesh/zmesh/cni/cniapi"
	"github.com/zmesh/zmesh/cni/redirect"
)

// PodInfo is what a membership source knows of one pod of this node.
type PodInfo struct {
	UID, Name, Namespace, ServiceAccount string
	IPs                                  []string
	// Ambient is true when the pod belongs in the mesh.
	Ambient bool
}

// Restore takes back, after a restart, the pods this agent captured before:
// their pins under BPFRoot are the record. A pinned pod the source still
// lists keeps its capture untouched and is registered with the ZDS server,
// so the next ztunnel's snapshot carries it; whether it still belongs in
// the mesh is the reconciler's business, which releases it the usual way
// if not. A pinned pod the source does not list (deleted while the agent
// was away) is released here. Call it before the ZDS server accepts
// ztunnels: a snapshot without the node's captured pods would make
// ztunnel drop them.
func (n *Node) Restore(ctx context.Context, procRoot string, lookup func(uid string) (PodInfo, bool)) error {
	ents, err := os.ReadDir(n.BPFRoot)
	if err != nil {
		return fmt.Errorf("restore: read %s: %w", n.BPFRoot, err)
	}
	var errs []error
	for _, e := range ents {
		dir := filepath.Join(n.BPFRoot, e.Name())
		if !e.IsDir() || !bpf.Pinned(dir) {
			continue
		}
		uid := e.Name()
		ns, nsErr := pinnedNetns(dir, procRoot)
		info, known := lookup(uid)
		if !known || nsErr != nil {
			reason := "pod gone"
			if nsErr != nil {
				reason = nsErr.Error()
			}
			n.log().Info("releasing a pod captured before the restart", "uid", uid, "reason", reason)
			errs = append(errs, n.releaseOrphan(uid, ns))
			continue
		}
		if err := n.adopt(ctx, ns, info); err != nil {
			ns.Close()
			errs = append(errs, fmt.Errorf("restore pod %s/%s: %w", info.Namespace, info.Name, err))
		}
	}
	return errors.Join(errs...)
}

// adopt registers a pod captured by an earlier run; on success the node
// owns ns.
func (n *Node) adopt(ctx context.Context, ns netns.NsHandle, info PodInfo) error {
	ips, err := parseIPs(info.IPs)
	if err != nil {
		return err
	}
	if len(ips) == 0 {
		if ips, err = podAddrs(ns); err != nil {
			return err
		}
	}
	p := &cniapi.Pod{UID: info.UID, Name: info.Name, Namespace: info.Namespace}
	cfg := n.redirectConfig(p, ips)
	zp, err := n.zdsPod(ns, info.UID, info.Name, info.Namespace, info.ServiceAccount, ips)
	if err != nil {
		return err
	}
	if err := n.ZDS.Keep(ctx, zp); err != nil {
		return err
	}
	n.keep(&captured{pod: CapturedPod{UID: info.UID, Name: info.Name, Namespace: info.Namespace, ServiceAccount: info.ServiceAccount, IPs: ips}, cfg: cfg, ns: ns})
	n.log().Info("pod captured before the restart kept", "pod", info.Namespace+"/"+info.Name, "uid", info.UID)
	return nil
}

// releaseOrphan removes the capture of a pod nobody lists: the pins, and
// the routing if its namespace still exists (ns is closed).
func (n *Node) releaseOrphan(uid string, ns netns.NsHandle) error {
	err := bpf.Unpin(n.dir(uid))
	if ns.IsOpen() {
		defer ns.Close()
		ips, aerr := podAddrs(ns)
		if aerr == nil {
			aerr = redirect.Remove(ns, n.redirectConfig(&cniapi.Pod{UID: uid}, ips))
		}
		err = errors.Join(err, aerr)
	}
	return err
}

// pinnedNetns opens the network namespace a pinned capture link is attached
// to, found among the running processes by its inode.
func pinnedNetns(dir, procRoot string) (netns.NsHandle, error) {
	l, err := link.LoadPinnedLink(filepath.Join(dir, "link"), nil)
	if err != nil {
		return netns.None(), fmt.Errorf("open pinned link: %w", err)
	}
	defer l.Close()
	info, err := l.Info()
	if err != nil {
		return netns.None(), fmt.Errorf("pinned link info: %w", err)
	}
	ni := info.NetNs()
	if ni == nil {
		return netns.None(), errors.New("pinned link is not a netns link")
	}
	return netnsByInode(procRoot, uint64(ni.NetnsInode))
}

// netnsByInode opens the network namespace with inode ino that some
// process under procRoot is in.
func netnsByInode(procRoot string, ino uint64) (netns.NsHandle, error) {
	ents, err := os.ReadDir(procRoot)
	if err != nil {
		return netns.None(), err
	}
	for _, e := range ents {
		if _, err := strconv.Atoi(e.Name()); err != nil {
			continue
		}
		path := filepath.Join(procRoot, e.Name(), "ns", "net")
		var st unix.Stat_t
		if unix.Stat(path, &st) != nil || st.Ino != ino {
			continue
		}
		if h, err := netns.GetFromPath(path); err == nil {
			return h, nil
		}
	}
	return netns.None(), fmt.Errorf("netns inode %d: %w", ino, ErrNetnsNotFound)
}

// podAddrs lists the pod's global addresses (at most one per family, as
// capture supports).
func podAddrs(ns netns.NsHandle) ([]netip.Addr, error) {
	nl, err := netlink.NewHandleAt(ns)
	if err != nil {
		return nil, err
	}
	defer nl.Close()
	addrs, err := nl.AddrList(nil, netlink.FAMILY_ALL)
	if err != nil {
		return nil, err
	}
	var v4, v6 netip.Addr
	for _, a := range addrs {
		ip, ok := netip.AddrFromSlice(a.IP)
		if !ok || !ip.Unmap().IsGlobalUnicast() {
			continue
		}
		ip = ip.Unmap()
		if ip.Is4() && !v4.IsValid() {
			v4 = ip
		} else if ip.Is6() && !v6.IsValid() {
			v6 = ip
		}
	}
	var out []netip.Addr
	for _, ip := range []netip.Addr{v4, v6} {
		if ip.IsValid() {
			out = append(out, ip)
		}
	}
	if len(out) == 0 {
		return nil, errors.New("pod netns has no global address")
	}
	return out, nil
}
