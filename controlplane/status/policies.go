package status

import (
	"maps"
	"slices"
	"strings"

	"github.com/zmesh/zmesh/controlplane/l7"
	"github.com/zmesh/zmesh/controlplane/model"
	"github.com/zmesh/zmesh/controlplane/translate"
)

// Reasons of WaypointAccepted on RequestAuthentications.
const ReasonTargetNotFound = "TargetNotFound"

// authnStatuses is the WaypointAccepted condition of every
// RequestAuthentication with targetRefs (those without are not a
// waypoint's): False with the problems a waypoint found (field: message);
// else True, naming the waypoints it is in force on; else False, attached
// to no waypoint. It is pure.
func authnStatuses(snap *model.Snapshot, problems []l7.Problem) []RouteStatus {
	var out []RouteStatus
	for _, ra := range snap.RequestAuthentications {
		if ra == nil || (len(ra.Spec.TargetRefs) == 0 && ra.Spec.TargetRef == nil) {
			continue
		}
		ref := l7.ObjectRef{Kind: "RequestAuthentication", Namespace: ra.Namespace, Name: ra.Name}
		var bad []l7.Problem
		var on []string
		for _, p := range problems {
			switch {
			case p.Object != ref:
			case p.Reason == l7.ReasonAccepted:
				if w, ok := strings.CutPrefix(p.Message, "in force on waypoint "); ok && !slices.Contains(on, w) {
					on = append(on, w)
				}
			case p.Reason != l7.ReasonNoWaypoint && !slices.Contains(bad, p):
				bad = append(bad, p)
			}
		}
		st := RouteStatus{Object: ref, Generation: ra.Generation}
		switch {
		case len(bad) > 0:
			_, reason := classify(bad[0])
			st.Condition = &Condition{Type: WaypointAccepted, Status: false, Reason: reason, Message: messages(bad)}
		case len(on) > 0:
			slices.Sort(on)
			st.Condition = &Condition{Type: WaypointAccepted, Status: true, Reason: ReasonAccepted, Message: "applied by waypoint " + strings.Join(on, ", ")}
		default:
			st.Condition = &Condition{Type: WaypointAccepted, Status: false, Reason: ReasonTargetNotFound,
				Message: "in force on no waypoint: no targetRef names a waypoint Gateway, the waypoint GatewayClass, or a Service bound to a waypoint (or the waypoint serves no Service)"}
		}
		out = append(out, st)
	}
	return out
}

// withWaypointProblems folds the problems the waypoints found in
// AuthorizationPolicies into the WaypointAccepted conditions translation
// gave them, so that one writer owns the policy's conditions: a policy a
// waypoint cannot honour in full is WaypointAccepted=False, with each
// field and what was done instead.
func withWaypointProblems(conds []translate.Condition, problems map[l7.ObjectRef][]l7.Problem) []translate.Condition {
	if len(problems) == 0 {
		return conds
	}
	out := slices.Clone(conds)
	for i := range out {
		c := &out[i]
		if c.Object.Kind != "AuthorizationPolicy" || c.Type != translate.WaypointAccepted {
			continue
		}
		ps := problems[l7.ObjectRef{Kind: c.Object.Kind, Namespace: c.Object.Namespace, Name: c.Object.Name}]
		for _, p := range ps {
			msg := p.Field + ": " + p.Message
			if strings.Contains(c.Message, p.Message) {
				continue // translation said so already
			}
			if c.Status {
				c.Status, c.Reason, c.Message = false, ReasonUnsupportedValue, msg
				continue
			}
			c.Message += "; " + msg
		}
	}
	return out
}

// policyProblems are the problems of AuthorizationPolicies, by policy,
// that make its WaypointAccepted condition False.
func policyProblems(problems []l7.Problem) map[l7.ObjectRef][]l7.Problem {
	out := map[l7.ObjectRef][]l7.Problem{}
	for _, p := range problems {
		if p.Object.Kind != "AuthorizationPolicy" || p.Reason == l7.ReasonAccepted || p.Reason == l7.ReasonNoWaypoint {
			continue
		}
		if !slices.Contains(out[p.Object], p) {
			out[p.Object] = append(out[p.Object], p)
		}
	}
	return out
}

// policyWaypoints are the waypoints each AuthorizationPolicy is in force
// on ("namespace/name"), sorted.
func policyWaypoints(problems []l7.Problem) map[l7.ObjectRef][]string {
	out := map[l7.ObjectRef][]string{}
	for _, p := range problems {
		if p.Object.Kind != "AuthorizationPolicy" || p.Reason != l7.ReasonAccepted {
			continue
		}
		if w, ok := strings.CutPrefix(p.Message, "in force on waypoint "); ok && !slices.Contains(out[p.Object], w) {
			out[p.Object] = append(out[p.Object], w)
			slices.Sort(out[p.Object])
		}
	}
	return out
}

// withWorkloadPolicies gives a WaypointAccepted condition to the
// AuthorizationPolicies without targetRefs that a waypoint enforces
// because they apply to it as a workload (a selector matching its pods,
// or namespace-wide), so that what it cannot enforce there has a place
// on the policy; translation gives those only ZtunnelAccepted.
func withWorkloadPolicies(conds []translate.Condition, on map[l7.ObjectRef][]string) []translate.Condition {
	if len(on) == 0 {
		return conds
	}
	has := map[l7.ObjectRef]bool{}
	for _, c := range conds {
		if c.Object.Kind == "AuthorizationPolicy" && c.Type == translate.WaypointAccepted {
			has[l7.ObjectRef{Kind: c.Object.Kind, Namespace: c.Object.Namespace, Name: c.Object.Name}] = true
		}
	}
	out := conds
	for _, ref := range slices.SortedFunc(maps.Keys(on), func(x, y l7.ObjectRef) int { return strings.Compare(x.String(), y.String()) }) {
		if has[ref] {
			continue
		}
		if len(out) == len(conds) {
			out = slices.Clone(conds)
		}
		out = append(out, translate.Condition{
			Object: translate.ObjectRef{Group: "security.istio.io", Kind: ref.Kind, Namespace: ref.Namespace, Name: ref.Name},
			Type:   translate.WaypointAccepted, Status: true, Reason: ReasonAccepted,
			Message: "enforced on the tunnels (L4) of waypoint " + strings.Join(on[ref], ", ") + ", to which it applies as a workload",
		})
	}
	return out
}
