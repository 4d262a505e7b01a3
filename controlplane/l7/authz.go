package l7

import (
	"fmt"
	"strconv"
	"strings"

	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	rbacv3 "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	rbacfilterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/rbac/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	netrbacv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/rbac/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	securityapi "istio.io/api/security/v1beta1"
	typeapi "istio.io/api/type/v1beta1"
	securityv1 "istio.io/client-go/pkg/apis/security/v1"

	"github.com/zmesh/zmesh/controlplane/model"
)

const (
	rbacName = "envoy.filters.http.rbac"
	// netRBACName is the network RBAC filter of the TCP chains, with
	// istiod's stat prefix.
	netRBACName       = "envoy.filters.network.rbac"
	netRBACStatPrefix = "tcp."
	// annotationDryRun makes an AuthorizationPolicy report instead of
	// enforce: its rules become shadow rules.
	annotationDryRun = "istio.io/dry-run"
	// Stat prefixes of the shadow rules, as istiod names them.
	shadowAllowPrefix = "istio_dry_run_allow_"
	shadowDenyPrefix  = "istio_dry_run_deny_"
)

// authzPolicy is an AuthorizationPolicy attached to this waypoint,
// translated once.
type authzPolicy struct {
	ref ObjectRef
	// action is the RBAC engine its rules go to: LOG (AUDIT), DENY (DENY,
	// and CUSTOM, denied in its place) or ALLOW.
	action rbacv3.RBAC_Action
	dryRun bool
	// rules are the Envoy policies of the HTTP chains by istiod's name,
	// ns[<namespace>]-policy[<name>]-rule[<index>]; tcpRules those of
	// the TCP chains, where HTTP attributes cannot be read (see
	// ruleTranslator).
	rules, tcpRules map[string]*rbacv3.Policy
	// all: attached to the waypoint (its Gateway or the waypoint
	// GatewayClass); else hosts are the bound Services it is attached to.
	all   bool
	hosts map[string]bool
	// workload: the policy is on the waypoint as a workload (a selector
	// matching its pods, or namespace-wide in its namespace or the root
	// namespace). Only tcpRules are set: it is enforced per tunnel, before
	// any chain's own filters, at L4 as ztunnel enforces it on any pod.
	workload bool
}

// authorization finds the AuthorizationPolicies attached to this waypoint
// with targetRefs (or targetRef) and translates them. Policies with a
// selector, or neither, are ztunnel's.
func (b *builder) authorization() {
	bound := map[[2]string]string{}
	for _, info := range b.bound {
		if info.se == nil {
			bound[[2]string{info.svc.Namespace, info.svc.Name}] = info.host
		}
	}
	for _, ap := range b.snap.AuthorizationPolicies {
		if ap == nil {
			continue
		}
		if len(ap.Spec.TargetRefs) == 0 && ap.Spec.TargetRef == nil {
			if b.onWaypointWorkload(ap) {
				p := &authzPolicy{ref: ObjectRef{"AuthorizationPolicy", ap.Namespace, ap.Name}, workload: true}
				b.translatePolicy(p, ap)
				b.authz = append(b.authz, p)
			}
			continue
		}
		p := &authzPolicy{ref: ObjectRef{"AuthorizationPolicy", ap.Namespace, ap.Name}, hosts: map[string]bool{}}
		refs, paths := ap.Spec.TargetRefs, make([]string, 0, len(ap.Spec.TargetRefs)+1)
		for i := range refs {
			paths = append(paths, fmt.Sprintf("spec.targetRefs[%d]", i))
		}
		if ap.Spec.TargetRef != nil {
			refs = append(refs[:len(refs):len(refs)], ap.Spec.TargetRef)
			paths = append(paths, "spec.targetRef")
		}
		for i, tr := range refs {
			b.attach(p, ap, tr, paths[i], bound)
		}
		if !p.all && len(p.hosts) == 0 {
			continue
		}
		b.translatePolicy(p, ap)
		b.authz = append(b.authz, p)
	}
}

