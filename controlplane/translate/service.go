package translate

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	networkingapi "istio.io/api/networking/v1alpha3"
	networkingv1 "istio.io/client-go/pkg/apis/networking/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/zmesh/zmesh/api/workload"
)

// service translates a Kubernetes Service. Its endpoints are not listed
// here: each selected pod's workload names the service (translator.pod).
func (t *translator) service(svc *corev1.Service) (string, *workload.Service) {
	if svc == nil {
		return "", nil
	}
	ref := serviceRef(svc)
	if !t.validRef(ref) {
		return "", nil
	}
	host := t.hostname(svc)
	key := joinKey(svc.Namespace, host)
	t.serviceKeys[key] = ref
	s := &workload.Service{Name: svc.Name, Namespace: svc.Namespace, Hostname: host,
		Visibility: exportVisibility(svc.Namespace, strings.Split(svc.Annotations[annotationExportTo], ","))}
	if svc.Spec.Type != corev1.ServiceTypeExternalName {
		ips := svc.Spec.ClusterIPs
		if len(ips) == 0 && svc.Spec.ClusterIP != "" {
			ips = []string{svc.Spec.ClusterIP}
		}
		for i, ip := range ips {
			if ip == "" || ip == corev1.ClusterIPNone {
				continue
			}
			a, err := netip.ParseAddr(ip)
			if err != nil || a.Zone() != "" {
				t.conds.fail(ref, ZtunnelAccepted, ReasonInvalidValue, fmt.Sprintf("spec.clusterIPs[%d]: %q is not an IP address; skipped", i, ip))
				continue
			}
			s.Addresses = append(s.Addresses, &workload.NetworkAddress{Network: t.mesh.Network, Address: a.Unmap().AsSlice()})
		}
	}
	for _, sp := range svc.Spec.Ports {
		if sp.Port < 1 || sp.Port > 65535 || containsServicePort(s.Ports, uint32(sp.Port)) {
			// ztunnel maps a service port to one target port: a UDP port
			// sharing a number with a TCP one adds nothing.
			continue
		}
		s.Ports = append(s.Ports, &workload.Port{ServicePort: uint32(sp.Port), TargetPort: serviceTargetPort(sp)})
	}
	if !t.isWaypointItself(svc.Namespace, svc.Name, svc.Labels, true) {
		s.Waypoint = t.waypointFor(&t.conds, svc.Labels, svc.Namespace, ref, false)
		t.serviceWaypoint[ref] = s.Waypoint != nil
	}
	return key, s
}

// annotationExportTo is Istio's exportTo for a Kubernetes Service: a
// comma-separated list of namespaces ("." its own, "*" all, "~" none).
const annotationExportTo = "networking.istio.io/exportTo"

// exportVisibility reads an exportTo list as ztunnel's service visibility,
// which knows two scopes: the service's own namespace, or everyone. A list
// that names only the service's own namespace ("." or its name) is
// NAMESPACE, and so is "~" (exported to no one), the narrowest scope
// ztunnel enforces; a list naming any other namespace, or "*", or none,
// is PUBLIC.
func exportVisibility(namespace string, exportTo []string) workload.Service_Visibility {
	local := false
	for _, e := range exportTo {
		switch e = strings.TrimSpace(e); e {
		case "":
		case ".", "~", namespace:
			local = true
		default:
			return workload.Service_PUBLIC
		}
	}
	if local {
		return workload.Service_NAMESPACE
	}
	return workload.Service_PUBLIC
}

// serviceTargetPort is the target port every endpoint shares, or 0 for a
// named target port, which each workload resolves (podPorts).
func serviceTargetPort(sp corev1.ServicePort) uint32 {
	if n, named := targetPortNumber(sp); !named {
		return n
	}
	return 0
}

// targetPortNumber returns the numeric target port of sp, or named=true.
// An unset target port is the service port, as Kubernetes defaults it.
func targetPortNumber(sp corev1.ServicePort) (port uint32, named bool) {
	tp := sp.TargetPort
	if tp.Type == intstr.String {
		if tp.StrVal != "" && '0' <= tp.StrVal[0] && tp.StrVal[0] <= '9' {
			if n, err := strconv.ParseUint(tp.StrVal, 10, 16); err == nil && n > 0 {
				return uint32(n), false
			}
		}
		if tp.StrVal != "" {
			return 0, true
		}
		return uint32(sp.Port), false
	}
	if tp.IntVal > 0 && tp.IntVal <= 65535 {
		return uint32(tp.IntVal), false
	}
	return uint32(sp.Port), false
}

