package l7

import (
	"fmt"
	"net/netip"
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/protobuf/types/known/wrapperspb"
	networking "istio.io/api/networking/v1alpha3"
	networkingv1 "istio.io/client-go/pkg/apis/networking/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/zmesh/zmesh/controlplane/model"
	"github.com/zmesh/zmesh/controlplane/translate"
)

// A ServiceEntry is served like a Service, one per host: its addresses are
// the chains' VIPs, its ports (protocol HTTP, HTTP2, GRPC, TCP, TLS, … as a
// Service port's appProtocol) the chains' ports, and its endpoints are the
// ambient pods its workloadSelector selects (over HBONE) together with its
// inline endpoints. An inline endpoint labelled
// istio.io/dataplane-mode: ambient is a mesh workload, reached over HBONE
// with the identity of its serviceAccount in the ServiceEntry's namespace;
// any other is outside the mesh and reached in plaintext: its endpoint
// metadata says tunnel "none" and names no identity.
//
// zmeshd resolves no names: with resolution DNS an endpoint given as a
// hostname, and the hosts of an entry with no endpoints, are reported and
// get no endpoint. Resolution NONE with no endpoints cannot pass traffic
// through to its original destination either (the destination is the
// entry's own address), so it is reported too.

// seRef names a ServiceEntry in problems.
func seRef(se *networkingv1.ServiceEntry) ObjectRef {
	return ObjectRef{"ServiceEntry", se.Namespace, se.Name}
}

const (
	// tunnelNone is the endpoint metadata's tunnel value for an endpoint
	// outside the mesh, which the waypoint dials in plaintext.
	tunnelNone = "none"
	// An inline endpoint with this label value is a mesh workload, as the
	// ztunnel translation reads it.
	labelDataplaneMode = "istio.io/dataplane-mode"
	dataplaneAmbient   = "ambient"
)

// serviceEntries binds the ServiceEntries bound to the waypoint, after the
// Services: a Service's VIP is never displaced by an entry claiming it.
func (b *builder) serviceEntries() {
	for _, se := range b.snap.ServiceEntries {
		if se == nil || !b.seBoundTo(se) {
			continue
		}
		if !visibleTo(se.Spec.ExportTo, se.Namespace, b.gw.Namespace) {
			b.report(seRef(se), ReasonNotExported, "spec.exportTo", fmt.Sprintf("not exported to namespace %s of waypoint %s; not served", b.gw.Namespace, b.gw.Name))
			continue
		}
		b.bound = append(b.bound, b.serviceEntry(se)...)
	}
}

// seBoundTo reports whether se is bound to this waypoint: by its own
// istio.io/use-waypoint label, else by its namespace's.
func (b *builder) seBoundTo(se *networkingv1.ServiceEntry) bool {
	ns, name := seWaypoint(b.snap, se)
	return name != "" && ns == b.gw.Namespace && name == b.gw.Name
}

func seWaypoint(snap *model.Snapshot, se *networkingv1.ServiceEntry) (ns, name string) {
	ns, name, labelled := model.UseWaypoint(se.Labels, se.Namespace)
	if !labelled {
		if nsObj := snap.Namespace(se.Namespace); nsObj != nil {
			ns, name, _ = model.UseWaypoint(nsObj.Labels, se.Namespace)
		}
	}
	return ns, name
}

// serviceEntryByHost finds the ServiceEntry visible to the waypoint that
// defines host and builds it; nil if none does.
func (b *builder) serviceEntryByHost(host string) *serviceInfo {
	for _, se := range b.snap.ServiceEntries {
		if se == nil || !visibleTo(se.Spec.ExportTo, se.Namespace, b.gw.Namespace) {
			continue
		}
		for _, h := range se.Spec.Hosts {
			if strings.ToLower(h) == host {
				b.serviceEntry(se)
				return b.services[host]
			}
		}
	}
	return nil
}

// serviceEntry builds the clusters of each host of se, once, and returns
// the hosts' infos.
func (b *builder) serviceEntry(se *networkingv1.ServiceEntry) []*serviceInfo {
	ref := seRef(se)
	if infos, ok := b.entries[ref]; ok {
		return infos
	}
	b.entries[ref] = nil
	svc := b.seService(se)
	var infos []*serviceInfo
	for i, h := range se.Spec.Hosts {
		host := strings.ToLower(h)
		path := fmt.Sprintf("spec.hosts[%d]", i)
		switch {
		case host == "" || strings.Contains(host, "/"):
			b.problem(ref, path, fmt.Sprintf("%q is not a hostname; skipped", h))
			continue
		case strings.Contains(host, "*"):
			b.problem(ref, path, fmt.Sprintf("wildcard host %q is not served by the waypoint; skipped", h))
			continue
		}
		if _, taken := b.services[host]; taken {
			b.problem(ref, path, fmt.Sprintf("%s is already defined by a Service or another ServiceEntry; skipped", host))
			continue
		}
		info := b.seHost(se, svc, host)
		infos = append(infos, info)
	}
	b.entries[ref] = infos
	return infos
}

