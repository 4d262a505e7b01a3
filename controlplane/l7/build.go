package l7

import (
	"cmp"
	"fmt"
	"slices"
	"strings"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	corev1 "k8s.io/api/core/v1"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/zmesh/zmesh/controlplane/model"
)

// Build returns the clusters and endpoints of the waypoint Gateway gw: one
// cluster per port of every Service bound to it, and one more per
// DestinationRule subset, each with its load assignment.
func Build(opts Options, snap *model.Snapshot, gw *gatewayv1.Gateway) Resources {
	b := &builder{opts: opts, snap: snap}
	gwRef := ObjectRef{"Gateway", gw.Namespace, gw.Name}
	if string(gw.Spec.GatewayClassName) != model.WaypointClass {
		b.problem(gwRef, "spec.gatewayClassName", fmt.Sprintf("%q is not %s; no waypoint resources", gw.Spec.GatewayClassName, model.WaypointClass))
		return b.finish()
	}
	if _, _, services := model.WaypointFor(gw); !services {
		return b.finish()
	}
	for _, svc := range snap.Services {
		if !b.boundTo(svc, gw) {
			continue
		}
		b.service(svc)
	}
	return b.finish()
}

type builder struct {
	opts Options
	snap *model.Snapshot
	out  Resources
}

func (b *builder) problem(obj ObjectRef, field, msg string) {
	b.out.Problems = append(b.out.Problems, Problem{obj, field, msg})
}

func (b *builder) finish() Resources {
	slices.SortFunc(b.out.Clusters, func(x, y *clusterv3.Cluster) int { return cmp.Compare(x.Name, y.Name) })
	slices.SortFunc(b.out.Endpoints, func(x, y *endpointv3.ClusterLoadAssignment) int { return cmp.Compare(x.ClusterName, y.ClusterName) })
	slices.SortStableFunc(b.out.Problems, func(x, y Problem) int {
		return cmp.Or(cmp.Compare(x.Object.Kind, y.Object.Kind), cmp.Compare(x.Object.Namespace, y.Object.Namespace),
			cmp.Compare(x.Object.Name, y.Object.Name), cmp.Compare(x.Field, y.Field))
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

// service builds the clusters and endpoints of one bound Service.
func (b *builder) service(svc *corev1.Service) {
	ref := ObjectRef{"Service", svc.Namespace, svc.Name}
	if svc.Spec.Type == corev1.ServiceTypeExternalName {
		b.problem(ref, "spec.type", "ExternalName Services are not served by the waypoint")
		return
	}
	if len(svc.Spec.Selector) == 0 {
		b.problem(ref, "spec.selector", "no selector: endpoints of Services without a selector are not served yet")
	}
	host := svc.Name + "." + svc.Namespace + ".svc." + b.opts.Mesh.DomainSuffix
	dr := b.destinationRule(svc, host)
	pods := b.endpointPods(svc, ref)
	for i, sp := range svc.Spec.Ports {
		p, ok := portOf(sp)
		if !ok {
			b.problem(ref, fmt.Sprintf("spec.ports[%d].protocol", i), fmt.Sprintf("%s is not served by the waypoint", sp.Protocol))
			continue
		}
		b.cluster(clusterSpec{svc: svc, host: host, port: p, dr: dr}, pods)
		if dr == nil {
			continue
		}
		for j, s := range dr.Spec.Subsets {
			if s == nil || s.Name == "" {
				b.problem(drRef(dr), fmt.Sprintf("spec.subsets[%d].name", j), "required")
				continue
			}
			b.cluster(clusterSpec{svc: svc, host: host, port: p, dr: dr, subset: s, subsetIndex: j}, pods)
		}
	}
}

// portOf reads a Service port: only TCP ports are served; HTTP unless the
// appProtocol or the name's prefix says otherwise (Istio's order).
func portOf(sp corev1.ServicePort) (servicePort, bool) {
	if sp.Protocol != "" && sp.Protocol != corev1.ProtocolTCP {
		return servicePort{}, false
	}
	p := servicePort{port: sp.Port, protocol: "http", targetPort: intOrName{num: sp.Port}}
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
