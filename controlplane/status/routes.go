package status

import (
	"cmp"
	"fmt"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/zmesh/zmesh/controlplane/l7"
	"github.com/zmesh/zmesh/controlplane/model"
)

// ControllerName is the controller zmeshd writes route parent status as:
// Istio's, since zmeshd implements Istio's waypoint class.
const ControllerName gatewayv1.GatewayController = "istio.io/gateway-controller"

// WaypointAccepted is the condition on a VirtualService or DestinationRule
// that says whether a waypoint applies it (Istio's condition type for
// config enforced by a waypoint).
const WaypointAccepted = "WaypointAccepted"

// Reasons of WaypointAccepted besides Gateway API's.
const (
	ReasonAccepted         = "Accepted"
	ReasonUnsupportedValue = "UnsupportedValue"
	ReasonWaypointNotFound = "WaypointNotFound"
)

// RouteStatus is the status zmeshd gives one L7 object: a condition for
// Istio kinds, a status per parent it serves for Gateway API routes.
type RouteStatus struct {
	Object     l7.ObjectRef
	Generation int64
	// Condition is set for VirtualService and DestinationRule.
	Condition *Condition
	// Parents is set for HTTPRoute and GRPCRoute: one per parentRef that
	// is a waypoint or a Service (GAMMA), in parentRefs order. Parents
	// owned by other controllers are not zmeshd's to judge.
	Parents []gatewayv1.RouteParentStatus
}

// Condition is one status condition, without its times.
type Condition struct {
	Type    string `json:"type"`
	Status  bool   `json:"status"`
	Reason  string `json:"reason,omitempty"`
	Message string `json:"message,omitempty"`
}

// RouteStatuses decides the status of every VirtualService, DestinationRule,
// HTTPRoute and GRPCRoute (and RequestAuthentication, authnStatuses) of snap from the waypoints' build problems: an
// object a waypoint serves is Accepted unless a problem names it (then
// not, with the problems as message; unresolved backends of a route are
// ResolvedRefs=False instead, as Gateway API has it); an object bound to no
// waypoint says so. VirtualServices for other gateways only (spec.gateways
// without "mesh") are not the waypoint's and get nothing. It is pure.
func RouteStatuses(mesh model.Mesh, snap *model.Snapshot, problems []l7.Problem) []RouteStatus {
	w := &waypoints{mesh: mesh, snap: snap, problems: map[l7.ObjectRef][]l7.Problem{}}
	for _, p := range problems {
		switch p.Reason {
		case l7.ReasonAccepted, l7.ReasonConflicted, l7.ReasonNoWaypoint:
			// In force (a Conflicted route wins over the objects it
			// overrides, which are told so), or bound to nothing, which
			// the status finds from the bindings itself.
			continue
		}
		if !slices.Contains(w.problems[p.Object], p) {
			w.problems[p.Object] = append(w.problems[p.Object], p)
		}
	}
	var out []RouteStatus
	for _, vs := range snap.VirtualServices {
		if gws := vs.Spec.GetGateways(); len(gws) > 0 && !slices.Contains(gws, "mesh") {
			continue
		}
		ref := l7.ObjectRef{Kind: "VirtualService", Namespace: vs.Namespace, Name: vs.Name}
		out = append(out, w.istio(ref, vs.Generation, vs.Spec.GetHosts(), vs.Spec.GetExportTo()))
	}
	for _, dr := range snap.DestinationRules {
		ref := l7.ObjectRef{Kind: "DestinationRule", Namespace: dr.Namespace, Name: dr.Name}
		out = append(out, w.istio(ref, dr.Generation, []string{dr.Spec.GetHost()}, dr.Spec.GetExportTo()))
	}
	for _, r := range snap.HTTPRoutes {
		ref := l7.ObjectRef{Kind: "HTTPRoute", Namespace: r.Namespace, Name: r.Name}
		out = append(out, w.route(ref, r.Generation, r.Spec.ParentRefs))
	}
	for _, r := range snap.GRPCRoutes {
		ref := l7.ObjectRef{Kind: "GRPCRoute", Namespace: r.Namespace, Name: r.Name}
		out = append(out, w.route(ref, r.Generation, r.Spec.ParentRefs))
	}
	return append(out, authnStatuses(snap, problems)...)
}

type waypoints struct {
	mesh     model.Mesh
	snap     *model.Snapshot
	problems map[l7.ObjectRef][]l7.Problem
}

