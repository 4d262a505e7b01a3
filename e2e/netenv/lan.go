package netenv

import (
	"fmt"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// LAN is the simplest useful topology: an underlay namespace holding a
// bridge, and hosts on it with one address each.
type LAN struct {
	Topology
	Underlay *NS
	prefix   netip.Prefix
	next     netip.Addr
}

// NewLAN makes the underlay for hosts in prefix (e.g. 10.44.0.0/24); hosts
// get addresses from .2 up.
func NewLAN(prefix netip.Prefix) (*LAN, error) {
	l := &LAN{prefix: prefix.Masked()}
	u, err := l.NS("underlay")
	if err != nil {
		return nil, err
	}
	if err := u.AddBridge("br0"); err != nil {
		l.Close()
		return nil, err
	}
	l.Underlay = u
	l.next = l.prefix.Addr().Next().Next()
	return l, nil
}

// Host adds a namespace attached to the bridge as eth0 and returns it with
// its address.
func (l *LAN) Host(name string) (*NS, netip.Addr, error) {
	addr := l.next
	if !l.prefix.Contains(addr) {
		return nil, netip.Addr{}, fmt.Errorf("lan %s is full", l.prefix)
	}
	l.next = addr.Next()
	n, err := l.NS(name)
	if err != nil {
		return nil, netip.Addr{}, err
	}
	if err := Attach(n, "eth0", netip.PrefixFrom(addr, l.prefix.Bits()), l.Underlay, "br0"); err != nil {
		return nil, netip.Addr{}, err
	}
	return n, addr, nil
}

// HostAt is Host with a chosen address, which must be in the LAN's prefix
// and not taken.
func (l *LAN) HostAt(name string, addr netip.Addr) (*NS, error) {
	if !l.prefix.Contains(addr) || addr == l.prefix.Addr() {
		return nil, fmt.Errorf("host %s: %s is not a host address of lan %s", name, addr, l.prefix)
	}
	n, err := l.NS(name)
	if err != nil {
		return nil, err
	}
	if err := Attach(n, "eth0", netip.PrefixFrom(addr, l.prefix.Bits()), l.Underlay, "br0"); err != nil {
		return nil, err
	}
	return n, nil
}

// AddAddr adds another address (e.g. IPv6) to a host's eth0, usable at
// once (no duplicate address detection).
func AddAddr(n *NS, ifName string, addr netip.Prefix) error {
	link, err := n.nl.LinkByName(ifName)
	if err != nil {
		return err
	}
	a := &netlink.Addr{IPNet: prefixToIPNet(addr), Flags: unix.IFA_F_NODAD}
	if err := n.nl.AddrAdd(link, a); err != nil {
		return fmt.Errorf("address %s on %s in %s: %w", addr, ifName, n.Name, err)
	}
	return nil
}
