package translate

import (
	"fmt"
	"slices"
	"strconv"
	"strings"

	securityapi "istio.io/api/security/v1beta1"
	securityv1 "istio.io/client-go/pkg/apis/security/v1"
	corev1 "k8s.io/api/core/v1"

	"github.com/zmesh/zmesh/api/workload/security"
	"github.com/zmesh/zmesh/controlplane/model"
)

// annotationDryRun makes an AuthorizationPolicy report instead of enforce.
const annotationDryRun = "istio.io/dry-run"

type authzPolicyState struct {
	// selectors holds each namespace's WORKLOAD_SELECTOR policies; the root
	// namespace's apply to pods of every namespace.
	selectors map[string]*selectorIndex[*apEntry]
	entries   []*apEntry
	// targeted are the policies with targetRefs, for waypoints.
	targeted []*securityv1.AuthorizationPolicy
}

type apEntry struct {
	ref ObjectRef
	key string
	// index in entries: podPhase counts the pods each entry selects by it.
	index int
	// findings are what ztunnel cannot enforce as written. They are
	// reported once the pods are known: a policy that selects only
	// waypoints' pods, which ztunnel does not capture, is not ztunnel's to
	// enforce (the waypoint enforces it on its tunnels).
	findings []finding
	// waypoints are the waypoints ("namespace/name") whose Deployment's
	// pod labels the selector matches, whether or not a pod runs yet.
	waypoints []string
}

// authorizationPolicies translates every AuthorizationPolicy ztunnel
// enforces and indexes the selector ones for policiesFor.
func (t *translator) authorizationPolicies(out *Output) {
	t.ap.selectors = map[string]*selectorIndex[*apEntry]{}
	for _, ap := range t.snap.AuthorizationPolicies {
		if ap == nil || !t.validRef(authzPolicyRef(ap)) {
			continue
		}
		if len(ap.Spec.TargetRefs) > 0 || ap.Spec.TargetRef != nil {
			t.ap.targeted = append(t.ap.targeted, ap)
			continue
		}
		a, findings, ok := t.authorizationPolicy(ap)
		if !ok {
			continue
		}
		key := joinKey(a.Namespace, a.Name)
		out.Authorizations[key] = a
		ref := authzPolicyRef(ap)
		t.conds.ok(ref, ZtunnelAccepted, ReasonAccepted, "enforced by ztunnel")
		if a.Scope != security.Scope_WORKLOAD_SELECTOR {
			for _, f := range findings {
				t.conds.add(ref, ZtunnelAccepted, f)
			}
			continue
		}
		e := &apEntry{ref: ref, key: key, index: len(t.ap.entries), findings: findings, waypoints: t.waypointsSelected(ap)}
		t.ap.entries = append(t.ap.entries, e)
		idx := t.ap.selectors[ap.Namespace]
		if idx == nil {
			idx = &selectorIndex[*apEntry]{}
			t.ap.selectors[ap.Namespace] = idx
		}
		idx.add(ap.Spec.Selector.MatchLabels, e)
	}
}

// policiesFor lists the WORKLOAD_SELECTOR policies of a pod, sorted, and
// records in r the policies that selected it.
func (t *translator) policiesFor(p *corev1.Pod, r *podResult) []string {
	var names []string
	collect := func(e *apEntry) {
		r.policies = append(r.policies, e)
		names = append(names, e.key)
	}
	t.ap.selectors[p.Namespace].each(p.Labels, collect)
	if p.Namespace != t.mesh.RootNamespace {
		t.ap.selectors[t.mesh.RootNamespace].each(p.Labels, collect)
	}
	if pa := t.peerAuthPolicy(p, r); pa != "" {
		names = append(names, pa)
	}
	if len(names) == 0 {
		return nil
	}
	return sortedUnique(names)
}

// waypointsSelected are the waypoints whose pods a selector policy
// selects by the labels their Deployment gives them: in the policy's
// namespace, or in every namespace from the root namespace.
func (t *translator) waypointsSelected(ap *securityv1.AuthorizationPolicy) []string {
	var out []string
	for k, gw := range t.waypoints {
		if ap.Namespace != gw.Namespace && ap.Namespace != t.mesh.RootNamespace {
			continue
		}
		if _, podLabels := model.WaypointLabels(gw); selects(ap.Spec.Selector.MatchLabels, podLabels) {
			out = append(out, joinKey(k.namespace, k.name))
		}
	}
	return out
}

