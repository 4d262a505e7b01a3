package proxy

import (
	"fmt"
	"net/netip"
	"strings"

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
// denies. A workload behind a waypoint accepts only that waypoint on the
// ports it holds (state.Snapshot.WaypointsOf).
func AuthorizeInbound(snap *state.Snapshot, network string, c authz.Conn) Verdict {
	w := snap.WorkloadByAddr(state.NetAddr{Network: network, Addr: c.Dst.Addr().Unmap()})
	if w == nil {
		return Verdict{Reason: fmt.Sprintf("destination %s is not a known workload (fail closed)", c.Dst.Addr())}
	}
	if reason := snap.WaypointRefusal(w, c.Dst.Port(), c.Peer); reason != "" {
		return Verdict{Workload: w, Reason: reason}
	}
	policies, missing := snap.PoliciesFor(w)
	if len(missing) > 0 {
		return Verdict{Workload: w, Reason: fmt.Sprintf("policy %s selects this workload but has not been received (fail closed)", strings.Join(missing, ", "))}
	}
	d := authz.Evaluate(policies, c)
	return Verdict{Allowed: d.Allowed, Workload: w, Policy: d.Policy, Reason: d.Reason, DryRun: d.DryRun}
}

// unmapped is the plain form of an address that may be IPv4-mapped.
func unmapped(ap netip.AddrPort) netip.AddrPort {
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}
