package translate

import (
	"cmp"
	"fmt"
	"maps"
	"slices"

	"google.golang.org/protobuf/types/known/emptypb"
	securityapi "istio.io/api/security/v1beta1"
	securityv1 "istio.io/client-go/pkg/apis/security/v1"
	corev1 "k8s.io/api/core/v1"

	"github.com/zmesh/zmesh/api/workload/security"
)

// PeerAuthenticationPolicyPrefix + a PeerAuthentication's name, in its
// namespace, names the Authorization that enforces it: the one listed on
// every workload whose mode that PeerAuthentication makes STRICT (or, for a
// selector PeerAuthentication whose ports differ, on some of its ports).
// istiod names only the port-level ones so and shares one
// "istio_converted_static_strict" among all others; naming each after its
// PeerAuthentication lets ztunnel's refusals name what the user wrote
// (ztunnel's authz.PeerAuthentication reads the name back).
const PeerAuthenticationPolicyPrefix = "istio_converted_peer_authentication_"

type mtlsMode = securityapi.PeerAuthentication_MutualTLS_Mode

const (
	modeUnset      = securityapi.PeerAuthentication_MutualTLS_UNSET
	modeStrict     = securityapi.PeerAuthentication_MutualTLS_STRICT
	modePermissive = securityapi.PeerAuthentication_MutualTLS_PERMISSIVE
)

type peerAuthState struct {
	// namespaceWide is the namespace-wide PeerAuthentication in force in
	// each namespace (the root namespace's is the mesh's).
	namespaceWide map[string]*securityv1.PeerAuthentication
	selectors     map[string]*selectorIndex[*securityv1.PeerAuthentication]
	// withSelector lists the selector PeerAuthentications in snapshot
	// order, for the report on which pods they got (podPhase).
	withSelector []*securityv1.PeerAuthentication
	// nsMode and portLevel memoize what pods ask, so they depend only on
	// the policies, never on which pods asked first. portLevel caches the
	// policy of each port-level PeerAuthentication (nil when its ports all
	// end up with the default mode).
	nsMode    map[string]nsMode
	portLevel map[*securityv1.PeerAuthentication]*security.Authorization
	// strict holds the policy of each PeerAuthentication that makes
	// workloads STRICT on all ports, made once per translator so that an
	// unchanged policy keeps its pointer.
	strict map[*securityv1.PeerAuthentication]*security.Authorization
}

// nsMode is the mode of a namespace's workloads that no selector policy
// sets, and the namespace-wide PeerAuthentication it comes from (nil for
// the PERMISSIVE default).
type nsMode struct {
	mode mtlsMode
	from *securityv1.PeerAuthentication
}

// olderFirst orders PeerAuthentications as Istio resolves conflicts: the
// oldest wins, then the first by name.
func olderFirst(a, b *securityv1.PeerAuthentication) int {
	if c := a.CreationTimestamp.Compare(b.CreationTimestamp.Time); c != 0 {
		return c
	}
	return cmp.Or(cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Name, b.Name))
}

func hasSelector(labels map[string]string) bool { return len(labels) > 0 }

func mode(pa *securityv1.PeerAuthentication) mtlsMode { return pa.Spec.GetMtls().GetMode() }