// finishAuthorizationPolicies reports on selector policies once the pods
// they select are known. One that selects no pod ztunnel captures but
// selects waypoints' pods is the waypoints' to enforce, on their tunnels
// (controlplane/l7 does, trustDomains included): ztunnel's findings would
// tell of limits that apply to no pod, so its condition says who enforces
// it instead. Otherwise ztunnel's findings stand, with a note when the
// selector matches no running pod, or none in the mesh.
func (ph *podPhase) finishAuthorizationPolicies() {
	for _, e := range ph.t.ap.entries {
		captured, selected := ph.apCaptured[e.index], ph.apSelected[e.index]
		waypoints := sortedUnique(append(slices.Clone(e.waypoints), ph.apWaypoints[e.index]...))
		if captured == 0 && len(waypoints) > 0 {
			which := "waypoint " + waypoints[0] + ", which enforces the policy on its tunnels"
			if len(waypoints) > 1 {
				which = "waypoints " + strings.Join(waypoints, ", ") + ", which enforce the policy on their tunnels"
			}
			ph.conds.ok(e.ref, ZtunnelAccepted, ReasonAccepted, fmt.Sprintf(
				"not enforced by ztunnel: spec.selector matches no pod ztunnel captures, only the pods of %s (condition WaypointAccepted)", which))
			continue
		}
		for _, f := range e.findings {
			ph.conds.add(e.ref, ZtunnelAccepted, f)
		}
		switch {
		case selected == 0:
			ph.conds.note(e.ref, ZtunnelAccepted, ReasonNoMatchingWorkload, "spec.selector: matches no running pod")
		case captured == 0:
			ph.conds.ok(e.ref, ZtunnelAccepted, ReasonAccepted, "sent to ztunnel")
			ph.conds.note(e.ref, ZtunnelAccepted, ReasonNoMatchingWorkload,
				"spec.selector: matches no pod in the mesh (ztunnel captures none of the running pods it selects), so it is enforced on none of them")
		}
	}
}

// authorizationPolicy translates one policy without targetRefs for
// ztunnel; findings are what ztunnel cannot enforce as written (the
// caller reports them). ok is false when ztunnel gets nothing (AUDIT,
// CUSTOM), which is reported here.
func (t *translator) authorizationPolicy(ap *securityv1.AuthorizationPolicy) (_ *security.Authorization, findings []finding, ok bool) {
	ref := authzPolicyRef(ap)
	spec := &ap.Spec
	a := &security.Authorization{Name: ap.Name, Namespace: ap.Namespace}
	switch spec.Action {
	case securityapi.AuthorizationPolicy_ALLOW:
		a.Action = security.Action_ALLOW
	case securityapi.AuthorizationPolicy_DENY:
		a.Action = security.Action_DENY
	case securityapi.AuthorizationPolicy_AUDIT:
		t.conds.fail(ref, ZtunnelAccepted, ReasonUnsupportedValue,
			"spec.action: AUDIT is not enforced by ztunnel (its policies are only ALLOW or DENY); not sent")
		return nil, nil, false
	case securityapi.AuthorizationPolicy_CUSTOM:
		t.conds.fail(ref, ZtunnelAccepted, ReasonUnsupportedValue,
			"spec.action: CUSTOM (external authorization) needs a waypoint; not sent to ztunnel")
		return nil, nil, false
	default:
		t.conds.fail(ref, ZtunnelAccepted, ReasonInvalidValue, fmt.Sprintf("spec.action: unknown value %d; not sent", spec.Action))
		return nil, nil, false
	}
	switch {
	case hasSelector(spec.GetSelector().GetMatchLabels()):
		a.Scope = security.Scope_WORKLOAD_SELECTOR
	case ap.Namespace == t.mesh.RootNamespace:
		a.Scope = security.Scope_GLOBAL
	default:
		a.Scope = security.Scope_NAMESPACE
	}
	if v, ok := ap.Annotations[annotationDryRun]; ok {
		dry, err := strconv.ParseBool(v)
		if err != nil {
			findings = append(findings, finding{true, ReasonInvalidValue, fmt.Sprintf(
				"metadata.annotations[%s]: %q is not true or false; enforced", annotationDryRun, v)})
		}
		a.DryRun = dry
	}
	for i, r := range spec.Rules {
		rt := ruleTranslator{deny: a.Action == security.Action_DENY, namespace: ap.Namespace, index: i}
		rule := rt.rule(r)
		findings = append(findings, rt.report()...)
		if rule != nil {
			a.Rules = append(a.Rules, rule)
		}
	}
	return a, findings, true
}

