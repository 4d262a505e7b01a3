package state

import (
	"net/netip"
	"slices"
)

// The mesh's address ranges tell an address ztunnel does not know yet (a
// pod or service the control plane has not pushed) from one outside the
// mesh. An unknown destination inside them is held briefly while the
// config catches up, never sent in plaintext at once.
//
// They are the prefixes given to the store (ztunnel's --mesh-cidrs: the
// cluster's pod and service CIDRs) or, when none are given, derived from
// what is known: the /24 (IPv4) or /64 (IPv6) around each known workload
// address and service VIP, per network — the blocks Kubernetes hands each
// node's pods by default, so a new pod lands in the block of its node's
// other pods.
const (
	derivedBits4 = 24
	derivedBits6 = 64
)

type meshRange struct {
	network string
	prefix  netip.Prefix
}

func derivedRange(a NetAddr) meshRange {
	bits := derivedBits6
	if a.Addr.Is4() {
		bits = derivedBits4
	}
	p, _ := a.Addr.Prefix(bits)
	return meshRange{a.Network, p}
}

// SetMeshCIDRs makes prefixes the mesh's address ranges, in place of the
// ranges derived from known addresses; none goes back to derived ones.
func (s *Store) SetMeshCIDRs(prefixes []netip.Prefix) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.cidrs = nil
	for _, p := range prefixes {
		s.cidrs = append(s.cidrs, p.Masked())
	}
	old := s.cur.Load()
	s.swapLocked(newSnapshot(old.workloads, old.services, old.policies, old.version+1, old.synced))
}

// InMeshRange reports whether a lies in the mesh's address ranges.
func (s *Snapshot) InMeshRange(a NetAddr) bool {
	a.Addr = a.Addr.Unmap()
	if len(s.cidrs) > 0 {
		return slices.ContainsFunc(s.cidrs, func(p netip.Prefix) bool { return p.Contains(a.Addr) })
	}
	_, ok := s.ranges[derivedRange(a)]
	return ok
}