// seService reads se as the Service the rest of the build knows: its
// addresses as cluster IPs, its ports with their protocol as appProtocol,
// its workloadSelector as the selector.
func (b *builder) seService(se *networkingv1.ServiceEntry) *corev1.Service {
	ref := seRef(se)
	svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: se.Name, Namespace: se.Namespace, Labels: se.Labels}}
	for i, a := range se.Spec.Addresses {
		ip, err := singleAddress(a)
		if err != nil {
			b.problem(ref, fmt.Sprintf("spec.addresses[%d]", i), err.Error()+"; skipped")
			continue
		}
		svc.Spec.ClusterIPs = append(svc.Spec.ClusterIPs, ip.String())
	}
	if sel := se.Spec.WorkloadSelector; sel != nil {
		svc.Spec.Selector = sel.Labels
	}
	seen := map[uint32]bool{}
	for i, p := range se.Spec.Ports {
		if p == nil {
			continue
		}
		path := fmt.Sprintf("spec.ports[%d]", i)
		if p.Number < 1 || p.Number > 65535 || p.TargetPort > 65535 {
			b.problem(ref, path, fmt.Sprintf("port %d (targetPort %d) out of range 1-65535; skipped", p.Number, p.TargetPort))
			continue
		}
		if seen[p.Number] {
			b.problem(ref, path+".number", fmt.Sprintf("port %d is listed twice; skipped", p.Number))
			continue
		}
		seen[p.Number] = true
		target := p.TargetPort
		if target == 0 {
			target = p.Number
		}
		sp := corev1.ServicePort{Name: p.Name, Port: int32(p.Number), TargetPort: intstr.FromInt32(int32(target))}
		if p.Protocol != "" {
			proto := strings.ToLower(p.Protocol)
			sp.AppProtocol = &proto
		}
		svc.Spec.Ports = append(svc.Spec.Ports, sp)
	}
	return svc
}

// singleAddress accepts an IP, or a CIDR of one address: a chain matches
// one destination address.
func singleAddress(s string) (netip.Addr, error) {
	if a, err := netip.ParseAddr(s); err == nil && a.Zone() == "" {
		return a.Unmap(), nil
	}
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("%q is not an IP address or CIDR", s)
	}
	if p.Bits() != p.Addr().BitLen() {
		return netip.Addr{}, fmt.Errorf("CIDR %q is a range: the waypoint serves single addresses", s)
	}
	return p.Addr().Unmap(), nil
}

// seHost builds the clusters of one host of se, as service does for a
// Service, and adds the inline endpoints to each load assignment.
func (b *builder) seHost(se *networkingv1.ServiceEntry, svc *corev1.Service, host string) *serviceInfo {
	ref := seRef(se)
	info := &serviceInfo{svc: svc, se: se, ref: ref, host: host, dr: b.destinationRule(svc, host)}
	b.services[host] = info
	pods := b.endpointPods(svc, ref)
	inline := b.seEndpoints(se)
	if len(pods) == 0 && len(inline) == 0 && len(se.Spec.Endpoints) == 0 && svc.Spec.Selector == nil {
		switch se.Spec.Resolution {
		case networking.ServiceEntry_DNS, networking.ServiceEntry_DNS_ROUND_ROBIN:
			b.problem(ref, "spec.resolution", fmt.Sprintf("%s: zmeshd does not resolve hosts for the waypoint; %s has no endpoints (503)", se.Spec.Resolution, host))
		default:
			b.problem(ref, "spec.endpoints", fmt.Sprintf("no endpoints and no workloadSelector: the waypoint cannot pass %s through to an original destination; it has no endpoints (503)", host))
		}
	}
	build := func(cs clusterSpec) {
		cs.ref = ref
		b.cluster(cs, pods)
		la := b.out.Endpoints[len(b.out.Endpoints)-1]
		var subsetLabels map[string]string
		if cs.subset != nil {
			subsetLabels = cs.subset.Labels
		}
		b.addInline(ref, la, cs.port, subsetLabels, inline)
	}
	for i, sp := range svc.Spec.Ports {
		p, ok := portOf(sp)
		if !ok {
			b.problem(ref, fmt.Sprintf("spec.ports[%d].protocol", i), fmt.Sprintf("%s is not served by the waypoint", sp.Protocol))
			continue
		}
		info.ports = append(info.ports, p)
		build(clusterSpec{svc: svc, host: host, port: p, dr: info.dr})
		if p.sniffed {
			tcp := p
			tcp.protocol, tcp.http2 = "tcp", false
			build(clusterSpec{svc: svc, host: host, port: tcp, dr: info.dr})
		}
		if info.dr == nil {
			continue
		}
		for j, s := range info.dr.Spec.Subsets {
			if s == nil || s.Name == "" {
				b.problem(drRef(info.dr), fmt.Sprintf("spec.subsets[%d].name", j), "required")
				continue
			}
			build(clusterSpec{svc: svc, host: host, port: p, dr: info.dr, subset: s, subsetIndex: j})
		}
	}
	return info
}

