// Package authz is ztunnel's L4 authorization: it compiles the
// istio.security Authorization policies that arrive over xDS and decides, for
// one inbound connection, whether the policies that apply to the destination
// workload allow it.
//
// Its semantics are Istio ztunnel's (src/rbac.rs and ProxyState::assert_rbac),
// so that policies istiod or zmeshd translate from AuthorizationPolicy and
// PeerAuthentication mean the same here: DENY before ALLOW, a policy matches
// if any rule matches, a rule if all its clauses match, a clause if any of its
// matches matches.
//
// The package is pure: no I/O, no goroutines, no clock, no logging. Choosing
// which policies apply to a workload (by scope) is the caller's job. It imports
// nothing of ztunnel's; only the wire types and the identity package.
package authz
