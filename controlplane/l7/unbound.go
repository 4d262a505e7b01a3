package l7

import (
	"cmp"
	"slices"

	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/zmesh/zmesh/controlplane/model"
)

// Unbound reports the mesh routing objects that reach no waypoint, which no
// Build reports: a VirtualService for mesh traffic none of whose hosts is a
// Service bound to a waypoint, and an HTTPRoute or GRPCRoute with a Service
// parent none of whose parents is bound (or is a waypoint Gateway). Their
// rules have no effect: traffic to those Services goes through ztunnel
// only, which does not route on HTTP. Routes attached only to other
// Gateways are not mesh routes and are not reported.
func Unbound(opts Options, snap *model.Snapshot) []Problem {
	bound := map[string]bool{}
	waypoints := map[ObjectRef]bool{}
	for _, gw := range snap.Gateways {
		if gw.Spec.GatewayClassName != model.WaypointClass {
			continue
		}
		if _, _, services := model.WaypointFor(gw); !services {
			continue
		}
		waypoints[ObjectRef{"Gateway", gw.Namespace, gw.Name}] = true
		b := &builder{opts: opts, snap: snap, gw: gw}
		for _, svc := range snap.Services {
			if b.boundTo(svc, gw) {
				bound[svc.Name+"."+svc.Namespace+".svc."+opts.Mesh.DomainSuffix] = true
			}
		}
		boundServiceEntryHosts(snap, gw, bound)
	}
	var out []Problem
	const msg = "bound to no waypoint: none of its Services is bound to a waypoint (istio.io/use-waypoint), so its rules have no effect"
	for _, vs := range snap.VirtualServices {
		if !forMesh(vs.Spec.Gateways) {
			continue
		}
		reached := false
		for host := range bound {
			reached = reached || vsNames(vs, host, opts.Mesh.DomainSuffix)
		}
		if !reached {
			out = append(out, Problem{Object: ObjectRef{"VirtualService", vs.Namespace, vs.Name}, Field: "spec.hosts", Message: msg, Reason: ReasonNoWaypoint})
		}
	}
	check := func(ref ObjectRef, parents []gatewayv1.ParentReference) {
		mesh, reached := false, false
		for _, pr := range parents {
			ns := ref.Namespace
			if pr.Namespace != nil {
				ns = string(*pr.Namespace)
			}
			group, kind := "gateway.networking.k8s.io", "Gateway"
			if pr.Group != nil {
				group = string(*pr.Group)
			}
			if pr.Kind != nil {
				kind = string(*pr.Kind)
			}
			switch {
			case (group == "" || group == "core") && kind == "Service":
				mesh = true
				reached = reached || bound[string(pr.Name)+"."+ns+".svc."+opts.Mesh.DomainSuffix]
			case group == "networking.istio.io" && kind == "ServiceEntry":
				mesh = true
				reached = reached || serviceEntryBound(snap, ns, string(pr.Name), waypoints)
			case group == "gateway.networking.k8s.io" && kind == "Gateway" && waypoints[ObjectRef{"Gateway", ns, string(pr.Name)}]:
				mesh, reached = true, true
			}
		}
		if mesh && !reached {
			out = append(out, Problem{Object: ref, Field: "spec.parentRefs", Message: msg, Reason: ReasonNoWaypoint})
		}
	}
	for _, r := range snap.HTTPRoutes {
		check(ObjectRef{"HTTPRoute", r.Namespace, r.Name}, r.Spec.ParentRefs)
	}
	for _, r := range snap.GRPCRoutes {
		check(ObjectRef{"GRPCRoute", r.Namespace, r.Name}, r.Spec.ParentRefs)
	}
	slices.SortFunc(out, func(x, y Problem) int {
		return cmp.Or(cmp.Compare(x.Object.Kind, y.Object.Kind), cmp.Compare(x.Object.Namespace, y.Object.Namespace), cmp.Compare(x.Object.Name, y.Object.Name))
	})
	return out
}
