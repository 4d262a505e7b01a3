// Package netenv builds small network topologies out of network namespaces
// for tests, the demo and benchmarks: a namespace per node or pod, veth
// pairs, bridges. Everything is created inside namespaces it makes itself,
// never in the caller's namespace, so no packet can leave the machine, and
// Close removes what was made.
package netenv

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// NS is a named network namespace (visible as /run/netns/<Name>).
type NS struct {
	Name string
	h    netns.NsHandle
	nl   *netlink.Handle
}

var seq atomic.Uint32

// Prefix returns a short name prefix unique to this process, so parallel
// runs and leftovers of crashed ones never collide.
func Prefix() string { return fmt.Sprintf("zm%d", os.Getpid()%100000) }

// NewNS creates a namespace named <Prefix>-<name>-<n> with lo up.
func NewNS(name string) (*NS, error) {
	full := fmt.Sprintf("%s-%s-%d", Prefix(), name, seq.Add(1))
	var h netns.NsHandle
	err := onLockedThread(func() error {
		orig, err := netns.Get()
		if err != nil {
			return err
		}
		defer orig.Close()
		// NewNamed switches this thread into the new namespace.
		h, err = netns.NewNamed(full)
		if serr := netns.Set(orig); serr != nil {
			// The thread is stuck in the wrong namespace; let it die
			// with the goroutine instead of returning it to the pool.
			return fmt.Errorf("return to original netns: %w", serr)
		}
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("create netns %s: %w", full, err)
	}
	nl, err := netlink.NewHandleAt(h)
	if err != nil {
		h.Close()
		netns.DeleteNamed(full)
		return nil, fmt.Errorf("netlink handle in %s: %w", full, err)
	}
	n := &NS{Name: full, h: h, nl: nl}
	lo, err := nl.LinkByName("lo")
	if err == nil {
		err = nl.LinkSetUp(lo)
	}
	if err != nil {
		n.Close()
		return nil, fmt.Errorf("bring up lo in %s: %w", full, err)
	}
	return n, nil
}

// Handle returns the namespace's file handle (valid until Close).
func (n *NS) Handle() netns.NsHandle { return n.h }

// Netlink returns a netlink handle working inside the namespace.
func (n *NS) Netlink() *netlink.Handle { return n.nl }

// Close deletes the namespace; its links go with it.
func (n *NS) Close() error {
	n.nl.Close()
	n.h.Close()
	return netns.DeleteNamed(n.Name)
}

// Do runs fn on an OS thread switched into the namespace. Sockets fn
// creates stay in the namespace for their whole life.
func (n *NS) Do(fn func() error) error {
	return onLockedThread(func() error {
		orig, err := netns.Get()
		if err != nil {
			return err
		}
		defer orig.Close()
		if err := netns.Set(n.h); err != nil {
			return fmt.Errorf("enter netns %s: %w", n.Name, err)
		}
		ferr := fn()
		if err := netns.Set(orig); err != nil {
			return errors.Join(ferr, fmt.Errorf("leave netns %s: %w", n.Name, err))
		}
		return ferr
	})
}

// onLockedThread runs fn on a dedicated locked OS thread. If fn leaves the
// thread in another namespace (an error returned from Set), the goroutine
// exits without unlocking, and the runtime discards the thread.
func onLockedThread(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		err := fn()
		errc <- err
		if err != nil && strings.Contains(err.Error(), "original netns") {
			return // thread tainted: exit locked
		}
		runtime.UnlockOSThread()
	}()
	return <-errc
}

// Listen opens a listener inside the namespace.
func (n *NS) Listen(network, addr string) (net.Listener, error) {
	var ln net.Listener
	err := n.Do(func() error {
		var lc net.ListenConfig
		var err error
		ln, err = lc.Listen(context.Background(), network, addr)
		return err
	})
	return ln, err
}

// Dial connects from inside the namespace.
func (n *NS) Dial(ctx context.Context, network, addr string) (net.Conn, error) {
	var c net.Conn
	err := n.Do(func() error {
		var d net.Dialer
		var err error
		c, err = d.DialContext(ctx, network, addr)
		return err
	})
	return c, err
}

// AddBridge creates an up bridge in the namespace.
func (n *NS) AddBridge(name string) error {
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: name}}
	if err := n.nl.LinkAdd(br); err != nil {
		return fmt.Errorf("add bridge %s in %s: %w", name, n.Name, err)
	}
	return n.nl.LinkSetUp(br)
}

var vethSeq atomic.Uint32

// Attach connects inner to a bridge in outer with a veth pair: the inner end
// is named ifName and carries addr; the outer end joins bridge. Both ends are
// created in outer, so nothing ever touches the caller's namespace.
func Attach(inner *NS, ifName string, addr netip.Prefix, outer *NS, bridge string) error {
	host := fmt.Sprintf("zv%d-%d", os.Getpid()%10000, vethSeq.Add(1))
	tmp := host + "p"
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: host}, PeerName: tmp}
	if err := outer.nl.LinkAdd(veth); err != nil {
		return fmt.Errorf("add veth %s in %s: %w", host, outer.Name, err)
	}
	peer, err := outer.nl.LinkByName(tmp)
	if err != nil {
		return err
	}
	if err := outer.nl.LinkSetNsFd(peer, int(inner.h)); err != nil {
		return fmt.Errorf("move %s into %s: %w", tmp, inner.Name, err)
	}
	in, err := inner.nl.LinkByName(tmp)
	if err != nil {
		return err
	}
	if err := inner.nl.LinkSetName(in, ifName); err != nil {
		return fmt.Errorf("rename %s to %s: %w", tmp, ifName, err)
	}
	if err := inner.nl.AddrAdd(in, &netlink.Addr{IPNet: prefixToIPNet(addr)}); err != nil {
		return fmt.Errorf("address %s on %s in %s: %w", addr, ifName, inner.Name, err)
	}
	if err := inner.nl.LinkSetUp(in); err != nil {
		return err
	}
	out, err := outer.nl.LinkByName(host)
	if err != nil {
		return err
	}
	if bridge != "" {
		br, err := outer.nl.LinkByName(bridge)
		if err != nil {
			return fmt.Errorf("bridge %s in %s: %w", bridge, outer.Name, err)
		}
		if err := outer.nl.LinkSetMaster(out, br); err != nil {
			return err
		}
	}
	return outer.nl.LinkSetUp(out)
}

func prefixToIPNet(p netip.Prefix) *net.IPNet {
	bits := 32
	if p.Addr().Is6() {
		bits = 128
	}
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), bits)}
}

// Topology is a set of namespaces closed together.
type Topology struct {
	mu  sync.Mutex
	nss []*NS
}

// NS creates a namespace owned by the topology.
func (t *Topology) NS(name string) (*NS, error) {
	n, err := NewNS(name)
	if err != nil {
		return nil, err
	}
	t.mu.Lock()
	t.nss = append(t.nss, n)
	t.mu.Unlock()
	return n, nil
}

// Close deletes every namespace, last made first.
func (t *Topology) Close() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	var errs []error
	for i := len(t.nss) - 1; i >= 0; i-- {
		errs = append(errs, t.nss[i].Close())
	}
	t.nss = nil
	return errors.Join(errs...)
}

// Leftovers lists namespaces named with this process's prefix that still
// exist, for tests that check they cleaned up.
func Leftovers() []string {
	ents, _ := os.ReadDir("/run/netns")
	var out []string
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), Prefix()+"-") {
			out = append(out, e.Name())
		}
	}
	return out
}
