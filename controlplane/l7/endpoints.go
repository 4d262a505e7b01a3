package l7

import (
	"fmt"
	"net/netip"
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/protobuf/types/known/structpb"
	corev1 "k8s.io/api/core/v1"

	"github.com/zmesh/zmesh/controlplane/translate"
)

// podEndpoint is a pod that may serve a Service, with what every cluster of
// the Service needs from it.
type podEndpoint struct {
	pod      *corev1.Pod
	ip       netip.Addr
	identity string
	locality *corev3.Locality
	// plaintext: outside the mesh (a ServiceEntry endpoint), with no
	// identity; the waypoint dials it without a tunnel.
	plaintext bool
	// workload, canonicalService and canonicalRevision name the pod's
	// workload as its WDS Workload does (translate.WorkloadNames).
	workload, canonicalService, canonicalRevision string
}

// endpointPods returns the ready, mesh-enrolled pods svc selects. A
// selected pod left out for a reason the user can fix is reported.
func (b *builder) endpointPods(svc *corev1.Service, ref ObjectRef) []podEndpoint {
	if len(svc.Spec.Selector) == 0 {
		return nil
	}
	var out []podEndpoint
	seen := map[netip.Addr]string{}
	for _, p := range b.snap.Pods {
		if p.Namespace != svc.Namespace || !selects(svc.Spec.Selector, p.Labels) || !running(p) || !ready(p) {
			continue
		}
		if !translate.InMesh(p, b.snap.Namespace(p.Namespace), b.opts.RequireRedirectionAnnotation) {
			b.problem(ref, "spec.selector", fmt.Sprintf("pod %s is not enrolled in the mesh; the waypoint cannot reach it and leaves it out", p.Name))
			continue
		}
		ip, ok := podIP(p)
		if !ok {
			continue
		}
		// One address is one workload with one identity: the waypoint
		// refuses an assignment listing an address twice, so a stale pod
		// sharing a reused IP must not take the whole push down.
		if first, dup := seen[ip]; dup {
			b.problem(ref, "spec.selector", fmt.Sprintf("pods %s and %s both report IP %s; %s is left out", first, p.Name, ip, p.Name))
			continue
		}
		seen[ip] = p.Name
		sa := p.Spec.ServiceAccountName
		if sa == "" {
			sa = "default"
		}
		id, err := spiffeid.FromSegments(b.trustDomain(), "ns", p.Namespace, "sa", sa)
		if err != nil {
			b.problem(ref, "spec.selector", fmt.Sprintf("pod %s: cannot form a SPIFFE identity (%v); left out", p.Name, err))
			continue
		}
		pe := podEndpoint{pod: p, ip: ip, identity: id.String(), locality: PodLocality(p, b.snap.Node(p.Spec.NodeName))}
		pe.workload, pe.canonicalService, pe.canonicalRevision = translate.WorkloadNames(p)
		out = append(out, pe)
	}
	return out
}

func (b *builder) trustDomain() spiffeid.TrustDomain {
	td, err := spiffeid.TrustDomainFromString(b.opts.Mesh.TrustDomain)
	if err != nil {
		return spiffeid.RequireTrustDomainFromString("cluster.local")
	}
	return td
}

func running(p *corev1.Pod) bool {
	return p.DeletionTimestamp == nil && !p.Spec.HostNetwork && p.Status.Phase == corev1.PodRunning
}