// classify tells which condition a problem fails and why: ResolvedRefs
// for a reference to a backend that cannot be resolved, Accepted
// otherwise.
func classify(p l7.Problem) (condType, reason string) {
	switch p.Reason {
	case l7.ReasonBackendNotFound:
		return string(gatewayv1.RouteConditionResolvedRefs), string(gatewayv1.RouteReasonBackendNotFound)
	case l7.ReasonNotAllowed:
		return string(gatewayv1.RouteConditionAccepted), string(gatewayv1.RouteReasonNotAllowedByListeners)
	case l7.ReasonOverridden, l7.ReasonNotExported:
		return string(gatewayv1.RouteConditionAccepted), string(p.Reason)
	}
	return string(gatewayv1.RouteConditionAccepted), string(gatewayv1.RouteReasonUnsupportedValue)
}

func messages(ps []l7.Problem) string {
	var b strings.Builder
	for i, p := range ps {
		if i > 0 {
			b.WriteString("; ")
		}
		b.WriteString(p.Field + ": " + p.Message)
	}
	return b.String()
}

// istio is the WaypointAccepted condition of a VirtualService or
// DestinationRule whose hosts are hosts, exported to exportTo.
func (w *waypoints) istio(ref l7.ObjectRef, gen int64, hosts, exportTo []string) RouteStatus {
	st := RouteStatus{Object: ref, Generation: gen}
	var bound []string
	for _, h := range hosts {
		for _, svc := range w.servicesOf(h, ref.Namespace) {
			gw, _ := w.waypointOf(svc)
			if gw == "" || slices.Contains(bound, gw) {
				continue
			}
			// A waypoint sees the object only if it is exported to the
			// waypoint's namespace.
			if gwNS, _, _ := strings.Cut(gw, "/"); !exported(exportTo, ref.Namespace, gwNS) {
				continue
			}
			bound = append(bound, gw)
		}
	}
	switch ps := w.problems[ref]; {
	case len(ps) > 0:
		_, reason := classify(ps[0])
		st.Condition = &Condition{Type: WaypointAccepted, Status: false, Reason: reason, Message: messages(ps)}
	case len(bound) == 0:
		st.Condition = &Condition{Type: WaypointAccepted, Status: false, Reason: ReasonWaypointNotFound,
			Message: fmt.Sprintf("no host of %v is a Service bound to a waypoint (istio.io/use-waypoint) this object is exported to: not applied", hosts)}
	default:
		slices.Sort(bound)
		st.Condition = &Condition{Type: WaypointAccepted, Status: true, Reason: ReasonAccepted,
			Message: "applied by waypoint " + strings.Join(bound, ", ")}
	}
	return st
}

// exported says whether an object of namespace ns with exportTo is
// visible in namespace to: everywhere by default and with "*", in its own
// namespace with ".".
func exported(exportTo []string, ns, to string) bool {
	if len(exportTo) == 0 {
		return true
	}
	for _, e := range exportTo {
		if e == "*" || e == to || (e == "." && ns == to) {
			return true
		}
	}
	return false
}

// route is the parent status of an HTTPRoute or GRPCRoute.
func (w *waypoints) route(ref l7.ObjectRef, gen int64, parents []gatewayv1.ParentReference) RouteStatus {
	st := RouteStatus{Object: ref, Generation: gen}
	var accepted, resolved []l7.Problem
	for _, p := range w.problems[ref] {
		if t, _ := classify(p); t == string(gatewayv1.RouteConditionResolvedRefs) {
			resolved = append(resolved, p)
		} else {
			accepted = append(accepted, p)
		}
	}
	for _, pr := range parents {
		ns := ref.Namespace
		if pr.Namespace != nil && *pr.Namespace != "" {
			ns = string(*pr.Namespace)
		}
		group, kind := "gateway.networking.k8s.io", "Gateway"
		if pr.Group != nil {
			group = string(*pr.Group)
		}
		if pr.Kind != nil {
			kind = string(*pr.Kind)
		}
		var unbound string // why the parent serves nothing; "" if it does
		switch {
		case (group == "" || group == "core") && kind == "Service":
			svc := w.service(ns, string(pr.Name))
			if svc == nil {
				unbound = fmt.Sprintf("Service %s/%s not found", ns, pr.Name)
			} else if gw, why := w.waypointOf(svc); gw == "" {
				unbound = why
			}
		case group == gatewayv1.GroupName && kind == "Gateway":
			gw := w.gateway(ns, string(pr.Name))
			if gw == nil || string(gw.Spec.GatewayClassName) != model.WaypointClass {
				continue // another controller's Gateway, or none: not ours to judge
			}
		default:
			continue
		}
		ps := gatewayv1.RouteParentStatus{ParentRef: pr, ControllerName: ControllerName}
		cond := func(t gatewayv1.RouteConditionType, ok bool, reason gatewayv1.RouteConditionReason, msg string) {
			ps.Conditions = append(ps.Conditions, metav1Condition(string(t), ok, string(reason), msg, gen))
		}
		switch {
		case unbound != "":
			cond(gatewayv1.RouteConditionAccepted, false, gatewayv1.RouteReasonNoMatchingParent, unbound)
		case len(accepted) > 0:
			_, reason := classify(accepted[0])
			cond(gatewayv1.RouteConditionAccepted, false, gatewayv1.RouteConditionReason(reason), messages(accepted))
		default:
			cond(gatewayv1.RouteConditionAccepted, true, gatewayv1.RouteReasonAccepted, "Route was valid")
		}
		if len(resolved) > 0 {
			cond(gatewayv1.RouteConditionResolvedRefs, false, gatewayv1.RouteReasonBackendNotFound, messages(resolved))
		} else {
			cond(gatewayv1.RouteConditionResolvedRefs, true, gatewayv1.RouteReasonResolvedRefs, "All references resolved")
		}
		st.Parents = append(st.Parents, ps)
	}
	return st
}