// peerAuthentications indexes PeerAuthentications and resolves which
// namespace-wide one is in force in each namespace.
func (t *translator) peerAuthentications() {
	st := &t.pa
	st.namespaceWide = map[string]*securityv1.PeerAuthentication{}
	st.nsMode = map[string]nsMode{}
	st.selectors = map[string]*selectorIndex[*securityv1.PeerAuthentication]{}
	st.portLevel = map[*securityv1.PeerAuthentication]*security.Authorization{}
	st.strict = map[*securityv1.PeerAuthentication]*security.Authorization{}

	var nsWide []*securityv1.PeerAuthentication
	for _, pa := range t.snap.PeerAuthentications {
		if pa == nil || !t.validRef(peerAuthRef(pa)) {
			continue
		}
		ref := peerAuthRef(pa)
		t.conds.ok(ref, ZtunnelAccepted, ReasonAccepted, "enforced by ztunnel")
		for _, port := range slices.Sorted(maps.Keys(pa.Spec.PortLevelMtls)) {
			if port < 1 || port > 65535 {
				t.conds.fail(ref, ZtunnelAccepted, ReasonInvalidValue, fmt.Sprintf("spec.portLevelMtls[%d]: not a port (1-65535); ignored", port))
			}
		}
		if !hasSelector(pa.Spec.GetSelector().GetMatchLabels()) {
			if len(pa.Spec.PortLevelMtls) > 0 {
				t.conds.fail(ref, ZtunnelAccepted, ReasonUnsupportedValue,
					"spec.portLevelMtls: only applies with a selector (as in Istio); ignored")
			}
			nsWide = append(nsWide, pa)
			continue
		}
		idx := st.selectors[pa.Namespace]
		if idx == nil {
			idx = &selectorIndex[*securityv1.PeerAuthentication]{}
			st.selectors[pa.Namespace] = idx
		}
		idx.add(pa.Spec.Selector.MatchLabels, pa)
		st.withSelector = append(st.withSelector, pa)
	}
	slices.SortStableFunc(nsWide, olderFirst)
	for _, pa := range nsWide {
		if first := st.namespaceWide[pa.Namespace]; first != nil {
			t.conds.fail(peerAuthRef(pa), ZtunnelAccepted, ReasonConflict, fmt.Sprintf(
				"spec: the older namespace-wide PeerAuthentication %s applies in this namespace instead", joinKey(first.Namespace, first.Name)))
			continue
		}
		st.namespaceWide[pa.Namespace] = pa
	}
}

// namespaceMode is the mode of a namespace's workloads that no selector
// policy sets: the namespace-wide policy's, else the root namespace's, else
// PERMISSIVE. DISABLE acts as PERMISSIVE in ztunnel: it still accepts HBONE.
func (t *translator) namespaceMode(ns string) nsMode {
	if m, ok := t.pa.nsMode[ns]; ok {
		return m
	}
	m := nsMode{mode: modePermissive}
	if pa := t.pa.namespaceWide[ns]; pa != nil && mode(pa) != modeUnset {
		m = nsMode{mode(pa), pa}
	} else if pa := t.pa.namespaceWide[t.mesh.RootNamespace]; pa != nil && mode(pa) != modeUnset {
		m = nsMode{mode(pa), pa}
	}
	t.pa.nsMode[ns] = m
	return m
}

// peerAuthPolicy returns the key of the Authorization enforcing p's
// effective PeerAuthentication, or "" when nothing is to enforce; r records
// which selector PeerAuthentications applied and which PeerAuthentication
// makes the pod STRICT on all ports, if one does.
func (t *translator) peerAuthPolicy(p *corev1.Pod, r *podResult) string {
	st := &t.pa
	var winner *securityv1.PeerAuthentication
	var others []*securityv1.PeerAuthentication
	st.selectors[p.Namespace].each(p.Labels, func(pa *securityv1.PeerAuthentication) {
		switch {
		case winner == nil:
			winner = pa
		case olderFirst(pa, winner) < 0:
			others = append(others, winner)
			winner = pa
		default:
			others = append(others, pa)
		}
	})
	base := t.namespaceMode(p.Namespace)
	if winner == nil {
		return strictIf(r, base)
	}
	r.paWinner, r.paLosers = winner, others
	m := nsMode{mode(winner), winner}
	if m.mode == modeUnset {
		m = base // the namespace's mode, and the policy it comes from
	}
	a, done := st.portLevel[winner]
	if !done {
		a = portLevelPolicy(winner, m.mode == modeStrict)
		st.portLevel[winner] = a
	}
	if a == nil {
		return strictIf(r, m)
	}
	return joinKey(a.Namespace, a.Name)
}