// podPorts maps svc's ports to p's ports, resolving named target ports
// through the pod's container ports. A port whose name the pod does not
// define is left out (Kubernetes leaves the pod out of that port's
// endpoints); ok is false when no port is left, and the pod then does not
// back the service at all, since ztunnel would send such traffic to the
// service port instead.
func podPorts(svc *corev1.Service, p *corev1.Pod) (*workload.PortList, bool) {
	pl := &workload.PortList{Ports: make([]*workload.Port, 0, len(svc.Spec.Ports))}
	for _, sp := range svc.Spec.Ports {
		if sp.Port < 1 || sp.Port > 65535 || containsServicePort(pl.Ports, uint32(sp.Port)) {
			continue
		}
		target, named := targetPortNumber(sp)
		if named {
			var ok bool
			if target, ok = containerPort(p, sp.TargetPort.StrVal, sp.Protocol); !ok {
				continue
			}
		}
		pl.Ports = append(pl.Ports, &workload.Port{ServicePort: uint32(sp.Port), TargetPort: target})
	}
	return pl, len(pl.Ports) > 0 || len(svc.Spec.Ports) == 0
}

func containerPort(p *corev1.Pod, name string, proto corev1.Protocol) (uint32, bool) {
	if proto == "" {
		proto = corev1.ProtocolTCP
	}
	for _, list := range [][]corev1.Container{p.Spec.Containers, p.Spec.InitContainers} {
		for _, c := range list {
			for _, cp := range c.Ports {
				pp := cp.Protocol
				if pp == "" {
					pp = corev1.ProtocolTCP
				}
				if cp.Name == name && pp == proto && cp.ContainerPort > 0 && cp.ContainerPort <= 65535 {
					return uint32(cp.ContainerPort), true
				}
			}
		}
	}
	return 0, false
}

// seSelection is a ServiceEntry whose workloadSelector picks pods: the
// service keys and ports each selected pod gets.
type seSelection struct {
	keys  []string
	ports *workload.PortList
}

// serviceEntry translates one ServiceEntry: a Service per host, a Workload
// per endpoint, and an index entry for its workloadSelector.
func (t *translator) serviceEntry(se *networkingv1.ServiceEntry, out *Output) {
	if se == nil {
		return
	}
	ref := serviceEntryRef(se)
	if !t.validRef(ref) {
		return
	}
	spec := &se.Spec
	fail := func(format string, args ...any) {
		t.conds.fail(ref, ZtunnelAccepted, ReasonInvalidValue, fmt.Sprintf(format, args...))
	}

	var vips []*workload.NetworkAddress
	for i, a := range spec.Addresses {
		addr, err := parseSingleAddress(a)
		if err != nil {
			fail("spec.addresses[%d]: %v; skipped", i, err)
			continue
		}
		vips = append(vips, &workload.NetworkAddress{Network: t.mesh.Network, Address: addr.AsSlice()})
	}

	var ports []*workload.Port
	seen := map[uint32]bool{}
	for i, p := range spec.Ports {
		if p == nil {
			continue
		}
		if p.Number < 1 || p.Number > 65535 || p.TargetPort > 65535 {
			fail("spec.ports[%d]: port %d (targetPort %d) out of range 1-65535; skipped", i, p.Number, p.TargetPort)
			continue
		}
		if seen[p.Number] {
			continue
		}
		seen[p.Number] = true
		target := p.TargetPort
		if target == 0 {
			target = p.Number
		}
		ports = append(ports, &workload.Port{ServicePort: p.Number, TargetPort: target})
	}

	var waypoint *workload.GatewayAddress
	if !t.isWaypointItself(se.Namespace, se.Name, se.Labels, false) {
		waypoint = t.waypointFor(&t.conds, se.Labels, se.Namespace, ref, false)
	}
	t.serviceWaypoint[ref] = waypoint != nil

	var keys []string
	for i, host := range spec.Hosts {
		switch {
		case host == "":
			fail("spec.hosts[%d]: empty; skipped", i)
			continue
		case strings.Contains(host, "/"):
			fail("spec.hosts[%d]: %q is not a hostname; skipped", i, host)
			continue
		case strings.Contains(host, "*"):
			t.conds.fail(ref, ZtunnelAccepted, ReasonUnsupportedValue, fmt.Sprintf(
				"spec.hosts[%d]: wildcard host %q is not supported by ztunnel; skipped", i, host))
			continue
		}
		key := joinKey(se.Namespace, host)
		if other, taken := t.serviceKeys[key]; taken {
			t.conds.fail(ref, ZtunnelAccepted, ReasonConflict, fmt.Sprintf(
				"spec.hosts[%d]: %s is already defined by %s; skipped", i, key, other))
			continue
		}
		t.serviceKeys[key] = ref
		keys = append(keys, key)
		out.Addresses[key] = &workload.Address{Type: &workload.Address_Service{Service: &workload.Service{
			Name: se.Name, Namespace: se.Namespace, Hostname: host,
			Addresses: vips, Ports: ports, Waypoint: waypoint,
			Visibility: exportVisibility(se.Namespace, spec.ExportTo),
		}}}
	}
	t.conds.ok(ref, ZtunnelAccepted, ReasonAccepted, "sent to ztunnel")
	if len(keys) == 0 {
		return
	}

	dns := spec.Resolution == networkingapi.ServiceEntry_DNS || spec.Resolution == networkingapi.ServiceEntry_DNS_ROUND_ROBIN
	for i, ep := range spec.Endpoints {
		if ep == nil {
			continue
		}
		w := t.serviceEntryEndpoint(se, ep.Address, ep.Labels)
		if w == nil {
			continue
		}
		if a, err := netip.ParseAddr(ep.Address); err == nil && a.Zone() == "" {
			w.Addresses = [][]byte{a.Unmap().AsSlice()}
		} else if dns && !strings.Contains(ep.Address, "/") && ep.Address != "" {
			w.Hostname = ep.Address
		} else {
			fail("spec.endpoints[%d].address: %q is not an IP address (resolution %s); skipped", i, ep.Address, spec.Resolution)
			continue
		}
		if _, dup := out.Addresses[w.Uid]; dup {
			fail("spec.endpoints[%d].address: %q is listed twice; skipped", i, ep.Address)
			continue
		}
		if ep.Network != "" {
			w.Network = ep.Network
		}
		if ep.ServiceAccount != "" {
			w.ServiceAccount = ep.ServiceAccount
		}
		if w.TunnelProtocol == workload.TunnelProtocol_HBONE && !validSegment(w.ServiceAccount) {
			fail("spec.endpoints[%d].serviceAccount: %q cannot be part of an identity; the endpoint is not reached over HBONE", i, w.ServiceAccount)
			w.TunnelProtocol = workload.TunnelProtocol_NONE
		}
		w.Locality = parseLocality(ep.Locality)
		w.Services = make(map[string]*workload.PortList, len(keys))
		pl := &workload.PortList{Ports: make([]*workload.Port, 0, len(ports))}
		for _, p := range spec.Ports {
			if p == nil || !seen[p.Number] {
				continue
			}
			target := p.TargetPort
			if target == 0 {
				target = p.Number
			}
			if n, ok := ep.Ports[p.Name]; ok && n > 0 && n <= 65535 {
				target = n
			}
			if !containsServicePort(pl.Ports, p.Number) {
				pl.Ports = append(pl.Ports, &workload.Port{ServicePort: p.Number, TargetPort: target})
			}
		}
		for _, k := range keys {
			w.Services[k] = pl
		}
		out.Addresses[w.Uid] = &workload.Address{Type: &workload.Address_Workload{Workload: w}}
	}

	if sel := spec.WorkloadSelector; sel != nil && len(sel.Labels) > 0 {
		idx := t.seSelectors[se.Namespace]
		if idx == nil {
			idx = &selectorIndex[*seSelection]{}
			t.seSelectors[se.Namespace] = idx
		}
		idx.add(sel.Labels, &seSelection{keys: keys, ports: &workload.PortList{Ports: ports}})
	}
}

