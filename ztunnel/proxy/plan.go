package proxy

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/zmesh/zmesh/api/workload"
	"github.com/zmesh/zmesh/ztunnel/state"
)

// Route says how an outbound connection leaves the pod.
type Route int

const (
	// Passthrough: plain TCP to the original destination (not in the mesh).
	Passthrough Route = iota
	// Direct: HBONE to the destination workload's 15008.
	Direct
	// ViaWaypoint: HBONE to the waypoint, which routes on to the destination.
	ViaWaypoint
)

func (r Route) String() string {
	switch r {
	case Direct:
		return "direct"
	case ViaWaypoint:
		return "waypoint"
	default:
		return "passthrough"
	}
}

// Plan is the outcome of the outbound decision: where to connect, what to
// ask for, and whom to expect.
type Plan struct {
	Route Route
	// Dial is where the TCP connection goes: the destination's or the
	// waypoint's HBONE port, or the original destination for Passthrough.
	Dial netip.AddrPort
	// Target is the HBONE :authority: the chosen endpoint's ip:targetPort,
	// or the service VIP:port when going through a waypoint.
	Target netip.AddrPort
	// Identity is the peer the TLS handshake must prove.
	Identity spiffeid.ID
	// Workload is the chosen destination (nil when a waypoint chooses, or
	// the destination is unknown); Service the service addressed, if any.
	Workload *state.Workload
	Service  *state.Service
	// Waypoint is the waypoint workload for ViaWaypoint.
	Waypoint *state.Workload
}

// Source is what the decision needs of the connecting pod.
type Source struct {
	// Workload is the source pod's entry in the state; nil if the control
	// plane has not listed it yet.
	Workload *state.Workload
	Network  string
	Node     string
}

// namespace is the source's namespace, "" when the source is unknown.
func (s Source) namespace() string {
	if s.Workload == nil {
		return ""
	}
	return s.Workload.Namespace
}

// Errors the decision returns; the proxy closes the client connection and
// reports them in the access log.
var (
	ErrNoHealthyUpstream = errors.New("no healthy upstream")
	ErrNoServicePort     = errors.New("service has no such port")
	ErrWaypointUnknown   = errors.New("waypoint unknown")
	// ErrNotVisible: the service is NAMESPACE-scoped and the client is not
	// of its namespace (or not known, so its namespace is not either).
	ErrNotVisible = errors.New("service not visible to the client's namespace")
	// ErrNotSynced: ztunnel has no complete config yet, so it cannot tell
	// a mesh destination from one outside the mesh. It refuses rather
	// than send what may be mesh traffic in plaintext.
	ErrNotSynced = errors.New("no config from the control plane yet")
	// ErrUnknownInMesh: the destination is in the mesh's address ranges
	// but not (yet) in the config, e.g. a pod started a moment ago. The
	// proxy holds the connection while it asks for the address, and
	// refuses it if the address stays unknown: plaintext to what may be a
	// mesh pod is never the fallback.
	ErrUnknownInMesh = errors.New("destination in the mesh's address ranges is unknown")
)

// PlanOutbound decides, without I/O, how a connection from src to dst goes
// out. rr is a round-robin counter the caller advances per connection. An
// IPv4-mapped dst is the IPv4 address: the plan carries the plain form, so
// the HBONE authority and pool key do not depend on the socket's family.
//
// A destination on one of ztunnel's own ports (ReservedPort) is refused
// with ErrSelfCall when it is this pod, loopback, or a mesh workload (whose
// ztunnel holds that port): it could only reach a ztunnel, and loop back.
// The same port on a host outside the mesh is that host's business.
func PlanOutbound(snap *state.Snapshot, src Source, dst netip.AddrPort, rr uint64) (Plan, error) {
	dst = unmapped(dst)
	if !snap.Synced() {
		return Plan{}, ErrNotSynced
	}
	p, err := planOutbound(snap, src, dst, rr)
	if err == nil && selfCall(src, dst, p) {
		target := dst
		if p.Route != Passthrough {
			target = p.Target
		}
		return Plan{Workload: p.Workload, Service: p.Service}, fmt.Errorf("%w: %s", ErrSelfCall, target)
	}
	return p, err
}

