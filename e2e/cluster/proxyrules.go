package cluster

import (
	"cmp"
	"fmt"
	"maps"
	"net/netip"
	"slices"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
)

// proxyTable is the nftables table (family ip) the service proxy owns in
// each node's host namespace, named as kube-proxy's nftables mode names
// its own, so `nft list table ip kube-proxy` reads as on a cluster node.
const proxyTable = "kube-proxy"

// svcPort is one ClusterIP:port of a Service as a node's table serves it.
type svcPort struct {
	Name  string // namespace/service:port name (number if unnamed), for comments and logs
	VIP   netip.AddrPort
	Proto corev1.Protocol // TCP or UDP
	// Endpoints are where new connections go (one at random), sorted;
	// none: they are rejected.
	Endpoints []netip.AddrPort
}

// nodeRules computes node's table from the Services and EndpointSlices:
// every port of a Service with an IPv4 ClusterIP (headless and
// ExternalName Services have none), TCP or UDP, with the ready endpoints
// of the slices of the port's name and protocol (an endpoint whose Ready
// condition is unset counts as ready, as the API defines); with
// internalTrafficPolicy Local, only those on node.
func nodeRules(node string, svcs []*corev1.Service, eps []*discoveryv1.EndpointSlice) []svcPort {
	byService := map[string][]*discoveryv1.EndpointSlice{}
	for _, sl := range eps {
		if sl.AddressType != discoveryv1.AddressTypeIPv4 {
			continue
		}
		if name := sl.Labels[discoveryv1.LabelServiceName]; name != "" {
			key := sl.Namespace + "/" + name
			byService[key] = append(byService[key], sl)
		}
	}
	var out []svcPort
	for _, s := range svcs {
		ip, err := netip.ParseAddr(s.Spec.ClusterIP)
		if err != nil || !ip.Is4() {
			continue
		}
		local := s.Spec.InternalTrafficPolicy != nil && *s.Spec.InternalTrafficPolicy == corev1.ServiceInternalTrafficPolicyLocal
		for _, p := range s.Spec.Ports {
			proto := p.Protocol
			if proto == "" {
				proto = corev1.ProtocolTCP
			}
			if proto != corev1.ProtocolTCP && proto != corev1.ProtocolUDP {
				continue
			}
			name := p.Name
			if name == "" {
				name = fmt.Sprint(p.Port)
			}
			sp := svcPort{Name: fmt.Sprintf("%s/%s:%s", s.Namespace, s.Name, name), VIP: netip.AddrPortFrom(ip, uint16(p.Port)), Proto: proto}
			seen := map[netip.AddrPort]bool{}
			for _, sl := range byService[s.Namespace+"/"+s.Name] {
				num := slicePort(sl, p.Name, proto)
				if num == 0 {
					continue
				}
				for _, e := range sl.Endpoints {
					if e.Conditions.Ready != nil && !*e.Conditions.Ready {
						continue
					}
					if local && (e.NodeName == nil || *e.NodeName != node) {
						continue
					}
					for _, a := range e.Addresses {
						if addr, err := netip.ParseAddr(a); err == nil && addr.Is4() {
							ep := netip.AddrPortFrom(addr, num)
							if !seen[ep] {
								seen[ep] = true
								sp.Endpoints = append(sp.Endpoints, ep)
							}
						}
					}
				}
			}
			slices.SortFunc(sp.Endpoints, func(a, b netip.AddrPort) int { return a.Compare(b) })
			out = append(out, sp)
		}
	}
	slices.SortFunc(out, func(a, b svcPort) int {
		return cmp.Or(a.VIP.Compare(b.VIP), cmp.Compare(a.Proto, b.Proto))
	})
	// Two Services cannot share a ClusterIP; should the API ever show
	// both (one deleted, one made), the first is served.
	return slices.CompactFunc(out, func(a, b svcPort) bool { return a.VIP == b.VIP && a.Proto == b.Proto })
}

// slicePort is the number of the slice's port of that name and protocol,
// 0 if it has none.
func slicePort(sl *discoveryv1.EndpointSlice, name string, proto corev1.Protocol) uint16 {
	for _, p := range sl.Ports {
		pn, pp := "", corev1.ProtocolTCP
		if p.Name != nil {
			pn = *p.Name
		}
		if p.Protocol != nil {
			pp = *p.Protocol
		}
		if pn == name && pp == proto && p.Port != nil && *p.Port > 0 && *p.Port < 65536 {
			return uint16(*p.Port)
		}
	}
	return 0
}

