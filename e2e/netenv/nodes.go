package netenv

import (
	"fmt"
	"net"
	"net/netip"
	"os"

	"github.com/vishvananda/netlink"
)

// Node is a node's host namespace on the LAN: it forwards for the pods of
// PodCIDR (their bridge is the CNI plugins' business) and routes the other
// nodes' pod ranges over the LAN.
type Node struct {
	Name    string
	Host    *NS
	Addr    netip.Addr // on the LAN
	PodCIDR netip.Prefix
}

// PodCIDR is the pod range of the i-th node (from 0): 10.50.<i+1>.0/24.
func PodCIDR(i int) netip.Prefix {
	return netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 50, byte(i + 1), 0}), 24)
}

// AddNodes adds a host namespace per name to the LAN, the i-th with pod
// range PodCIDR(i), with IP forwarding on and a route to every other node's
// pod range through that node.
func (l *LAN) AddNodes(names ...string) ([]*Node, error) {
	var nodes []*Node
	for i, name := range names {
		host, addr, err := l.Host(name)
		if err != nil {
			return nil, err
		}
		if err := host.Do(func() error { return os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte("1"), 0o644) }); err != nil {
			return nil, fmt.Errorf("%s: ip_forward: %w", name, err)
		}
		nodes = append(nodes, &Node{Name: name, Host: host, Addr: addr, PodCIDR: PodCIDR(i)})
	}
	for _, n := range nodes {
		for _, o := range nodes {
			if o == n {
				continue
			}
			dst := &net.IPNet{IP: o.PodCIDR.Addr().AsSlice(), Mask: net.CIDRMask(o.PodCIDR.Bits(), 32)}
			if err := n.Host.Netlink().RouteAdd(&netlink.Route{Dst: dst, Gw: o.Addr.AsSlice()}); err != nil {
				return nil, fmt.Errorf("%s: route to %s via %s: %w", n.Name, o.PodCIDR, o.Addr, err)
			}
		}
	}
	return nodes, nil
}