// strictIf records m's PeerAuthentication in r and returns the key of its
// policy when m is STRICT.
func strictIf(r *podResult, m nsMode) string {
	if m.mode != modeStrict {
		return ""
	}
	r.strictFrom = m.from
	return peerAuthPolicyKey(m.from)
}

// peerAuthPolicyKey is the key of the Authorization enforcing pa.
func peerAuthPolicyKey(pa *securityv1.PeerAuthentication) string {
	return joinKey(pa.Namespace, PeerAuthenticationPolicyPrefix+pa.Name)
}

// portLevelPolicy is the DENY policy of a selector PeerAuthentication with
// ports whose mode differs from its default, or nil if none does: under a
// STRICT default it denies plaintext except on the non-STRICT ports, under
// a PERMISSIVE one it denies plaintext only on the STRICT ports. UNSET
// ports take the default.
func portLevelPolicy(pa *securityv1.PeerAuthentication, strict bool) *security.Authorization {
	var except []uint32
	for _, port := range slices.Sorted(maps.Keys(pa.Spec.PortLevelMtls)) {
		m := pa.Spec.PortLevelMtls[port].GetMode()
		if port < 1 || port > 65535 || m == modeUnset {
			continue
		}
		if (m == modeStrict) != strict {
			except = append(except, port)
		}
	}
	if len(except) == 0 {
		return nil
	}
	match := plaintextMatch()
	if strict {
		match.NotDestinationPorts = except
	} else {
		match.DestinationPorts = except
	}
	return &security.Authorization{
		Name:      PeerAuthenticationPolicyPrefix + pa.Name,
		Namespace: pa.Namespace,
		Scope:     security.Scope_WORKLOAD_SELECTOR,
		Action:    security.Action_DENY,
		Rules:     []*security.Rule{{Clauses: []*security.Clause{{Matches: []*security.Match{match}}}}},
	}
}

// plaintextMatch matches connections without a peer identity.
func plaintextMatch() *security.Match {
	return &security.Match{NotPrincipals: []*security.StringMatch{{MatchType: &security.StringMatch_Presence{Presence: &emptypb.Empty{}}}}}
}

// finishPeerAuthentications emits the policies workloads ended up listing
// and reports selectors that matched nothing and conflicts.
func (ph *podPhase) finishPeerAuthentications() {
	st := &ph.t.pa
	for pa := range ph.strictFrom {
		a := st.strict[pa]
		if a == nil {
			a = &security.Authorization{
				Name:      PeerAuthenticationPolicyPrefix + pa.Name,
				Namespace: pa.Namespace,
				Scope:     security.Scope_WORKLOAD_SELECTOR,
				Action:    security.Action_DENY,
				Rules:     []*security.Rule{{Clauses: []*security.Clause{{Matches: []*security.Match{plaintextMatch()}}}}},
			}
			st.strict[pa] = a
		}
		ph.out.Authorizations[peerAuthPolicyKey(pa)] = a
	}
	for _, pa := range st.withSelector {
		if a := st.portLevel[pa]; a != nil && ph.paSelected[pa] > 0 {
			ph.out.Authorizations[joinKey(a.Namespace, a.Name)] = a
		}
	}
	for _, pa := range st.withSelector {
		winners := ph.lostTo[pa]
		if ph.paSelected[pa] == 0 && len(winners) == 0 {
			ph.conds.note(peerAuthRef(pa), ZtunnelAccepted, ReasonNoMatchingWorkload, "spec.selector: matches no running pod")
		}
		for _, w := range slices.SortedFunc(maps.Keys(winners), olderFirst) {
			ph.conds.fail(peerAuthRef(pa), ZtunnelAccepted, ReasonConflict, fmt.Sprintf(
				"spec.selector: %d pod(s) are also selected by the older PeerAuthentication %s, which applies to them",
				winners[w], joinKey(w.Namespace, w.Name)))
		}
	}
}
