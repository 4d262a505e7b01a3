package proxy

import (
	"fmt"
	"net/netip"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/zmesh/zmesh/ztunnel/authz"
	"github.com/zmesh/zmesh/ztunnel/state"
)

// Verdict is the inbound decision for one connection.
type Verdict struct {
	Allowed  bool
	Workload *state.Workload // the destination, when known
	Policy   string          // deciding policy key, if any
	Reason   string
	DryRun   []string
}

// AuthorizeInbound decides, without I/O, whether a connection may reach a
// local workload: c.Dst is the pod address and port the client asked for,
// c.Peer its verified identity (zero for plaintext). It fails closed: an
// unknown destination, or a selector policy listed but not yet received,
// denies. A workload bound to a waypoint accepts only its waypoint.
func AuthorizeInbound(snap *state.Snapshot, network string, c authz.Conn) Verdict {
	w := snap.WorkloadByAddr(state.NetAddr{Network: network, Addr: c.Dst.Addr().Unmap()})
	if w == nil {
		return Verdict{Reason: fmt.Sprintf("destination %s is not a known workload (fail closed)", c.Dst.Addr())}
	}
	if w.Waypoint != nil && !fromWaypoint(snap, w.Waypoint, c.Peer) {
		return Verdict{Workload: w, Reason: fmt.Sprintf("workload is bound to waypoint %s and the connection did not come through it", w.Waypoint)}
	}
	policies, missing := snap.PoliciesFor(w)
	if len(missing) > 0 {
		return Verdict{Workload: w, Reason: fmt.Sprintf("policy %s selects this workload but has not been received (fail closed)", strings.Join(missing, ", "))}
	}
	d := authz.Evaluate(policies, c)
	return Verdict{Allowed: d.Allowed, Workload: w, Policy: d.Policy, Reason: d.Reason, DryRun: d.DryRun}
}

// fromWaypoint reports whether peer is the identity of one of the
// gateway's workloads.
func fromWaypoint(snap *state.Snapshot, gw *state.Gateway, peer spiffeid.ID) bool {
	if peer.IsZero() {
		return false
	}
	var wps []*state.Workload
	switch {
	case gw.Service != "":
		wps = snap.Endpoints(gw.Service)
	case snap.WorkloadByAddr(gw.Addr) != nil:
		wps = []*state.Workload{snap.WorkloadByAddr(gw.Addr)}
	case snap.ServiceByVIP(gw.Addr) != nil:
		wps = snap.Endpoints(snap.ServiceByVIP(gw.Addr).Key())
	}
	for _, wp := range wps {
		if wp.Identity == peer {
			return true
		}
	}
	return false
}

// unmapped is the plain form of an address that may be IPv4-mapped.
func unmapped(ap netip.AddrPort) netip.AddrPort {
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}