func containsServicePort(ps []*workload.Port, port uint32) bool {
	for _, p := range ps {
		if p.ServicePort == port {
			return true
		}
	}
	return false
}

// serviceEntryEndpoint is the Workload of an inline ServiceEntry endpoint,
// without addresses and services.
func (t *translator) serviceEntryEndpoint(se *networkingv1.ServiceEntry, address string, labels map[string]string) *workload.Workload {
	proto := workload.TunnelProtocol_NONE
	if labels[labelDataplaneMode] == dataplaneAmbient {
		proto = workload.TunnelProtocol_HBONE
	}
	return &workload.Workload{
		Uid:               t.mesh.ClusterID + "/networking.istio.io/ServiceEntry/" + se.Namespace + "/" + se.Name + "/" + address,
		Name:              se.Name,
		Namespace:         se.Namespace,
		Network:           t.mesh.Network,
		TunnelProtocol:    proto,
		TrustDomain:       t.mesh.TrustDomain,
		ServiceAccount:    "default",
		CanonicalName:     canonicalName(labels, se.Name),
		CanonicalRevision: canonicalRevision(labels),
		WorkloadType:      workload.WorkloadType_POD,
		WorkloadName:      se.Name,
		ClusterId:         t.mesh.ClusterID,
		Status:            workload.WorkloadStatus_HEALTHY,
	}
}

// parseSingleAddress accepts an IP, or a CIDR holding one address
// (a.b.c.d/32, x::y/128): ztunnel finds services by VIP, not by range.
func parseSingleAddress(s string) (netip.Addr, error) {
	if a, err := netip.ParseAddr(s); err == nil {
		if a.Zone() != "" {
			return netip.Addr{}, fmt.Errorf("%q has a zone", s)
		}
		return a.Unmap(), nil
	}
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("%q is not an IP address or CIDR", s)
	}
	if p.Bits() != p.Addr().BitLen() {
		return netip.Addr{}, fmt.Errorf("CIDR %q is a range, not one address; ztunnel matches service addresses exactly", s)
	}
	return p.Addr().Unmap(), nil
}

// parseLocality reads Istio's "region/zone/subzone".
func parseLocality(s string) *workload.Locality {
	if s == "" {
		return nil
	}
	parts := strings.SplitN(s, "/", 3)
	l := &workload.Locality{Region: parts[0]}
	if len(parts) > 1 {
		l.Zone = parts[1]
	}
	if len(parts) > 2 {
		l.Subzone = parts[2]
	}
	return l
}