// onWaypointWorkload reports whether a policy without targetRefs applies
// to the waypoint's pods as it would to any workload's: a selector
// matching the labels the deployer gives them (or those a running
// waypoint pod has) in the waypoint's namespace or the root namespace,
// or no selector in either namespace. The waypoint's pods are not
// captured by ztunnel, so the waypoint enforces these itself.
func (b *builder) onWaypointWorkload(ap *securityv1.AuthorizationPolicy) bool {
	root := b.opts.Mesh.RootNamespace
	if ap.Namespace != b.gw.Namespace && ap.Namespace != root {
		return false
	}
	sel := ap.Spec.GetSelector().GetMatchLabels()
	if len(sel) == 0 {
		return true
	}
	_, template := model.WaypointLabels(b.gw)
	if selects(sel, template) {
		return true
	}
	for _, pod := range b.snap.Pods {
		if pod != nil && pod.Namespace == b.gw.Namespace && pod.Labels[model.LabelGatewayName] == b.gw.Name && selects(sel, pod.Labels) {
			return true
		}
	}
	return false
}

// attach records what of this waypoint one target reference names. A
// reference to another namespace, or to nothing here, is the ztunnel
// translation's to report.
func (b *builder) attach(p *authzPolicy, ap *securityv1.AuthorizationPolicy, tr *typeapi.PolicyTargetReference, at string, bound map[[2]string]string) {
	if tr == nil || (tr.Namespace != "" && tr.Namespace != ap.Namespace) {
		return
	}
	switch {
	case tr.Group == "gateway.networking.k8s.io" && tr.Kind == "Gateway":
		if ap.Namespace == b.gw.Namespace && tr.Name == b.gw.Name {
			p.all = true
		}
	case tr.Group == "gateway.networking.k8s.io" && tr.Kind == "GatewayClass":
		if ap.Namespace == b.opts.Mesh.RootNamespace && tr.Name == string(b.gw.Spec.GatewayClassName) {
			p.all = true
		}
	case (tr.Group == "" || tr.Group == "core") && tr.Kind == "Service":
		if host, ok := bound[[2]string{ap.Namespace, tr.Name}]; ok {
			p.hosts[host] = true
		}
	case tr.Group == "networking.istio.io" && tr.Kind == "ServiceEntry":
		// Every host of the entry this waypoint serves.
		for _, info := range b.bound {
			if info.se != nil && info.se.Namespace == ap.Namespace && info.se.Name == tr.Name {
				p.hosts[info.host] = true
			}
		}
	}
}

// translatePolicy translates the action and rules of one policy and
// reports what it cannot honour.
func (b *builder) translatePolicy(p *authzPolicy, ap *securityv1.AuthorizationPolicy) {
	spec := &ap.Spec
	deny := false
	switch spec.Action {
	case securityapi.AuthorizationPolicy_ALLOW:
		p.action = rbacv3.RBAC_ALLOW
	case securityapi.AuthorizationPolicy_DENY:
		p.action, deny = rbacv3.RBAC_DENY, true
	case securityapi.AuthorizationPolicy_AUDIT:
		p.action = rbacv3.RBAC_LOG
	case securityapi.AuthorizationPolicy_CUSTOM:
		// No external authorization provider can be called: as istiod does
		// for a CUSTOM policy whose provider it cannot use, the requests
		// its rules match are denied instead of being asked about.
		p.action, deny = rbacv3.RBAC_DENY, true
		b.problem(p.ref, "spec.action", "CUSTOM (external authorization) is not supported by the waypoint; the requests its rules match are denied")
	default:
		// A policy the waypoint cannot read denies everything in its scope.
		p.action = rbacv3.RBAC_DENY
		p.rules = map[string]*rbacv3.Policy{policyName(ap.Namespace, ap.Name, 0): {
			Permissions: []*rbacv3.Permission{andRules(nil)}, Principals: []*rbacv3.Principal{andIDs(nil)},
		}}
		p.tcpRules = p.rules
		b.problem(p.ref, "spec.action", fmt.Sprintf("unknown value %d; every request in the policy's scope is denied", spec.Action))
		return
	}
	if v, ok := ap.Annotations[annotationDryRun]; ok {
		dry, err := strconv.ParseBool(v)
		if err != nil {
			b.problem(p.ref, "metadata.annotations["+annotationDryRun+"]", fmt.Sprintf("%q is not true or false; enforced", v))
		}
		p.dryRun = dry
	}
	p.rules, p.tcpRules = map[string]*rbacv3.Policy{}, map[string]*rbacv3.Policy{}
	if p.workload {
		b.translateWorkloadRules(p, ap, deny)
		return
	}
	for i, r := range spec.Rules {
		rt := ruleTranslator{deny: deny, allow: p.action == rbacv3.RBAC_ALLOW, namespace: ap.Namespace, index: i}
		pol := rt.policy(r)
		for _, f := range rt.findings {
			b.problem(p.ref, f.field, f.msg)
		}
		if pol != nil {
			p.rules[policyName(ap.Namespace, ap.Name, i)] = pol
		}
		// The same rule for the TCP chains; what it cannot honour was
		// reported above.
		rt = ruleTranslator{deny: deny, allow: p.action == rbacv3.RBAC_ALLOW, tcp: true, namespace: ap.Namespace, index: i}
		if pol := rt.policy(r); pol != nil {
			p.tcpRules[policyName(ap.Namespace, ap.Name, i)] = pol
		}
	}
	// No rule (or none left): the policy matches nothing, so an ALLOW
	// policy allows nothing, as istiod writes it.
	for _, rules := range []map[string]*rbacv3.Policy{p.rules, p.tcpRules} {
		if len(rules) == 0 {
			rules[policyName(ap.Namespace, ap.Name, 0)] = matchNever()
		}
	}
}

