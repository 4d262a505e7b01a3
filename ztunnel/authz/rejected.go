package authz

import (
	"strings"

	"github.com/zmesh/zmesh/api/workload/security"
)

// Rejected returns the policy enforced in place of one that was refused
// (it did not decode or did not compile): a DENY of every connection over
// the scope the refused policy would have had, until a good version
// replaces it. Keeping the previous version instead could keep a rule the
// new one removes, and leaving nothing would turn a refused ALLOW into "no
// ALLOW policies", which allows everyone: both fail open.
//
// key is the resource name ("namespace/name"), the name workloads list it
// by and the stand-in's own; a is what could be read of the policy (nil if
// nothing could). The scope is the policy's own when it is readable. When
// it is not (nothing decoded, a scope value this ztunnel does not know, no
// namespace, or one that contradicts the resource name), the policy may have
// been a mesh-wide one, so the deny is GLOBAL: every workload of the node
// refuses connections until the policy is fixed or removed. A policy
// readable as dry-run stays dry-run: enforcing it never changed a decision.
func Rejected(key string, a *security.Authorization, cause error) *Policy {
	ns, name, ok := strings.Cut(key, "/")
	if !ok {
		ns, name = "", key
	}
	scope := security.Scope_GLOBAL
	_, known := security.Scope_name[int32(a.GetScope())]
	if a != nil && known && ns != "" && (a.GetNamespace() == "" || a.GetNamespace() == ns) {
		scope = a.GetScope()
	}
	reason := "rejected"
	if cause != nil {
		reason = cause.Error()
	}
	denyAll := &security.Authorization{
		Name: name, Namespace: ns, Scope: scope, Action: security.Action_DENY, DryRun: a.GetDryRun(),
		Rules: []*security.Rule{{}}, // a rule without clauses matches every connection
	}
	return &Policy{
		Name: name, Namespace: ns, Scope: scope, Action: security.Action_DENY, DryRun: denyAll.DryRun,
		raw: denyAll, rules: []rule{{}}, rejected: reason,
	}
}

// RejectedBecause is why the policy stands in for a refused one, "" for a
// policy that compiled.
func (p *Policy) RejectedBecause() string { return p.rejected }
