package l7

import (
	"cmp"
	"fmt"
	"slices"
	"strings"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	networkingv1 "istio.io/client-go/pkg/apis/networking/v1"
	corev1 "k8s.io/api/core/v1"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/zmesh/zmesh/controlplane/model"
)

// Build returns the resources of the waypoint Gateway gw: the listener,
// with a filter chain per port of every Service bound to it; a route
// configuration per HTTP or sniffed port, from the VirtualServices,
// HTTPRoutes and GRPCRoutes for the Service; one cluster per Service port
// (and one more per DestinationRule subset) of every bound Service and of
// every Service a route sends to, each with its load assignment.
func Build(opts Options, snap *model.Snapshot, gw *gatewayv1.Gateway) Resources {
	b := &builder{opts: opts, snap: snap, gw: gw, services: map[string]*serviceInfo{}, accepted: map[ObjectRef]bool{}, entries: map[ObjectRef][]*serviceInfo{}}
	gwRef := ObjectRef{"Gateway", gw.Namespace, gw.Name}
	if string(gw.Spec.GatewayClassName) != model.WaypointClass {
		b.problem(gwRef, "spec.gatewayClassName", fmt.Sprintf("%q is not %s; no waypoint resources", gw.Spec.GatewayClassName, model.WaypointClass))
		return b.finish()
	}
	_, workloads, services := model.WaypointFor(gw)
	if services {
		for _, svc := range snap.Services {
			if !b.boundTo(svc, gw) {
				continue
			}
			if info := b.service(svc); info != nil {
				b.bound = append(b.bound, info)
			}
		}
		b.serviceEntries()
	}
	b.routes()
	if workloads {
		b.workloads()
	}
	b.authorization()
	b.requestAuthentications()
	b.listener()
	return b.finish()
}

type builder struct {
	opts Options
	snap *model.Snapshot
	gw   *gatewayv1.Gateway
	out  Resources
	// services are the Services whose clusters are built, by host: the
	// bound ones and those routes send to.
	services map[string]*serviceInfo
	// bound are the Services bound to the waypoint, in snapshot order.
	bound []*serviceInfo
	// accepted are the routing objects and AuthorizationPolicies in force
	// on this waypoint.
	accepted map[ObjectRef]bool
	// authz are the AuthorizationPolicies attached to the waypoint.
	authz []*authzPolicy
	// tunnelFilters head every filter chain: the network RBAC filters of
	// the policies on the waypoint as a workload.
	tunnelFilters []*listenerv3.Filter
	// entries are the ServiceEntries whose hosts are built, each host's
	// info in spec order.
	entries map[ObjectRef][]*serviceInfo
	// pods are the workloads bound to the waypoint (istio.io/waypoint-for
	// workload or all), whose ports get chains of their own.
	pods []*workloadInfo
	// authn are the RequestAuthentications attached to the waypoint.
	authn []*requestAuthn
}

// serviceInfo is a Service whose clusters are built, or one host of a
// ServiceEntry (se set; svc is then the entry read as a Service, see
// seService).
type serviceInfo struct {
	svc   *corev1.Service
	se    *networkingv1.ServiceEntry
	ref   ObjectRef
	host  string
	ports []servicePort
	dr    *networkingv1.DestinationRule
}

func (b *builder) problem(obj ObjectRef, field, msg string) {
	b.out.Problems = append(b.out.Problems, Problem{Object: obj, Field: field, Message: msg, Reason: ReasonUnsupportedValue})
}

func (b *builder) report(obj ObjectRef, reason Reason, field, msg string) {
	b.out.Problems = append(b.out.Problems, Problem{Object: obj, Field: field, Message: msg, Reason: reason})
}

func (b *builder) finish() Resources {
	slices.SortFunc(b.out.Clusters, func(x, y *clusterv3.Cluster) int { return cmp.Compare(x.Name, y.Name) })
	slices.SortFunc(b.out.Endpoints, func(x, y *endpointv3.ClusterLoadAssignment) int { return cmp.Compare(x.ClusterName, y.ClusterName) })
	slices.SortFunc(b.out.Routes, func(x, y *routev3.RouteConfiguration) int { return cmp.Compare(x.Name, y.Name) })
	for ref := range b.accepted {
		b.report(ref, ReasonAccepted, "", fmt.Sprintf("in force on waypoint %s/%s", b.gw.Namespace, b.gw.Name))
	}
	slices.SortFunc(b.out.Problems, func(x, y Problem) int {
		return cmp.Or(cmp.Compare(x.Object.Kind, y.Object.Kind), cmp.Compare(x.Object.Namespace, y.Object.Namespace),
			cmp.Compare(x.Object.Name, y.Object.Name), cmp.Compare(x.Field, y.Field), cmp.Compare(x.Reason, y.Reason),
			cmp.Compare(x.Message, y.Message))
	})
	b.out.Problems = slices.Compact(b.out.Problems)
	return b.out
}