func planOutbound(snap *state.Snapshot, src Source, dst netip.AddrPort, rr uint64) (Plan, error) {
	addr := state.NetAddr{Network: src.Network, Addr: dst.Addr()}
	if svc := snap.ServiceByVIP(addr); svc != nil {
		return planService(snap, src, svc, dst, rr)
	}
	if w := snap.WorkloadByAddr(addr); w != nil {
		return planWorkload(snap, src, w, dst, rr)
	}
	if snap.InMeshRange(addr) {
		return Plan{}, fmt.Errorf("%w: %s", ErrUnknownInMesh, addr)
	}
	return Plan{Route: Passthrough, Dial: dst}, nil
}

// selfCall reports whether plan p for dst would reach one of ztunnel's own
// ports (see PlanOutbound).
func selfCall(src Source, dst netip.AddrPort, p Plan) bool {
	if p.Route != Passthrough {
		return ReservedPort(p.Target.Port())
	}
	if !ReservedPort(dst.Port()) {
		return false
	}
	if dst.Addr().IsLoopback() || dst.Addr().IsUnspecified() {
		return true
	}
	return src.Workload != nil && slices.Contains(src.Workload.Addrs, dst.Addr())
}

func planService(snap *state.Snapshot, src Source, svc *state.Service, dst netip.AddrPort, rr uint64) (Plan, error) {
	if !svc.VisibleTo(src.namespace()) {
		// Refused, not passed through: the VIP is the service's, and in
		// plaintext it would still reach the service's pods.
		return Plan{Service: svc}, fmt.Errorf("%w: %s is visible only in namespace %s", ErrNotVisible, svc.Hostname, svc.Namespace)
	}
	if svc.LoadBalancing.GetMode() == workload.LoadBalancing_PASSTHROUGH {
		return Plan{Route: Passthrough, Dial: dst, Service: svc}, nil
	}
	target, ok := svc.Ports[dst.Port()]
	if !ok {
		return Plan{Service: svc}, fmt.Errorf("%w: %s has no port %d", ErrNoServicePort, svc.Hostname, dst.Port())
	}
	if svc.Waypoint != nil {
		wp, err := resolveWaypoint(snap, src, svc.Waypoint, rr)
		if err != nil {
			return Plan{Service: svc}, fmt.Errorf("service %s: %w", svc.Hostname, err)
		}
		if wp != nil {
			return viaWaypoint(wp, svc.Waypoint, dst, svc, nil), nil
		}
	}
	ep, epAddr := pickEndpoint(snap, src, svc, dst.Addr(), rr)
	if ep == nil {
		return Plan{Service: svc}, fmt.Errorf("%w: service %s", ErrNoHealthyUpstream, svc.Hostname)
	}
	port := dst.Port()
	if p := ep.Services[svc.Key()][dst.Port()]; p != 0 {
		port = p
	} else if target != 0 {
		port = target
	}
	p, err := planWorkload(snap, src, ep, netip.AddrPortFrom(epAddr, port), rr)
	p.Service = svc
	return p, err
}

func planWorkload(snap *state.Snapshot, src Source, w *state.Workload, dst netip.AddrPort, rr uint64) (Plan, error) {
	if w.Waypoint != nil {
		wp, err := resolveWaypoint(snap, src, w.Waypoint, rr)
		if err != nil {
			return Plan{Workload: w}, fmt.Errorf("workload %s/%s: %w", w.Namespace, w.Name, err)
		}
		if wp != nil {
			return viaWaypoint(wp, w.Waypoint, dst, nil, w), nil
		}
	}
	if !w.HBONE() {
		return Plan{Route: Passthrough, Dial: dst, Workload: w}, nil
	}
	return Plan{
		Route:    Direct,
		Dial:     netip.AddrPortFrom(dst.Addr(), state.DefaultHBONEPort),
		Target:   dst,
		Identity: w.Identity,
		Workload: w,
	}, nil
}

func viaWaypoint(wp *state.Workload, gw *state.Gateway, target netip.AddrPort, svc *state.Service, w *state.Workload) Plan {
	return Plan{
		Route:    ViaWaypoint,
		Dial:     netip.AddrPortFrom(familyAddr(wp, target.Addr()), gw.HBONEPort),
		Target:   target,
		Identity: wp.Identity,
		Service:  svc,
		Workload: w,
		Waypoint: wp,
	}
}