// seEndpoint is an inline endpoint of a ServiceEntry that the waypoint can
// reach.
type seEndpoint struct {
	index int // in spec.endpoints
	ep    *networking.WorkloadEntry
	pe    podEndpoint
}

// seEndpoints reads the inline endpoints of se. Those the waypoint must
// not or cannot reach are reported and left out.
func (b *builder) seEndpoints(se *networkingv1.ServiceEntry) []seEndpoint {
	ref := seRef(se)
	var out []seEndpoint
	for i, ep := range se.Spec.Endpoints {
		if ep == nil {
			continue
		}
		path := fmt.Sprintf("spec.endpoints[%d].address", i)
		ip, err := netip.ParseAddr(ep.Address)
		if err != nil || ip.Zone() != "" {
			if se.Spec.Resolution == networking.ServiceEntry_DNS || se.Spec.Resolution == networking.ServiceEntry_DNS_ROUND_ROBIN {
				b.problem(ref, path, fmt.Sprintf("%q: zmeshd does not resolve endpoint hostnames for the waypoint; left out", ep.Address))
			} else {
				b.problem(ref, path, fmt.Sprintf("%q is not an IP address; left out", ep.Address))
			}
			continue
		}
		ip = ip.Unmap()
		pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: se.Name, Namespace: se.Namespace, Labels: ep.Labels}}
		pe := podEndpoint{pod: pod, ip: ip, locality: seLocality(ep.Locality)}
		if ep.Labels[labelDataplaneMode] == dataplaneAmbient {
			sa := ep.ServiceAccount
			if sa == "" {
				sa = "default"
			}
			id, err := spiffeid.FromSegments(b.trustDomain(), "ns", se.Namespace, "sa", sa)
			if err != nil {
				b.problem(ref, fmt.Sprintf("spec.endpoints[%d].serviceAccount", i), fmt.Sprintf("%q cannot be part of an identity; left out", sa))
				continue
			}
			pe.identity = id.String()
		} else {
			if ip.IsLoopback() || ip.IsLinkLocalUnicast() || ip.IsUnspecified() || ip.IsMulticast() {
				// Dialled from the waypoint, these would reach the
				// waypoint itself or its node, not a server outside the
				// mesh.
				b.problem(ref, path, fmt.Sprintf("%s cannot be an endpoint outside the mesh (loopback, link-local, unspecified or multicast); left out", ip))
				continue
			}
			if p := b.meshPodAt(ip); p != nil {
				b.problem(ref, path, fmt.Sprintf("%s is the address of mesh pod %s/%s, which is reached over HBONE only: select it with spec.workloadSelector; left out", ip, p.Namespace, p.Name))
				continue
			}
			pe.plaintext = true
		}
		out = append(out, seEndpoint{index: i, ep: ep, pe: pe})
	}
	return out
}

// meshPodAt returns the running mesh pod with address ip, if any.
func (b *builder) meshPodAt(ip netip.Addr) *corev1.Pod {
	for _, p := range b.snap.Pods {
		if a, ok := podIP(p); ok && a == ip && running(p) && translate.InMesh(p, b.snap.Namespace(p.Namespace), b.opts.RequireRedirectionAnnotation) {
			return p
		}
	}
	return nil
}

// seLocality reads a WorkloadEntry's locality, "region/zone/subzone".
func seLocality(s string) *corev3.Locality {
	if s == "" {
		return nil
	}
	parts := strings.SplitN(s, "/", 3)
	l := &corev3.Locality{Region: parts[0]}
	if len(parts) > 1 {
		l.Zone = parts[1]
	}
	if len(parts) > 2 {
		l.SubZone = parts[2]
	}
	return l
}