// targetRefPolicies reports on the policies for waypoints. ztunnel never
// gets them: the waypoint enforces them.
func (t *translator) targetRefPolicies() {
	gateways := map[nsName]bool{}
	for _, gw := range t.snap.Gateways {
		if gw != nil {
			gateways[nsName{gw.Namespace, gw.Name}] = true
		}
	}
	classes := map[string]bool{WaypointClass: true}
	for _, gc := range t.snap.GatewayClasses {
		if gc != nil {
			classes[gc.Name] = true
		}
	}
	serviceEntries := map[nsName]bool{}
	for _, se := range t.snap.ServiceEntries {
		if se != nil {
			serviceEntries[nsName{se.Namespace, se.Name}] = true
		}
	}
	for _, ap := range t.ap.targeted {
		ref := authzPolicyRef(ap)
		refs := ap.Spec.TargetRefs
		paths := make([]string, len(refs))
		for i := range refs {
			paths[i] = fmt.Sprintf("spec.targetRefs[%d]", i)
		}
		if ap.Spec.TargetRef != nil {
			refs = append(refs, ap.Spec.TargetRef)
			paths = append(paths, "spec.targetRef")
		}
		for i, tr := range refs {
			at := paths[i]
			if tr == nil {
				continue
			}
			if tr.Namespace != "" && tr.Namespace != ap.Namespace {
				t.conds.fail(ref, WaypointAccepted, ReasonInvalidValue, fmt.Sprintf(
					"%s.namespace: %q, a policy only targets objects of its own namespace", at, tr.Namespace))
				continue
			}
			key := nsName{ap.Namespace, tr.Name}
			target := fmt.Sprintf("%s %s", tr.Kind, joinKey(ap.Namespace, tr.Name))
			switch {
			case tr.Group == "gateway.networking.k8s.io" && tr.Kind == "Gateway":
				if !gateways[key] {
					t.conds.fail(ref, WaypointAccepted, ReasonTargetNotFound, fmt.Sprintf("%s: %s not found; nothing enforces this policy", at, target))
				}
			case tr.Group == "gateway.networking.k8s.io" && tr.Kind == "GatewayClass":
				if ap.Namespace != t.mesh.RootNamespace {
					t.conds.fail(ref, WaypointAccepted, ReasonInvalidValue, fmt.Sprintf(
						"%s: a GatewayClass is only targeted from the root namespace %s", at, t.mesh.RootNamespace))
				} else if !classes[tr.Name] {
					t.conds.fail(ref, WaypointAccepted, ReasonTargetNotFound, fmt.Sprintf("%s: GatewayClass %s not found", at, tr.Name))
				}
			case (tr.Group == "" || tr.Group == "core") && tr.Kind == "Service":
				t.checkServiceTarget(ref, at, target, t.serviceByName[key] != nil, serviceRefOf("", "Service", key))
			case tr.Group == "networking.istio.io" && tr.Kind == "ServiceEntry":
				t.checkServiceTarget(ref, at, target, serviceEntries[key], serviceRefOf("networking.istio.io", "ServiceEntry", key))
			default:
				t.conds.fail(ref, WaypointAccepted, ReasonInvalidValue, fmt.Sprintf(
					"%s: kind %q of group %q cannot be targeted (Gateway, GatewayClass, Service or ServiceEntry)", at, tr.Kind, tr.Group))
			}
		}
		if ap.Spec.Action == securityapi.AuthorizationPolicy_CUSTOM {
			// The waypoint cannot call an external authorizer: it denies
			// the requests the rules match instead (controlplane/l7).
			t.conds.fail(ref, WaypointAccepted, ReasonUnsupportedValue,
				"spec.action: CUSTOM (external authorization) is not supported by the waypoint; the requests its rules match are denied")
		}
		t.conds.ok(ref, WaypointAccepted, ReasonAccepted, "enforced by the targeted waypoint, not by ztunnel")
	}
}

func serviceRefOf(group, kind string, k nsName) ObjectRef {
	return ObjectRef{group, kind, k.namespace, k.name}
}

func (t *translator) checkServiceTarget(ref ObjectRef, at, target string, exists bool, svc ObjectRef) {
	switch {
	case !exists:
		t.conds.fail(ref, WaypointAccepted, ReasonTargetNotFound, fmt.Sprintf("%s: %s not found; nothing enforces this policy", at, target))
	case !t.serviceWaypoint[svc]:
		t.conds.fail(ref, WaypointAccepted, ReasonWaypointRequired, fmt.Sprintf(
			"%s: %s is not bound to a waypoint (%s); nothing enforces this policy", at, target, labelUseWaypoint))
	}
}