// resolveWaypoint finds the waypoint workload to use. It returns nil (no
// waypoint hop) when the source is that waypoint: its own traffic to the
// destination must not loop back to it.
func resolveWaypoint(snap *state.Snapshot, src Source, gw *state.Gateway, rr uint64) (*state.Workload, error) {
	var candidates []*state.Workload
	if gw.Service != "" {
		svc := snap.Service(gw.Service)
		if svc == nil {
			return nil, fmt.Errorf("%w: service %s", ErrWaypointUnknown, gw.Service)
		}
		candidates = snap.Endpoints(svc.Key())
	} else if w := snap.WorkloadByAddr(gw.Addr); w != nil {
		candidates = []*state.Workload{w}
	} else if svc := snap.ServiceByVIP(gw.Addr); svc != nil {
		candidates = snap.Endpoints(svc.Key())
	} else {
		return nil, fmt.Errorf("%w: %s", ErrWaypointUnknown, gw.Addr)
	}
	if src.Workload != nil {
		for _, c := range candidates {
			if c.UID == src.Workload.UID {
				return nil, nil
			}
		}
	}
	var healthy []*state.Workload
	for _, c := range candidates {
		if c.Healthy && c.HBONE() && len(c.Addrs) > 0 {
			healthy = append(healthy, c)
		}
	}
	if len(healthy) == 0 {
		// Never the destination instead: that would skip the waypoint's
		// policy, and its ztunnel would refuse it anyway.
		return nil, fmt.Errorf("%w: waypoint %s", ErrNoHealthyUpstream, snap.WaypointName(gw))
	}
	return healthy[rr%uint64(len(healthy))], nil
}

// pickEndpoint chooses a backend of svc: healthy ones (unless the service
// allows all), narrowed by its routing preference, round-robin.
func pickEndpoint(snap *state.Snapshot, src Source, svc *state.Service, vip netip.Addr, rr uint64) (*state.Workload, netip.Addr) {
	lb := svc.LoadBalancing
	var eps []*state.Workload
	for _, w := range snap.Endpoints(svc.Key()) {
		if len(w.Addrs) == 0 {
			continue
		}
		if !w.Healthy && lb.GetHealthPolicy() != workload.LoadBalancing_ALLOW_ALL {
			continue
		}
		eps = append(eps, w)
	}
	if prefs := lb.GetRoutingPreference(); len(prefs) > 0 && len(eps) > 0 {
		eps = preferred(eps, src, prefs, lb.GetMode() == workload.LoadBalancing_STRICT)
	}
	if len(eps) == 0 {
		return nil, netip.Addr{}
	}
	ep := eps[rr%uint64(len(eps))]
	return ep, familyAddr(ep, vip)
}

// preferred keeps the endpoints that match the source on the longest prefix
// of scopes (FAILOVER), or on all of them (STRICT).
func preferred(eps []*state.Workload, src Source, prefs []workload.LoadBalancing_Scope, strict bool) []*state.Workload {
	rank := func(w *state.Workload) int {
		n := 0
		for _, s := range prefs {
			if !sameScope(s, src, w) {
				break
			}
			n++
		}
		return n
	}
	best := -1
	var out []*state.Workload
	for _, w := range eps {
		switch r := rank(w); {
		case r > best:
			best, out = r, []*state.Workload{w}
		case r == best:
			out = append(out, w)
		}
	}
	if strict && best < len(prefs) {
		return nil
	}
	return out
}

func sameScope(s workload.LoadBalancing_Scope, src Source, w *state.Workload) bool {
	var sl *workload.Locality
	if src.Workload != nil {
		sl = src.Workload.Locality
	}
	switch s {
	case workload.LoadBalancing_REGION:
		return sl.GetRegion() == w.Locality.GetRegion()
	case workload.LoadBalancing_ZONE:
		return sl.GetRegion() == w.Locality.GetRegion() && sl.GetZone() == w.Locality.GetZone()
	case workload.LoadBalancing_SUBZONE:
		return sl.GetRegion() == w.Locality.GetRegion() && sl.GetZone() == w.Locality.GetZone() &&
			sl.GetSubzone() == w.Locality.GetSubzone()
	case workload.LoadBalancing_NODE:
		return src.Node != "" && src.Node == w.Node
	case workload.LoadBalancing_CLUSTER:
		return src.Workload != nil && src.Workload.ClusterID == w.ClusterID
	case workload.LoadBalancing_NETWORK:
		return src.Network == w.Network
	}
	return false
}

// familyAddr picks w's address of the same family as like, else its first.
func familyAddr(w *state.Workload, like netip.Addr) netip.Addr {
	for _, a := range w.Addrs {
		if a.Is4() == like.Unmap().Is4() {
			return a
		}
	}
	return w.Addrs[0]
}