// servicesOf resolves a VirtualService or DestinationRule host, written in
// namespace ns, to Services: a short name is in ns, "name.ns" and the
// FQDN name the Service, "*.ns.svc.<suffix>" every Service of ns.
func (w *waypoints) servicesOf(host, ns string) []*corev1.Service {
	suffix := ".svc." + w.mesh.DomainSuffix
	if rest, ok := strings.CutPrefix(host, "*."); ok {
		n, ok := strings.CutSuffix(rest, suffix)
		if !ok || strings.Contains(n, ".") {
			return nil
		}
		var out []*corev1.Service
		for _, s := range w.snap.Services {
			if s.Namespace == n {
				out = append(out, s)
			}
		}
		return out
	}
	host = strings.TrimSuffix(host, suffix)
	name, svcNS, qualified := strings.Cut(host, ".")
	if !qualified {
		svcNS = ns
	}
	if strings.Contains(svcNS, ".") {
		return nil
	}
	if s := w.service(svcNS, name); s != nil {
		return []*corev1.Service{s}
	}
	return nil
}

// waypointOf returns "ns/name" of the waypoint svc is bound to, or "" and
// why not.
func (w *waypoints) waypointOf(svc *corev1.Service) (string, string) {
	ns, name, labelled := model.UseWaypoint(svc.Labels, svc.Namespace)
	if !labelled {
		if nsObj := w.snap.Namespace(svc.Namespace); nsObj != nil {
			ns, name, _ = model.UseWaypoint(nsObj.Labels, svc.Namespace)
		}
	}
	if name == "" {
		return "", fmt.Sprintf("Service %s/%s is bound to no waypoint (no %s label on it or its namespace)", svc.Namespace, svc.Name, model.LabelUseWaypoint)
	}
	gw := w.gateway(ns, name)
	if gw == nil || string(gw.Spec.GatewayClassName) != model.WaypointClass {
		return "", fmt.Sprintf("Service %s/%s names waypoint %s/%s, which is no Gateway of class %s", svc.Namespace, svc.Name, ns, name, model.WaypointClass)
	}
	if _, _, services := model.WaypointFor(gw); !services {
		return "", fmt.Sprintf("waypoint %s/%s does not take Service traffic (%s)", ns, name, model.LabelWaypointFor)
	}
	return ns + "/" + name, ""
}

func (w *waypoints) service(ns, name string) *corev1.Service {
	return find(w.snap.Services, ns, name)
}

func (w *waypoints) gateway(ns, name string) *gatewayv1.Gateway {
	return find(w.snap.Gateways, ns, name)
}

func find[T model.Object](objs []T, ns, name string) T {
	i, ok := slices.BinarySearchFunc(objs, [2]string{ns, name}, func(o T, k [2]string) int {
		return cmp.Or(cmp.Compare(o.GetNamespace(), k[0]), cmp.Compare(o.GetName(), k[1]))
	})
	if !ok {
		var zero T
		return zero
	}
	return objs[i]
}

func metav1Condition(t string, ok bool, reason, msg string, gen int64) metav1.Condition {
	st := metav1.ConditionFalse
	if ok {
		st = metav1.ConditionTrue
	}
	return metav1.Condition{Type: t, Status: st, Reason: reason, Message: msg, ObservedGeneration: gen}
}
