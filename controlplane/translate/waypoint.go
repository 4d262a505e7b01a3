package translate

import (
	"fmt"
	"net/netip"

	corev1 "k8s.io/api/core/v1"

	"github.com/zmesh/zmesh/api/workload"
	"github.com/zmesh/zmesh/controlplane/model"
)

// Waypoint labels and class, as in Istio.
const (
	// WaypointClass is the GatewayClass of waypoints.
	WaypointClass = model.WaypointClass

	labelUseWaypoint = model.LabelUseWaypoint
	labelWaypointFor = model.LabelWaypointFor
	labelGatewayName = model.LabelGatewayName

	hbonePort = 15008
)

// waypointBinding is what one object's use-waypoint labels resolved to.
type waypointBinding struct {
	// labelled: the object carries istio.io/use-waypoint (possibly "none").
	labelled bool
	// addr is nil for "none" and for a waypoint that is missing or not ready.
	addr *workload.GatewayAddress
	// gateway is "namespace/name" of the waypoint Gateway.
	gateway                   string
	forWorkloads, forServices bool
	// waypointFor is the Gateway's istio.io/waypoint-for value.
	waypointFor string
}

// resolveWaypoint reads the istio.io/use-waypoint labels of obj (a
// Namespace, Service, ServiceEntry or Pod), whose namespace is namespace.
// A missing or unready waypoint is reported on obj, into conds, and gives
// no address.
func (t *translator) resolveWaypoint(conds *conditions, labels map[string]string, namespace string, obj ObjectRef) waypointBinding {
	ns, name, labelled := model.UseWaypoint(labels, namespace)
	if !labelled {
		return waypointBinding{}
	}
	b := waypointBinding{labelled: true}
	if name == "" {
		return b
	}
	b.gateway = joinKey(ns, name)
	gw := t.waypoints[nsName{ns, name}]
	if gw == nil {
		conds.fail(obj, WaypointBound, ReasonWaypointNotFound, fmt.Sprintf(
			"metadata.labels[%s]: no Gateway %s of class %s; traffic goes directly to its destination until it exists",
			labelUseWaypoint, b.gateway, WaypointClass))
		return b
	}
	b.waypointFor, b.forWorkloads, b.forServices = model.WaypointFor(gw)
	port := uint32(hbonePort)
	for _, l := range gw.Spec.Listeners {
		if l.Protocol == "HBONE" && l.Port > 0 && l.Port <= 65535 {
			port = uint32(l.Port)
			break
		}
	}
	svc := t.serviceByName[nsName{ns, name}]
	ip, ok := clusterIP(svc)
	if !ok {
		conds.fail(obj, WaypointBound, ReasonWaypointNotReady, fmt.Sprintf(
			"metadata.labels[%s]: waypoint %s has no Service with a cluster IP yet; traffic goes directly to its destination until it has",
			labelUseWaypoint, b.gateway))
		return b
	}
	b.addr = &workload.GatewayAddress{
		Destination: &workload.GatewayAddress_Address{Address: &workload.NetworkAddress{
			Network: t.mesh.Network, Address: ip.AsSlice(),
		}},
		HboneMtlsPort: port,
	}
	return b
}

// clusterIP returns the first cluster IP of a Service.
func clusterIP(svc *corev1.Service) (netip.Addr, bool) {
	if svc == nil {
		return netip.Addr{}, false
	}
	ips := svc.Spec.ClusterIPs
	if len(ips) == 0 {
		ips = []string{svc.Spec.ClusterIP}
	}
	for _, s := range ips {
		if a, err := netip.ParseAddr(s); err == nil && a.Zone() == "" {
			return a.Unmap(), true
		}
	}
	return netip.Addr{}, false
}

// namespaceWaypoints resolves every namespace's own binding once.
func (t *translator) namespaceWaypoints() {
	for _, ns := range t.snap.Namespaces {
		if ns == nil {
			continue
		}
		ref := namespaceRef(ns.Name)
		b := t.resolveWaypoint(&t.conds, ns.Labels, ns.Name, ref)
		t.nsWaypoint[ns.Name] = b
		if b.addr != nil {
			if !b.forWorkloads && !b.forServices {
				t.conds.fail(ref, WaypointBound, ReasonWaypointForMismatch, fmt.Sprintf(
					"metadata.labels[%s]: waypoint %s has %s=none; nothing is bound to it", labelUseWaypoint, b.gateway, labelWaypointFor))
				continue
			}
			t.conds.ok(ref, WaypointBound, ReasonBound, fmt.Sprintf("bound to waypoint %s (for %s traffic)", b.gateway, b.waypointFor))
		}
	}
}

// waypointFor picks the waypoint of an object: its own label, else its
// namespace's. forWorkload tells whether the object is a workload (pod)
// or a service, which the waypoint must accept (istio.io/waypoint-for).
// An object's own label that names a waypoint of the wrong kind binds
// nothing (it does not fall back to the namespace) and is reported into
// conds.
func (t *translator) waypointFor(conds *conditions, labels map[string]string, namespace string, obj ObjectRef, forWorkload bool) *workload.GatewayAddress {
	b := t.resolveWaypoint(conds, labels, namespace, obj)
	own := b.labelled
	if !own {
		b = t.nsWaypoint[namespace]
	}
	if b.addr == nil {
		return nil
	}
	accepts := b.forServices
	kind := "services"
	if forWorkload {
		accepts, kind = b.forWorkloads, "workloads"
	}
	if !accepts {
		if own {
			conds.fail(obj, WaypointBound, ReasonWaypointForMismatch, fmt.Sprintf(
				"metadata.labels[%s]: waypoint %s is for %s traffic (%s), not for %s; not bound",
				labelUseWaypoint, b.gateway, b.waypointFor, labelWaypointFor, kind))
		}
		return nil
	}
	if own {
		conds.ok(obj, WaypointBound, ReasonBound, "bound to waypoint "+b.gateway)
	}
	return b.addr
}

// isWaypointItself reports whether a pod or Service belongs to a waypoint's
// own deployment, which must never be sent through a waypoint.
func (t *translator) isWaypointItself(namespace, name string, labels map[string]string, service bool) bool {
	if gw := labels[labelGatewayName]; gw != "" {
		if _, ok := t.waypoints[nsName{namespace, gw}]; ok {
			return true
		}
	}
	if service {
		_, ok := t.waypoints[nsName{namespace, name}]
		return ok
	}
	return false
}