// proxyTableBatch queues, on c, the replacement of proxyTable by the
// table serving ports; c.Flush sends it as one transaction. The table:
//
//	nat-prerouting, nat-output (dstnat): jump services
//	services: ip daddr VIP meta l4proto P th dport PORT goto svc-i
//	svc-i: numgen random mod N vmap { 0: goto ep-i-0, ... }
//	ep-i-j: dnat to ENDPOINT
//	nat-postrouting (srcnat): hairpin (a pod sent to itself) masquerade
//	filter-forward, filter-output: jump no-endpoints
//	no-endpoints: ip daddr VIP meta l4proto P th dport PORT reject
func proxyTableBatch(c *nftables.Conn, ports []svcPort) error {
	t := &nftables.Table{Family: nftables.TableFamilyIPv4, Name: proxyTable}
	// Adding first makes the deletion valid when there is no table yet.
	c.AddTable(t)
	c.DelTable(t)
	c.AddTable(t)

	services := c.AddChain(&nftables.Chain{Name: "services", Table: t})
	noEndpoints := c.AddChain(&nftables.Chain{Name: "no-endpoints", Table: t})
	base := func(name string, typ nftables.ChainType, hook *nftables.ChainHook, prio *nftables.ChainPriority, to *nftables.Chain) *nftables.Chain {
		ch := c.AddChain(&nftables.Chain{Name: name, Table: t, Type: typ, Hooknum: hook, Priority: prio})
		if to != nil {
			c.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: []expr.Any{&expr.Verdict{Kind: expr.VerdictJump, Chain: to.Name}}})
		}
		return ch
	}
	base("nat-prerouting", nftables.ChainTypeNAT, nftables.ChainHookPrerouting, nftables.ChainPriorityNATDest, services)
	base("nat-output", nftables.ChainTypeNAT, nftables.ChainHookOutput, nftables.ChainPriorityNATDest, services)
	post := base("nat-postrouting", nftables.ChainTypeNAT, nftables.ChainHookPostrouting, nftables.ChainPriorityNATSource, nil)
	base("filter-forward", nftables.ChainTypeFilter, nftables.ChainHookForward, nftables.ChainPriorityFilter, noEndpoints)
	base("filter-output", nftables.ChainTypeFilter, nftables.ChainHookOutput, nftables.ChainPriorityFilter, noEndpoints)

	hairpin := map[netip.Addr]bool{}
	for i, sp := range ports {
		comment := userdata.AppendString(nil, userdata.TypeComment, sp.Name)
		if len(sp.Endpoints) == 0 {
			c.AddRule(&nftables.Rule{Table: t, Chain: noEndpoints, UserData: comment, Exprs: append(matchPort(sp),
				&expr.Reject{Type: unix.NFT_REJECT_ICMP_UNREACH, Code: icmpPortUnreachable})})
			continue
		}
		svc := c.AddChain(&nftables.Chain{Name: fmt.Sprintf("svc-%d", i), Table: t})
		c.AddRule(&nftables.Rule{Table: t, Chain: services, UserData: comment, Exprs: append(matchPort(sp),
			&expr.Verdict{Kind: expr.VerdictGoto, Chain: svc.Name})})
		var elems []nftables.SetElement
		for j, ep := range sp.Endpoints {
			ch := c.AddChain(&nftables.Chain{Name: fmt.Sprintf("ep-%d-%d", i, j), Table: t})
			ip := ep.Addr().As4()
			c.AddRule(&nftables.Rule{Table: t, Chain: ch, UserData: userdata.AppendString(nil, userdata.TypeComment, ep.String()), Exprs: []expr.Any{
				&expr.Immediate{Register: 1, Data: ip[:]},
				&expr.Immediate{Register: 2, Data: binaryutil.BigEndian.PutUint16(ep.Port())},
				&expr.NAT{Type: expr.NATTypeDestNAT, Family: unix.NFPROTO_IPV4, RegAddrMin: 1, RegProtoMin: 2, Specified: true},
			}})
			elems = append(elems, nftables.SetElement{Key: binaryutil.NativeEndian.PutUint32(uint32(j)), VerdictData: &expr.Verdict{Kind: expr.VerdictGoto, Chain: ch.Name}})
			hairpin[ep.Addr()] = true
		}
		vmap := &nftables.Set{Table: t, Anonymous: true, Constant: true, IsMap: true, KeyType: nftables.TypeInteger, DataType: nftables.TypeVerdict}
		if err := c.AddSet(vmap, elems); err != nil {
			return fmt.Errorf("%s: endpoint map: %w", sp.Name, err)
		}
		c.AddRule(&nftables.Rule{Table: t, Chain: svc, Exprs: []expr.Any{
			&expr.Numgen{Register: 1, Modulus: uint32(len(sp.Endpoints)), Type: unix.NFT_NG_RANDOM},
			&expr.Lookup{SourceRegister: 1, SetName: vmap.Name, SetID: vmap.ID, IsDestRegSet: true, DestRegister: 0},
		}})
	}

	// A pod whose connection was DNATed to itself would receive a packet
	// from its own address, which its kernel drops: the node's address
	// stands in as the source, as kube-proxy's hairpin masquerade does.
	// Loopback is left alone (a node's own process reaching a
	// hostNetwork endpoint on the node).
	for _, addr := range slices.SortedFunc(maps.Keys(hairpin), func(a, b netip.Addr) int { return a.Compare(b) }) {
		ip := addr.As4()
		c.AddRule(&nftables.Rule{Table: t, Chain: post, Exprs: []expr.Any{
			&expr.Ct{Key: expr.CtKeySTATUS, Register: 1},
			&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: binaryutil.NativeEndian.PutUint32(ctStatusDstNAT), Xor: make([]byte, 4)},
			&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: make([]byte, 4)},
			&expr.Meta{Key: expr.MetaKeyOIF, Register: 1},
			&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: binaryutil.NativeEndian.PutUint32(loopbackIndex)},
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 12, Len: 4},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: ip[:]},
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 16, Len: 4},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: ip[:]},
			&expr.Masq{},
		}})
	}
	return nil
}

const (
	// ctStatusDstNAT is IPS_DST_NAT: the connection was DNATed.
	ctStatusDstNAT = 1 << 5
	// icmpPortUnreachable is the ICMP code a reject sends (ECONNREFUSED
	// for a TCP client, as kube-proxy's reject gives).
	icmpPortUnreachable = 3
	// loopbackIndex is lo's interface index, 1 in every namespace.
	loopbackIndex = 1
)

// matchPort matches the packets to sp's ClusterIP, protocol and port.
func matchPort(sp svcPort) []expr.Any {
	ip := sp.VIP.Addr().As4()
	proto := byte(unix.IPPROTO_TCP)
	if sp.Proto == corev1.ProtocolUDP {
		proto = unix.IPPROTO_UDP
	}
	return []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 16, Len: 4},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: ip[:]},
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{proto}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.BigEndian.PutUint16(sp.VIP.Port())},
	}
}
