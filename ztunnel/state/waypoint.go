package state

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// WaypointsOf returns the waypoints a connection to w on port (the pod's
// own port) must come through, in no particular order, nil if none holds
// that port:
//
//   - w's own waypoint (a workload binding, which the control plane gives
//     only when the waypoint is for workload or all traffic), on any port;
//   - the waypoint of each service w backs (given only when it is for
//     service or all traffic) on that service's target ports for w: the
//     workload's own override, else the service's target port, else the
//     service port.
//
// When several apply, any of them may connect: each is a legitimate path
// to the port, and the pod cannot tell which service a waypoint is
// serving, since the waypoint asks for the pod's address. A pod that opted
// out (WaypointExempt) is held only by its own waypoint, which the
// control plane does not give it then. A service w names that the
// snapshot lacks holds nothing: its waypoint is not known either. Nor
// does a service without a VIP (headless): clients can only address its
// pods, which is not traffic a service waypoint takes, so there is
// nothing to bypass, and holding its ports would only cut the pods off
// (a workload waypoint is the way to put them behind one).
func (s *Snapshot) WaypointsOf(w *Workload, port uint16) []*Gateway {
	var gws []*Gateway
	if w.Waypoint != nil {
		gws = append(gws, w.Waypoint)
	}
	if w.WaypointExempt {
		return gws
	}
	for key, own := range w.Services {
		svc := s.Service(key)
		if svc == nil || svc.Waypoint == nil || len(svc.VIPs) == 0 || !targetsPort(svc, own, port) {
			continue
		}
		if !slices.ContainsFunc(gws, func(g *Gateway) bool { return *g == *svc.Waypoint }) {
			gws = append(gws, svc.Waypoint)
		}
	}
	return gws
}

// targetsPort reports whether port is one of svc's target ports on a
// workload whose overrides (service port → target port) are own. An
// override for a port the service does not list counts too: it is the
// control plane's word that the port serves the service.
func targetsPort(svc *Service, own map[uint16]uint16, port uint16) bool {
	for sp, tp := range svc.Ports {
		if o := own[sp]; o != 0 {
			tp = o
		} else if tp == 0 {
			tp = sp
		}
		if tp == port {
			return true
		}
	}
	for sp, o := range own {
		if _, listed := svc.Ports[sp]; !listed && (o == port || o == 0 && sp == port) {
			return true
		}
	}
	return false
}

// IsWaypoint reports whether peer is the identity of one of the workloads
// of waypoint gw: its service's endpoints, or the workload or service at
// its address. A waypoint the snapshot does not know admits nobody.
func (s *Snapshot) IsWaypoint(gw *Gateway, peer spiffeid.ID) bool {
	if peer.IsZero() {
		return false
	}
	var wps []*Workload
	switch {
	case gw.Service != "":
		wps = s.Endpoints(gw.Service)
	case s.WorkloadByAddr(gw.Addr) != nil:
		wps = []*Workload{s.WorkloadByAddr(gw.Addr)}
	case s.ServiceByVIP(gw.Addr) != nil:
		wps = s.Endpoints(s.ServiceByVIP(gw.Addr).Key())
	}
	for _, wp := range wps {
		if wp.Identity == peer {
			return true
		}
	}
	return false
}

// WaypointRefusal is why a connection from peer (zero: plaintext) to w
// on port is refused for not coming through w's waypoint, "" if it came
// from that waypoint or none holds the port. The reason names the
// waypoints and the peer, for the access log.
func (s *Snapshot) WaypointRefusal(w *Workload, port uint16, peer spiffeid.ID) string {
	gws := s.WaypointsOf(w, port)
	if len(gws) == 0 {
		return ""
	}
	names := make([]string, len(gws))
	for i, gw := range gws {
		if s.IsWaypoint(gw, peer) {
			return ""
		}
		names[i] = s.WaypointName(gw)
	}
	slices.Sort(names)
	who := "a plaintext client"
	if !peer.IsZero() {
		who = peer.String()
	}
	which := "that waypoint"
	if len(names) > 1 {
		which = "any of them"
	}
	return fmt.Sprintf("port %d is behind waypoint %s and the peer, %s, is not %s", port, strings.Join(names, " or "), who, which)
}

// WaypointName names a waypoint for people: its service when the
// snapshot has one at its address, then the address.
func (s *Snapshot) WaypointName(gw *Gateway) string {
	if gw.Service != "" {
		return gw.String()
	}
	addr := netip.AddrPortFrom(gw.Addr.Addr, gw.HBONEPort).String()
	if svc := s.ServiceByVIP(gw.Addr); svc != nil {
		return fmt.Sprintf("%s (%s)", svc.Key(), addr)
	}
	return addr
}