// translateWorkloadRules translates the rules of a policy on the waypoint
// as a workload, for its tunnels only: what a tunnel does not have (HTTP
// attributes) fails closed as the ztunnel translation makes it fail for
// any pod, and is reported: an ALLOW rule using one is left out, a DENY
// (or AUDIT) rule ignores it and so denies (logs) its whole L4 match.
func (b *builder) translateWorkloadRules(p *authzPolicy, ap *securityv1.AuthorizationPolicy, deny bool) {
	for i, r := range ap.Spec.Rules {
		rt := ruleTranslator{deny: deny, allow: p.action == rbacv3.RBAC_ALLOW, tcp: true, namespace: ap.Namespace, index: i}
		pol := rt.policy(r)
		for _, f := range rt.findings {
			b.problem(p.ref, f.field, f.msg)
		}
		if len(rt.httpOnlyFields) > 0 {
			consequence := "they are ignored, so this rule applies to its whole L4 match"
			if p.action == rbacv3.RBAC_ALLOW {
				consequence = "the rule is left out of this ALLOW policy, so it allows less than written"
			}
			b.problem(p.ref, strings.Join(rt.httpOnlyFields, ", "), fmt.Sprintf(
				"the policy applies to waypoint %s/%s as a workload, which enforces it per tunnel (L4) where HTTP attributes cannot be read (attach it with targetRefs to enforce them); %s",
				b.gw.Namespace, b.gw.Name, consequence))
		}
		if pol != nil {
			p.tcpRules[policyName(ap.Namespace, ap.Name, i)] = pol
		}
	}
	if len(p.tcpRules) == 0 {
		p.tcpRules[policyName(ap.Namespace, ap.Name, 0)] = matchNever()
	}
}

// policyName is istiod's name of a rule's RBAC policy, which the access
// log names as the deciding policy.
func policyName(namespace, name string, rule int) string {
	return fmt.Sprintf("ns[%s]-policy[%s]-rule[%d]", namespace, name, rule)
}

// applies reports whether p applies to the chains of host (workload
// policies apply to the waypoint's tunnels instead).
func (p *authzPolicy) applies(host string) bool { return !p.workload && (p.all || p.hosts[host]) }

// authzRules are the RBAC engines of the chains of host (its TCP chains
// when tcp), in istiod's order: AUDIT (a LOG engine), DENY, then ALLOW;
// each holds the enforced policies of its action as rules and the dry-run
// ones as shadow rules, with the shadow stat prefix istiod gives them. An
// action no policy has gets no entry.
func (b *builder) authzRules(host string, tcp bool) []authzEngines {
	return b.engines(func(p *authzPolicy) bool { return p.applies(host) }, tcp)
}