func ready(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// podIP is the pod's first IP; the waypoint dials one address per workload.
func podIP(p *corev1.Pod) (netip.Addr, bool) {
	ips := []string{p.Status.PodIP}
	for _, ip := range p.Status.PodIPs {
		ips = append(ips, ip.IP)
	}
	for _, s := range ips {
		if a, err := netip.ParseAddr(s); err == nil && a.Zone() == "" && !a.IsUnspecified() {
			return a.Unmap(), true
		}
	}
	return netip.Addr{}, false
}

// localityLabel reads Istio's istio-locality pod label
// ("region.zone.subzone"), which overrides the node's topology labels.
func localityLabel(p *corev1.Pod) *corev3.Locality {
	v := p.Labels[labelLocality]
	if v == "" {
		return nil
	}
	parts := strings.SplitN(v, ".", 3)
	l := &corev3.Locality{Region: parts[0]}
	if len(parts) > 1 {
		l.Zone = parts[1]
	}
	if len(parts) > 2 {
		l.SubZone = parts[2]
	}
	return l
}

func selects(selector, labels map[string]string) bool {
	for k, v := range selector {
		if lv, ok := labels[k]; !ok || lv != v {
			return false
		}
	}
	return true
}

// targetPort resolves a Service port's target on one pod: a number, or a
// container port name.
func targetPort(tp intOrName, p *corev1.Pod) (uint32, bool) {
	if tp.name == "" {
		return uint32(tp.num), tp.num > 0 && tp.num <= 65535
	}
	for _, c := range p.Spec.Containers {
		for _, cp := range c.Ports {
			if cp.Name == tp.name && (cp.Protocol == "" || cp.Protocol == corev1.ProtocolTCP) {
				return uint32(cp.ContainerPort), cp.ContainerPort > 0 && cp.ContainerPort <= 65535
			}
		}
	}
	return 0, false
}

// assignment is the load assignment of one cluster: the pods matching the
// subset's labels (all for no subset), grouped by locality in the order
// first seen.
func (b *builder) assignment(ref ObjectRef, name string, sp servicePort, subsetLabels map[string]string, pods []podEndpoint) *endpointv3.ClusterLoadAssignment {
	la := &endpointv3.ClusterLoadAssignment{ClusterName: name}
	groups := map[string]*endpointv3.LocalityLbEndpoints{}
	for _, pe := range pods {
		if !selects(subsetLabels, pe.pod.Labels) {
			continue
		}
		port, ok := targetPort(sp.targetPort, pe.pod)
		if !ok {
			b.problem(ref, "spec.ports", fmt.Sprintf("port %d: pod %s has no TCP container port named %q; left out", sp.port, pe.pod.Name, sp.targetPort.name))
			continue
		}
		key := pe.locality.GetRegion() + "/" + pe.locality.GetZone() + "/" + pe.locality.GetSubZone()
		g := groups[key]
		if g == nil {
			g = &endpointv3.LocalityLbEndpoints{Locality: pe.locality}
			groups[key] = g
			la.Endpoints = append(la.Endpoints, g)
		}
		g.LbEndpoints = append(g.LbEndpoints, &endpointv3.LbEndpoint{
			HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{
				Address: &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
					Address:       pe.ip.String(),
					PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: port},
				}}},
			}},
			HealthStatus: corev3.HealthStatus_HEALTHY,
			Metadata:     b.endpointMetadata(pe),
		})
	}
	return la
}

// endpointMetadata carries the identity the waypoint requires of the pod
// (or, for an endpoint outside the mesh, tunnel "none" and no identity)
// and the pod's labels ("zmesh"), and what telemetry labels the pod with
// ("istio", for a pod whose workload is known): istiod's "workload" string,
// "<workload>;<namespace>;<canonical service>;<canonical revision>;<cluster>",
// and the app and version labels, which istiod's string lacks.
func (b *builder) endpointMetadata(pe podEndpoint) *corev3.Metadata {
	fields := map[string]*structpb.Value{"identity": structpb.NewStringValue(pe.identity)}
	if pe.plaintext {
		fields = map[string]*structpb.Value{"tunnel": structpb.NewStringValue(tunnelNone)}
	}
	if len(pe.pod.Labels) > 0 {
		labels := &structpb.Struct{Fields: map[string]*structpb.Value{}}
		for k, v := range pe.pod.Labels {
			labels.Fields[k] = structpb.NewStringValue(v)
		}
		fields["labels"] = structpb.NewStructValue(labels)
	}
	md := &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{"zmesh": {Fields: fields}}}
	if pe.workload == "" {
		return md
	}
	istio := map[string]*structpb.Value{"workload": structpb.NewStringValue(strings.Join([]string{
		pe.workload, pe.pod.Namespace, pe.canonicalService, pe.canonicalRevision, b.opts.Mesh.ClusterID}, ";"))}
	if v := firstLabel(pe.pod.Labels, "app", "app.kubernetes.io/name"); v != "" {
		istio["app"] = structpb.NewStringValue(v)
	}
	if v := firstLabel(pe.pod.Labels, "version", "app.kubernetes.io/version"); v != "" {
		istio["version"] = structpb.NewStringValue(v)
	}
	md.FilterMetadata["istio"] = &structpb.Struct{Fields: istio}
	return md
}

// firstLabel is the value of the first of keys labels has.
func firstLabel(labels map[string]string, keys ...string) string {
	for _, k := range keys {
		if v := labels[k]; v != "" {
			return v
		}
	}
	return ""
}