// boundTo reports whether svc is bound to gw: by its own
// istio.io/use-waypoint label, else by its namespace's. The waypoint's own
// Service is never bound to it.
func (b *builder) boundTo(svc *corev1.Service, gw *gatewayv1.Gateway) bool {
	if svc.Namespace == gw.Namespace && (svc.Name == gw.Name || svc.Labels[model.LabelGatewayName] == gw.Name) {
		return false
	}
	ns, name, labelled := model.UseWaypoint(svc.Labels, svc.Namespace)
	if !labelled {
		nsObj := b.snap.Namespace(svc.Namespace)
		if nsObj == nil {
			return false
		}
		ns, name, _ = model.UseWaypoint(nsObj.Labels, svc.Namespace)
	}
	return name != "" && ns == gw.Namespace && name == gw.Name
}

// service builds the clusters and endpoints of one Service, once; nil for
// a Service the waypoint cannot serve.
func (b *builder) service(svc *corev1.Service) *serviceInfo {
	host := svc.Name + "." + svc.Namespace + ".svc." + b.opts.Mesh.DomainSuffix
	if info, ok := b.services[host]; ok {
		return info
	}
	b.services[host] = nil
	ref := ObjectRef{"Service", svc.Namespace, svc.Name}
	if svc.Spec.Type == corev1.ServiceTypeExternalName {
		b.problem(ref, "spec.type", "ExternalName Services are not served by the waypoint")
		return nil
	}
	if len(svc.Spec.Selector) == 0 {
		b.problem(ref, "spec.selector", "no selector: endpoints of Services without a selector are not served yet")
	}
	info := &serviceInfo{svc: svc, ref: ref, host: host, dr: b.destinationRule(svc, host)}
	b.services[host] = info
	pods := b.endpointPods(svc, ref)
	for i, sp := range svc.Spec.Ports {
		p, ok := portOf(sp)
		if !ok {
			b.problem(ref, fmt.Sprintf("spec.ports[%d].protocol", i), fmt.Sprintf("%s is not served by the waypoint", sp.Protocol))
			continue
		}
		info.ports = append(info.ports, p)
		b.cluster(clusterSpec{svc: svc, host: host, port: p, dr: info.dr}, pods)
		if p.sniffed {
			// Bytes that are not HTTP go to the port's TCP cluster.
			tcp := p
			tcp.protocol, tcp.http2 = "tcp", false
			b.cluster(clusterSpec{svc: svc, host: host, port: tcp, dr: info.dr}, pods)
		}
		if info.dr == nil {
			continue
		}
		for j, s := range info.dr.Spec.Subsets {
			if s == nil || s.Name == "" {
				b.problem(drRef(info.dr), fmt.Sprintf("spec.subsets[%d].name", j), "required")
				continue
			}
			b.cluster(clusterSpec{svc: svc, host: host, port: p, dr: info.dr, subset: s, subsetIndex: j}, pods)
		}
	}
	return info
}

// portOf reads a Service port: only TCP ports are served. The protocol is
// the appProtocol, else the name ("http" or a prefix such as "http-"),
// Istio's order; a port that says neither is sniffed.
func portOf(sp corev1.ServicePort) (servicePort, bool) {
	if sp.Protocol != "" && sp.Protocol != corev1.ProtocolTCP {
		return servicePort{}, false
	}
	p := servicePort{name: sp.Name, port: sp.Port, protocol: "http", targetPort: intOrName{num: sp.Port}}
	switch {
	case sp.TargetPort.StrVal != "":
		p.targetPort = intOrName{name: sp.TargetPort.StrVal}
	case sp.TargetPort.IntVal != 0:
		p.targetPort = intOrName{num: sp.TargetPort.IntVal}
	}
	proto := strings.ToLower(sp.Name)
	if i := strings.IndexByte(proto, '-'); i >= 0 {
		proto = proto[:i]
	}
	if sp.AppProtocol != nil {
		proto = strings.ToLower(*sp.AppProtocol)
	}
	switch proto {
	case "tcp", "tls", "mongo", "mysql", "redis", "https":
		p.protocol = "tcp"
	case "http2", "grpc", "grpc-web", "h2c", "kubernetes.io/h2c":
		p.http2 = true
	case "http", "http1", "http/1.1":
	default:
		p.sniffed = true
	}
	return p, true
}

// clusterName is istiod's name for a waypoint's service cluster:
// inbound-vip|<port>|<protocol>[/<subset>]|<host>.
func clusterName(port int32, protocol, subset, host string) string {
	if subset != "" {
		protocol += "/" + subset
	}
	return fmt.Sprintf("inbound-vip|%d|%s|%s", port, protocol, host)
}