// engines are the RBAC engines of the policies in, in istiod's order.
func (b *builder) engines(in func(*authzPolicy) bool, tcp bool) []authzEngines {
	var out []authzEngines
	for _, action := range []rbacv3.RBAC_Action{rbacv3.RBAC_LOG, rbacv3.RBAC_DENY, rbacv3.RBAC_ALLOW} {
		var e authzEngines
		for _, p := range b.authz {
			if p.action != action || !in(p) {
				continue
			}
			b.accepted[p.ref] = true
			set := &e.rules
			if p.dryRun {
				set = &e.shadow
			}
			if *set == nil {
				*set = &rbacv3.RBAC{Action: action, Policies: map[string]*rbacv3.Policy{}}
			}
			pols := p.rules
			if tcp {
				pols = p.tcpRules
			}
			for name, pol := range pols {
				(*set).Policies[name] = pol
			}
		}
		if e.rules == nil && e.shadow == nil {
			continue
		}
		if e.shadow != nil {
			switch action {
			case rbacv3.RBAC_ALLOW:
				e.shadowPrefix = shadowAllowPrefix
			case rbacv3.RBAC_DENY:
				e.shadowPrefix = shadowDenyPrefix
			}
		}
		out = append(out, e)
	}
	return out
}

// authzEngines are one RBAC filter's engines.
type authzEngines struct {
	rules, shadow *rbacv3.RBAC
	shadowPrefix  string
}

// authzFilters are the envoy.filters.http.rbac filters of the HTTP chains
// of host.
func (b *builder) authzFilters(host string) []*hcmv3.HttpFilter {
	var out []*hcmv3.HttpFilter
	for _, e := range b.authzRules(host, false) {
		cfg := &rbacfilterv3.RBAC{Rules: e.rules, ShadowRules: e.shadow, ShadowRulesStatPrefix: e.shadowPrefix}
		out = append(out, &hcmv3.HttpFilter{Name: rbacName, ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: stableAny(cfg)}})
	}
	return out
}

// authzTCPFilters are the envoy.filters.network.rbac filters that go
// before the tcp_proxy of the TCP chains of host: the connection is
// checked once, with what a connection has (peer identity, addresses,
// port), and closed when denied.
func (b *builder) authzTCPFilters(host string) []*listenerv3.Filter {
	var out []*listenerv3.Filter
	for _, e := range b.authzRules(host, true) {
		cfg := &netrbacv3.RBAC{StatPrefix: netRBACStatPrefix, Rules: e.rules, ShadowRules: e.shadow, ShadowRulesStatPrefix: e.shadowPrefix}
		out = append(out, &listenerv3.Filter{Name: netRBACName, ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: stableAny(cfg)}})
	}
	return out
}

// authzTunnelFilters are the envoy.filters.network.rbac filters of the
// policies on the waypoint as a workload. They head every chain, HTTP and
// TCP alike, before the chain's own filters: a tunnel is checked once,
// with what a connection has (the peer's identity and address, the
// destination port), and refused when denied, as ztunnel refuses it for
// a pod. They are separate filters from the chain's targetRefs policies,
// so each scope with ALLOW policies must allow the tunnel (or request) on
// its own, as two RBAC filters in sequence do in Envoy.
func (b *builder) authzTunnelFilters() []*listenerv3.Filter {
	var out []*listenerv3.Filter
	for _, e := range b.engines(func(p *authzPolicy) bool { return p.workload }, true) {
		cfg := &netrbacv3.RBAC{StatPrefix: netRBACStatPrefix, Rules: e.rules, ShadowRules: e.shadow, ShadowRulesStatPrefix: e.shadowPrefix}
		out = append(out, &listenerv3.Filter{Name: netRBACName, ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: stableAny(cfg)}})
	}
	return out
}

// stableAny packs m with its maps in key order. The xDS server compares
// encodings to find what changed, and the bytes inside an Any are taken as
// they are: RBAC policies are a map, which would otherwise come out in
// another order on every build and push the listener again each time.
func stableAny(m proto.Message) *anypb.Any {
	a := &anypb.Any{}
	if err := anypb.MarshalFrom(a, m, proto.MarshalOptions{Deterministic: true}); err != nil {
		panic(fmt.Sprintf("marshal %T: %v", m, err)) // a well-formed message always marshals
	}
	return a
}