// addInline adds the inline endpoints matching the subset's labels to la,
// on the port the endpoint's ports map names for the ServiceEntry port,
// else the port's target.
func (b *builder) addInline(ref ObjectRef, la *endpointv3.ClusterLoadAssignment, sp servicePort, subsetLabels map[string]string, inline []seEndpoint) {
	taken := map[netip.AddrPort]bool{}
	for _, g := range la.Endpoints {
		for _, e := range g.LbEndpoints {
			sa := e.GetEndpoint().GetAddress().GetSocketAddress()
			if a, err := netip.ParseAddr(sa.GetAddress()); err == nil {
				taken[netip.AddrPortFrom(a, uint16(sa.GetPortValue()))] = true
			}
		}
	}
	for _, ie := range inline {
		if !selects(subsetLabels, ie.ep.Labels) {
			continue
		}
		port := uint32(sp.targetPort.num)
		if n, ok := ie.ep.Ports[sp.name]; ok && n > 0 && n <= 65535 {
			port = n
		}
		addr := netip.AddrPortFrom(ie.pe.ip, uint16(port))
		if taken[addr] {
			b.problem(ref, fmt.Sprintf("spec.endpoints[%d].address", ie.index), fmt.Sprintf("%s is listed twice, or is a selected pod's address too; left out", ie.pe.ip))
			continue
		}
		taken[addr] = true
		var g *endpointv3.LocalityLbEndpoints
		for _, x := range la.Endpoints {
			if sameLocality(x.Locality, ie.pe.locality) {
				g = x
			}
		}
		if g == nil {
			g = &endpointv3.LocalityLbEndpoints{Locality: ie.pe.locality}
			la.Endpoints = append(la.Endpoints, g)
		}
		lbe := &endpointv3.LbEndpoint{
			HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{
				Address: &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
					Address:       ie.pe.ip.String(),
					PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: port},
				}}},
			}},
			HealthStatus: corev3.HealthStatus_HEALTHY,
			Metadata:     b.endpointMetadata(ie.pe),
		}
		if ie.ep.Weight > 0 {
			lbe.LoadBalancingWeight = wrapperspb.UInt32(ie.ep.Weight)
		}
		g.LbEndpoints = append(g.LbEndpoints, lbe)
	}
}

func sameLocality(a, b *corev3.Locality) bool {
	return a.GetRegion() == b.GetRegion() && a.GetZone() == b.GetZone() && a.GetSubZone() == b.GetSubZone()
}

// attachToServiceEntry attaches a Gateway API route to the hosts of the
// ServiceEntry a parentRef names (group networking.istio.io), as Istio
// does, only from the entry's own namespace (consumer routes attach to
// Services only).
func (b *builder) attachToServiceEntry(x xRoute, pr gatewayv1.ParentReference, ns, path string, direct map[string][]*xRoute) {
	for _, se := range b.snap.ServiceEntries {
		if se == nil || se.Namespace != ns || se.Name != string(pr.Name) {
			continue
		}
		for _, info := range b.entries[seRef(se)] {
			if b.boundHost(info.host) == nil {
				continue
			}
			if ns != x.ref.Namespace {
				b.report(x.ref, ReasonNotAllowed, path, fmt.Sprintf("a route for ServiceEntry %s/%s in another namespace (a consumer route) is supported for Services only; ignored", ns, pr.Name))
				return
			}
			y := x
			if pr.Port != nil {
				y.port = int32(*pr.Port)
			}
			if pr.SectionName != nil {
				y.section = string(*pr.SectionName)
			}
			direct[info.host] = appendRoute(direct[info.host], &y)
		}
	}
}

// boundServiceEntryHosts adds to bound the hosts of the ServiceEntries
// bound to gw, for Unbound.
func boundServiceEntryHosts(snap *model.Snapshot, gw *gatewayv1.Gateway, bound map[string]bool) {
	for _, se := range snap.ServiceEntries {
		if se == nil {
			continue
		}
		if ns, name := seWaypoint(snap, se); name == "" || ns != gw.Namespace || name != gw.Name {
			continue
		}
		for _, h := range se.Spec.Hosts {
			bound[strings.ToLower(h)] = true
		}
	}
}

// serviceEntryBound reports whether the ServiceEntry ns/name is bound to
// one of the waypoints, for Unbound.
func serviceEntryBound(snap *model.Snapshot, ns, name string, waypoints map[ObjectRef]bool) bool {
	for _, se := range snap.ServiceEntries {
		if se != nil && se.Namespace == ns && se.Name == name {
			wns, wname := seWaypoint(snap, se)
			return wname != "" && waypoints[ObjectRef{"Gateway", wns, wname}]
		}
	}
	return false
}
