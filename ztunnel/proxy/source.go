package proxy

import (
	"net/netip"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/zmesh/zmesh/ztunnel/state"
)

// SourceTrust says where the client address of an inbound HBONE request
// came from.
type SourceTrust int

const (
	// SourcePeer: the tunnel's TCP peer (no Forwarded for=, or one that
	// names the peer's own address and so only adds the client's port).
	SourcePeer SourceTrust = iota
	// SourceForwarded: Forwarded for=, believed because the authenticated
	// peer is the destination's waypoint.
	SourceForwarded
	// SourceForwardedIgnored: a Forwarded for= naming another address from
	// a peer that is not the destination's waypoint; the TCP peer is used.
	SourceForwardedIgnored
)

func (t SourceTrust) String() string {
	switch t {
	case SourceForwarded:
		return "forwarded"
	case SourceForwardedIgnored:
		return "forwarded-ignored"
	default:
		return "peer"
	}
}

// InboundSource decides, without I/O, which address inbound takes as the
// client's: for policy (source_ips, ipBlocks), telemetry and the
// transparent dial to the app. It is the tunnel's TCP peer, tcpPeer. The
// client's Forwarded for= (forwarded, zero if none) is believed only when
// the verified peer is a waypoint of dst (its own, or that of a service
// selecting it): a waypoint speaks for the clients it proxies, while from
// any other mesh identity the header would let it claim an address an
// ALLOW rule names. A for= with the peer's own address is kept whoever
// sends it: it tells nothing new but the client's port, which our client
// ztunnels send and the access log shows.
func InboundSource(snap *state.Snapshot, dst *state.Workload, peer spiffeid.ID, tcpPeer netip.Addr, forwarded netip.AddrPort) (netip.AddrPort, SourceTrust) {
	tcpPeer = tcpPeer.Unmap()
	forwarded = unmapped(forwarded)
	if !forwarded.IsValid() {
		return netip.AddrPortFrom(tcpPeer, 0), SourcePeer
	}
	if forwarded.Addr() == tcpPeer {
		return forwarded, SourcePeer
	}
	if isWaypointOf(snap, dst, peer) {
		return forwarded, SourceForwarded
	}
	return netip.AddrPortFrom(tcpPeer, 0), SourceForwardedIgnored
}

// isWaypointOf reports whether peer is the identity of a waypoint that w,
// or a service selecting w, is bound to.
func isWaypointOf(snap *state.Snapshot, w *state.Workload, peer spiffeid.ID) bool {
	if w == nil || peer.IsZero() {
		return false
	}
	if w.Waypoint != nil && snap.IsWaypoint(w.Waypoint, peer) {
		return true
	}
	for key := range w.Services {
		if svc := snap.Service(key); svc != nil && svc.Waypoint != nil && snap.IsWaypoint(svc.Waypoint, peer) {
			return true
		}
	}
	return false
}
