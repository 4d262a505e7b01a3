package l7

import (
	"fmt"
	"net/netip"
	"regexp"
	"strconv"
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	rbacv3 "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"google.golang.org/protobuf/types/known/wrapperspb"
	securityapi "istio.io/api/security/v1beta1"
)

// The attributes Istio's RBAC policies read, as istiod names them for a
// waypoint: the peer's identity in filter state, the verified JWT in the
// istio_authn metadata.
const (
	peerPrincipalKey = "io.istio.peer_principal"
	authnFilter      = "istio_authn"
	authnPrincipal   = "request.auth.principal"
	authnClaims      = "request.auth.claims"
	spiffePrefix     = "spiffe://"
)

// ruleTranslator translates one AuthorizationPolicy rule into an Envoy RBAC
// policy and fails closed on what the waypoint cannot read, as the ztunnel
// translation does:
//
//   - ALLOW (and AUDIT): a rule with an unsupported attribute or an invalid
//     value is left out, so the policy never allows (or logs) more than
//     written.
//   - DENY (and CUSTOM, which is denied in its place): such an attribute or
//     value is ignored as if it matched every request: a positive list with
//     an invalid value is dropped as a whole, an invalid entry of a not-list
//     is dropped alone, and a from/to entry left with nothing matches
//     everything. So the rule denies at least what was written.
//
// For a TCP chain (tcp) the HTTP attributes (hosts, methods, paths,
// requestPrincipals, request.* conditions) cannot be read, and are
// treated as istiod treats them there: an ALLOW rule using one is left
// out, so it allows no connection; in DENY and AUDIT the attribute is
// ignored, so the rule denies (logs) every connection its other fields
// match, a rule of HTTP attributes only every connection.
type ruleTranslator struct {
	deny      bool
	allow     bool   // an ALLOW policy (not AUDIT)
	tcp       bool   // for a TCP chain
	namespace string // of the policy, for serviceAccounts without one
	index     int    // of the rule in spec.rules

	// drop: the rule is left out (ALLOW only).
	drop bool
	// httpOnlyFields are the HTTP attributes a TCP translation met, by
	// field path.
	httpOnlyFields []string
	// findings are the unsupported fields and invalid values.
	findings []finding
}

// finding is a field of a rule the waypoint cannot honour.
type finding struct{ field, msg string }

// fail records a field the waypoint cannot honour.
func (rt *ruleTranslator) fail(field, msg string) {
	rt.findings = append(rt.findings, finding{field, msg})
	if !rt.deny {
		rt.drop = true
	}
}

// httpOnly handles an HTTP attribute on a TCP chain: it drops an ALLOW
// rule; elsewhere the attribute is ignored.
func (rt *ruleTranslator) httpOnly(field string) {
	rt.httpOnlyFields = append(rt.httpOnlyFields, field)
	if rt.allow {
		rt.drop = true
	}
}

// httpFields are the from/to fields a TCP connection does not have.
var httpFields = map[string]bool{
	"requestPrincipals": true, "notRequestPrincipals": true,
	"hosts": true, "notHosts": true, "methods": true, "notMethods": true, "paths": true, "notPaths": true,
}

// consequence says what a finding did to the rule.
func (rt *ruleTranslator) consequence() string {
	if rt.deny {
		return "ignored, so the rule denies more than written"
	}
	return "the rule is left out, so the policy allows less than written"
}

func (rt *ruleTranslator) at(kind string, entry int, field string) string {
	s := fmt.Sprintf("spec.rules[%d].%s[%d]", rt.index, kind, entry)
	switch kind {
	case "from":
		s += ".source"
	case "to":
		s += ".operation"
	}
	if field != "" {
		s += "." + field
	}
	return s
}

// policy translates the rule; nil when it is left out.
func (rt *ruleTranslator) policy(r *securityapi.Rule) *rbacv3.Policy {
	var prins []*rbacv3.Principal
	var perms []*rbacv3.Permission
	if r != nil {
		var entries []*rbacv3.Principal
		matchesAll := false
		for j, from := range r.From {
			p := rt.source(j, from.GetSource())
			if p == nil {
				matchesAll = true
			}
			entries = append(entries, p)
		}
		if len(entries) > 0 && !matchesAll {
			prins = append(prins, orIDs(entries))
		}
		var ops []*rbacv3.Permission
		matchesAll = false
		for j, to := range r.To {
			p := rt.operation(j, to.GetOperation())
			if p == nil {
				matchesAll = true
			}
			ops = append(ops, p)
		}
		if len(ops) > 0 && !matchesAll {
			perms = append(perms, orRules(ops))
		}
		for j, c := range r.When {
			perm, prin := rt.condition(j, c)
			if perm != nil {
				perms = append(perms, perm)
			}
			if prin != nil {
				prins = append(prins, prin)
			}
		}
	}
	if rt.drop {
		return nil
	}
	return &rbacv3.Policy{Permissions: []*rbacv3.Permission{andRules(perms)}, Principals: []*rbacv3.Principal{andIDs(prins)}}
}

// list translates one list of values into the OR of their matchers (or,
// negative, its NOT). An invalid value drops the rule (ALLOW); in DENY it
// drops a positive list as a whole (the field then matches everything,
// nil) and only itself from a negative list. removed reports that
// something was dropped.
func list[T any](rt *ruleTranslator, field string, values []string, negative bool, leaf func(string) (T, error), or func([]T) T, not func(T) T) (out T, removed bool) {
	var zero T
	var ms []T
	bad := false
	for i, v := range values {
		m, err := leaf(v)
		if err != nil {
			rt.fail(fmt.Sprintf("%s[%d]", field, i), fmt.Sprintf("%q %v; %s", v, err, rt.consequence()))
			bad = true
			continue
		}
		ms = append(ms, m)
	}
	if bad && (!negative || len(ms) == 0) {
		return zero, true
	}
	if len(ms) == 0 {
		return zero, false
	}
	if negative {
		return not(or(ms)), bad
	}
	return or(ms), bad
}

// ruleField is one field of a from or to entry: its values, whether it is
// a not-field, and how one value becomes a matcher.
type ruleField[T comparable] struct {
	name     string
	values   []string
	negative bool
	leaf     func(string) (T, error)
}

// andFields is the AND of an entry's fields (section "from" or "to"), each
// the OR (or NOR) of its values; the zero T when the entry matches
// everything. On TCP chains HTTP-only fields are left out.
func andFields[T comparable](rt *ruleTranslator, section string, j int, fields []ruleField[T], or func([]T) T, not func(T) T, and func([]T) T) T {
	var zero T
	var ms []T
	removed := false
	for _, f := range fields {
		if len(f.values) == 0 {
			continue
		}
		if rt.tcp && httpFields[f.name] {
			rt.httpOnly(rt.at(section, j, f.name))
			removed = true
			continue
		}
		m, r := list(rt, rt.at(section, j, f.name), f.values, f.negative, f.leaf, or, not)
		removed = removed || r
		if m != zero {
			ms = append(ms, m)
		}
	}
	if len(ms) == 0 {
		if !removed {
			rt.fail(rt.at(section, j, ""), "empty; "+rt.consequence())
		}
		return zero
	}
	return and(ms)
}

// source translates one from entry: the AND of its fields; nil when it
// matches every request (DENY, everything in it ignored).
func (rt *ruleTranslator) source(j int, s *securityapi.Source) *rbacv3.Principal {
	if s == nil {
		rt.fail(rt.at("from", j, ""), "empty; "+rt.consequence())
		return nil
	}
	sa := func(v string) (*rbacv3.Principal, error) { return serviceAccountPrincipal(v, rt.namespace) }
	fields := []ruleField[*rbacv3.Principal]{
		{"principals", s.Principals, false, peerPrincipal},
		{"notPrincipals", s.NotPrincipals, true, peerPrincipal},
		{"requestPrincipals", s.RequestPrincipals, false, requestPrincipal},
		{"notRequestPrincipals", s.NotRequestPrincipals, true, requestPrincipal},
		{"namespaces", s.Namespaces, false, namespacePrincipal},
		{"notNamespaces", s.NotNamespaces, true, namespacePrincipal},
		{"serviceAccounts", s.ServiceAccounts, false, sa},
		{"notServiceAccounts", s.NotServiceAccounts, true, sa},
		{"trustDomains", s.TrustDomains, false, trustDomainPrincipal},
		{"notTrustDomains", s.NotTrustDomains, true, trustDomainPrincipal},
		{"ipBlocks", s.IpBlocks, false, cidrPrincipal(false)},
		{"notIpBlocks", s.NotIpBlocks, true, cidrPrincipal(false)},
		{"remoteIpBlocks", s.RemoteIpBlocks, false, cidrPrincipal(true)},
		{"notRemoteIpBlocks", s.NotRemoteIpBlocks, true, cidrPrincipal(true)},
	}
	return andFields(rt, "from", j, fields, orIDs, notID, andIDs)
}

// operation translates one to entry: the AND of its fields; nil when it
// matches every request.
func (rt *ruleTranslator) operation(j int, op *securityapi.Operation) *rbacv3.Permission {
	if op == nil {
		rt.fail(rt.at("to", j, ""), "empty; "+rt.consequence())
		return nil
	}
	fields := []ruleField[*rbacv3.Permission]{
		{"hosts", op.Hosts, false, hostPermission},
		{"notHosts", op.NotHosts, true, hostPermission},
		{"ports", op.Ports, false, portPermission},
		{"notPorts", op.NotPorts, true, portPermission},
		{"methods", op.Methods, false, methodPermission},
		{"notMethods", op.NotMethods, true, methodPermission},
		{"paths", op.Paths, false, pathPermission},
		{"notPaths", op.NotPaths, true, pathPermission},
	}
	return andFields(rt, "to", j, fields, orRules, notRule, andRules)
}

// condition translates one when condition into a permission (destination
// attributes) or a principal (everything else); both nil when it matches
// every request.
func (rt *ruleTranslator) condition(j int, c *securityapi.Condition) (*rbacv3.Permission, *rbacv3.Principal) {
	at := rt.at("when", j, "")
	if c == nil || (len(c.Values) == 0 && len(c.NotValues) == 0) {
		rt.fail(at, "no values; "+rt.consequence())
		return nil, nil
	}
	var permLeaf func(string) (*rbacv3.Permission, error)
	var prinLeaf func(string) (*rbacv3.Principal, error)
	key := c.Key
	if rt.tcp && strings.HasPrefix(key, "request.") {
		rt.httpOnly(fmt.Sprintf("%s (key %q)", at, key))
		return nil, nil
	}
	switch {
	case key == "destination.ip":
		permLeaf = func(v string) (*rbacv3.Permission, error) {
			r, err := cidrRange(v)
			return &rbacv3.Permission{Rule: &rbacv3.Permission_DestinationIp{DestinationIp: r}}, err
		}
	case key == "destination.port":
		permLeaf = portPermission
	case key == "source.ip":
		prinLeaf = cidrPrincipal(false)
	case key == "remote.ip":
		prinLeaf = cidrPrincipal(true)
	case key == "source.namespace":
		prinLeaf = namespacePrincipal
	case key == "source.principal":
		prinLeaf = peerPrincipal
	case key == "source.serviceAccount":
		prinLeaf = func(v string) (*rbacv3.Principal, error) { return serviceAccountPrincipal(v, rt.namespace) }
	case key == "request.auth.principal":
		prinLeaf = requestPrincipal
	case key == "request.auth.audiences":
		prinLeaf = claimPrincipal([]string{"aud"})
	case key == "request.auth.presenter":
		prinLeaf = claimPrincipal([]string{"azp"})
	case strings.HasPrefix(key, "request.auth.claims["):
		path, err := bracketNames(strings.TrimPrefix(key, "request.auth.claims"))
		if err != nil {
			rt.fail(at+".key", fmt.Sprintf("%q %v; %s", key, err, rt.consequence()))
			return nil, nil
		}
		prinLeaf = claimPrincipal(path)
	case strings.HasPrefix(key, "request.headers["):
		names, err := bracketNames(strings.TrimPrefix(key, "request.headers"))
		if err == nil && (len(names) != 1 || !validHeaderName(names[0])) {
			err = fmt.Errorf("does not name one header")
		}
		if err != nil {
			rt.fail(at+".key", fmt.Sprintf("%q %v; %s", key, err, rt.consequence()))
			return nil, nil
		}
		prinLeaf = func(v string) (*rbacv3.Principal, error) {
			h, err := headerMatcher(strings.ToLower(names[0]), v, false)
			return &rbacv3.Principal{Identifier: &rbacv3.Principal_Header{Header: h}}, err
		}
	default:
		rt.fail(at+".key", fmt.Sprintf("%q is not an attribute the waypoint supports; %s", key, rt.consequence()))
		return nil, nil
	}
	if permLeaf != nil {
		var and []*rbacv3.Permission
		for _, f := range []struct {
			name     string
			values   []string
			negative bool
		}{{"values", c.Values, false}, {"notValues", c.NotValues, true}} {
			if len(f.values) == 0 {
				continue
			}
			if p, _ := list(rt, at+"."+f.name, f.values, f.negative, permLeaf, orRules, notRule); p != nil {
				and = append(and, p)
			}
		}
		if len(and) == 0 {
			return nil, nil
		}
		return andRules(and), nil
	}
	var and []*rbacv3.Principal
	for _, f := range []struct {
		name     string
		values   []string
		negative bool
	}{{"values", c.Values, false}, {"notValues", c.NotValues, true}} {
		if len(f.values) == 0 {
			continue
		}
		if p, _ := list(rt, at+"."+f.name, f.values, f.negative, prinLeaf, orIDs, notID); p != nil {
			and = append(and, p)
		}
	}
	if len(and) == 0 {
		return nil, nil
	}
	return nil, andIDs(and)
}

// Set constructors. One element needs no set; none in an AND matches
// everything.

func andRules(ps []*rbacv3.Permission) *rbacv3.Permission {
	switch len(ps) {
	case 0:
		return &rbacv3.Permission{Rule: &rbacv3.Permission_Any{Any: true}}
	case 1:
		return ps[0]
	}
	return &rbacv3.Permission{Rule: &rbacv3.Permission_AndRules{AndRules: &rbacv3.Permission_Set{Rules: ps}}}
}

func orRules(ps []*rbacv3.Permission) *rbacv3.Permission {
	if len(ps) == 1 {
		return ps[0]
	}
	return &rbacv3.Permission{Rule: &rbacv3.Permission_OrRules{OrRules: &rbacv3.Permission_Set{Rules: ps}}}
}

func notRule(p *rbacv3.Permission) *rbacv3.Permission {
	return &rbacv3.Permission{Rule: &rbacv3.Permission_NotRule{NotRule: p}}
}

func andIDs(ps []*rbacv3.Principal) *rbacv3.Principal {
	switch len(ps) {
	case 0:
		return &rbacv3.Principal{Identifier: &rbacv3.Principal_Any{Any: true}}
	case 1:
		return ps[0]
	}
	return &rbacv3.Principal{Identifier: &rbacv3.Principal_AndIds{AndIds: &rbacv3.Principal_Set{Ids: ps}}}
}

func orIDs(ps []*rbacv3.Principal) *rbacv3.Principal {
	if len(ps) == 1 {
		return ps[0]
	}
	return &rbacv3.Principal{Identifier: &rbacv3.Principal_OrIds{OrIds: &rbacv3.Principal_Set{Ids: ps}}}
}

func notID(p *rbacv3.Principal) *rbacv3.Principal {
	return &rbacv3.Principal{Identifier: &rbacv3.Principal_NotId{NotId: p}}
}

// matchNever is istiod's policy for a policy without rules: it matches no
// request, so an ALLOW policy without rules allows nothing.
func matchNever() *rbacv3.Policy {
	return &rbacv3.Policy{
		Permissions: []*rbacv3.Permission{notRule(&rbacv3.Permission{Rule: &rbacv3.Permission_Any{Any: true}})},
		Principals:  []*rbacv3.Principal{notID(&rbacv3.Principal{Identifier: &rbacv3.Principal_Any{Any: true}})},
	}
}

// Leaf matchers, one per value.

// checkWildcard accepts Istio's string forms: "*", a "*" at the start or
// the end, or none.
func checkWildcard(v string) error {
	switch n := strings.Count(v, "*"); {
	case v == "":
		return fmt.Errorf("is empty")
	case n == 0 || v == "*":
		return nil
	case n == 1 && (v[0] == '*' || v[len(v)-1] == '*'):
		return nil
	}
	return fmt.Errorf("has a wildcard elsewhere than at its start or end")
}

// stringMatch is Istio's string form as an Envoy matcher: "*" any
// non-empty value, "*x" a suffix, "x*" a prefix, else exact; prefix is put
// before the value (not before a leading wildcard).
func stringMatch(v, prefix string) *matcherv3.StringMatcher {
	switch {
	case v == "*":
		return regexMatch(".+")
	case v[0] == '*':
		if prefix == "" {
			return &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Suffix{Suffix: v[1:]}}
		}
		return regexMatch(regexp.QuoteMeta(prefix) + ".*" + regexp.QuoteMeta(v[1:]))
	case v[len(v)-1] == '*':
		return &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Prefix{Prefix: prefix + v[:len(v)-1]}}
	}
	return &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: prefix + v}}
}

func regexMatch(re string) *matcherv3.StringMatcher {
	return &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_SafeRegex{SafeRegex: &matcherv3.RegexMatcher{Regex: re}}}
}

// peerFilterState matches the peer's SPIFFE ID, which the waypoint takes
// from the HBONE connection's certificate.
func peerFilterState(m *matcherv3.StringMatcher) *rbacv3.Principal {
	return &rbacv3.Principal{Identifier: &rbacv3.Principal_FilterState{FilterState: &matcherv3.FilterStateMatcher{
		Key: peerPrincipalKey, Matcher: &matcherv3.FilterStateMatcher_StringMatch{StringMatch: m},
	}}}
}

// peerPrincipal: principals are written without "spiffe://"
// ("cluster.local/ns/foo/sa/bar").
func peerPrincipal(v string) (*rbacv3.Principal, error) {
	if strings.HasPrefix(v, spiffePrefix) {
		return nil, fmt.Errorf("starts with spiffe://; principals are written without it, e.g. cluster.local/ns/foo/sa/bar")
	}
	if err := checkWildcard(v); err != nil {
		return nil, err
	}
	return peerFilterState(stringMatch(v, spiffePrefix)), nil
}

// namespacePrincipal matches the namespace part of the peer's identity.
func namespacePrincipal(v string) (*rbacv3.Principal, error) {
	if err := checkWildcard(v); err != nil {
		return nil, err
	}
	if strings.Contains(v, "/") {
		return nil, fmt.Errorf("is not a namespace name")
	}
	// A namespace is one path segment of the SPIFFE ID: its wildcard
	// does not reach across "/".
	re := "[^/]+"
	if v != "*" {
		re = strings.ReplaceAll(regexp.QuoteMeta(v), `\*`, "[^/]*")
	}
	return peerFilterState(regexMatch(".*/ns/" + re + "/.*")), nil
}

// serviceAccountPrincipal reads "namespace/name", or "name" in the
// policy's namespace, matched exactly.
func serviceAccountPrincipal(v, namespace string) (*rbacv3.Principal, error) {
	if strings.Contains(v, "*") {
		return nil, fmt.Errorf("has a wildcard; service accounts are matched exactly")
	}
	ns, name, found := strings.Cut(v, "/")
	if !found {
		ns, name = namespace, v
	}
	if ns == "" || name == "" || strings.Contains(name, "/") {
		return nil, fmt.Errorf("is not namespace/name or name")
	}
	return peerFilterState(regexMatch("spiffe://[^/]+/ns/" + regexp.QuoteMeta(ns) + "/sa/" + regexp.QuoteMeta(name))), nil
}

// trustDomainPrincipal matches the trust domain of the peer's identity.
func trustDomainPrincipal(v string) (*rbacv3.Principal, error) {
	if v == "" || strings.ContainsAny(v, "*/") {
		return nil, fmt.Errorf("is not a trust domain (wildcards are not supported)")
	}
	return peerFilterState(&matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Prefix{Prefix: spiffePrefix + v + "/"}}), nil
}

// requestPrincipal matches the verified JWT's "iss/sub".
func requestPrincipal(v string) (*rbacv3.Principal, error) {
	if err := checkWildcard(v); err != nil {
		return nil, err
	}
	return authnMetadata([]string{authnPrincipal}, &matcherv3.ValueMatcher{MatchPattern: &matcherv3.ValueMatcher_StringMatch{StringMatch: stringMatch(v, "")}}), nil
}

// claimPrincipal matches a JWT claim (a list of strings, nested claims by
// path) holding the value.
func claimPrincipal(path []string) func(string) (*rbacv3.Principal, error) {
	return func(v string) (*rbacv3.Principal, error) {
		if err := checkWildcard(v); err != nil {
			return nil, err
		}
		return authnMetadata(append([]string{authnClaims}, path...), &matcherv3.ValueMatcher{MatchPattern: &matcherv3.ValueMatcher_ListMatch{ListMatch: &matcherv3.ListMatcher{
			MatchPattern: &matcherv3.ListMatcher_OneOf{OneOf: &matcherv3.ValueMatcher{MatchPattern: &matcherv3.ValueMatcher_StringMatch{StringMatch: stringMatch(v, "")}}},
		}}}), nil
	}
}

func authnMetadata(keys []string, v *matcherv3.ValueMatcher) *rbacv3.Principal {
	m := &matcherv3.MetadataMatcher{Filter: authnFilter, Value: v}
	for _, k := range keys {
		m.Path = append(m.Path, &matcherv3.MetadataMatcher_PathSegment{Segment: &matcherv3.MetadataMatcher_PathSegment_Key{Key: k}})
	}
	return &rbacv3.Principal{Identifier: &rbacv3.Principal_Metadata{Metadata: m}}
}

// cidrPrincipal matches the connection's peer address (ipBlocks,
// source.ip) or the original client's (remoteIpBlocks, remote.ip).
func cidrPrincipal(remote bool) func(string) (*rbacv3.Principal, error) {
	return func(v string) (*rbacv3.Principal, error) {
		r, err := cidrRange(v)
		if err != nil {
			return nil, err
		}
		if remote {
			return &rbacv3.Principal{Identifier: &rbacv3.Principal_RemoteIp{RemoteIp: r}}, nil
		}
		return &rbacv3.Principal{Identifier: &rbacv3.Principal_DirectRemoteIp{DirectRemoteIp: r}}, nil
	}
}

func cidrRange(v string) (*corev3.CidrRange, error) {
	var p netip.Prefix
	if strings.Contains(v, "/") {
		var err error
		if p, err = netip.ParsePrefix(v); err != nil {
			return nil, fmt.Errorf("is not an IP or CIDR")
		}
	} else {
		a, err := netip.ParseAddr(v)
		if err != nil || a.Zone() != "" {
			return nil, fmt.Errorf("is not an IP or CIDR")
		}
		p = netip.PrefixFrom(a, a.BitLen())
	}
	return &corev3.CidrRange{AddressPrefix: p.Addr().String(), PrefixLen: wrapperspb.UInt32(uint32(p.Bits()))}, nil
}

func portPermission(v string) (*rbacv3.Permission, error) {
	n, err := strconv.ParseUint(v, 10, 32)
	if err != nil || n < 1 || n > 65535 {
		return nil, fmt.Errorf("is not a port (1-65535)")
	}
	return &rbacv3.Permission{Rule: &rbacv3.Permission_DestinationPort{DestinationPort: uint32(n)}}, nil
}

// hostPermission matches the :authority, ignoring case, as istiod does.
func hostPermission(v string) (*rbacv3.Permission, error) {
	h, err := headerMatcher(":authority", v, true)
	return &rbacv3.Permission{Rule: &rbacv3.Permission_Header{Header: h}}, err
}

func methodPermission(v string) (*rbacv3.Permission, error) {
	h, err := headerMatcher(":method", v, false)
	return &rbacv3.Permission{Rule: &rbacv3.Permission_Header{Header: h}}, err
}

// headerMatcher matches a header on Istio's string form; "*" is presence.
func headerMatcher(name, v string, ignoreCase bool) (*routev3.HeaderMatcher, error) {
	if err := checkWildcard(v); err != nil {
		return nil, err
	}
	if v == "*" {
		return &routev3.HeaderMatcher{Name: name, HeaderMatchSpecifier: &routev3.HeaderMatcher_PresentMatch{PresentMatch: true}}, nil
	}
	m := stringMatch(v, "")
	m.IgnoreCase = ignoreCase
	return &routev3.HeaderMatcher{Name: name, HeaderMatchSpecifier: &routev3.HeaderMatcher_StringMatch{StringMatch: m}}, nil
}

// Path template operators: {*} one path segment, {**} any number of them
// (the last operator only). The character classes are the URI template
// matcher's: a segment's characters, and those and "/".
const (
	templateOne     = "{*}"
	templateAny     = "{**}"
	segmentChars    = `[a-zA-Z0-9\-._~%!$&'()+,;:@=]+`
	multiSegChars   = `[a-zA-Z0-9\-._~%!$&'()+,;:@=/]*`
	maxPathTemplate = 4096
)

// pathPermission matches the path without its query: Istio's string form,
// or a path template, which istiod sends as Envoy's URI template matcher
// and which is sent here as the equivalent RE2.
func pathPermission(v string) (*rbacv3.Permission, error) {
	var m *matcherv3.StringMatcher
	if strings.Contains(v, "{") || strings.Contains(v, "}") {
		re, err := pathTemplate(v)
		if err != nil {
			return nil, err
		}
		m = regexMatch(re)
	} else {
		if err := checkWildcard(v); err != nil {
			return nil, err
		}
		m = stringMatch(v, "")
	}
	return &rbacv3.Permission{Rule: &rbacv3.Permission_UrlPath{UrlPath: &matcherv3.PathMatcher{Rule: &matcherv3.PathMatcher_Path{Path: m}}}}, nil
}

// pathTemplate validates a path template as Istio does (operators are
// whole segments, {**} at most once and last, no other "*") and returns
// its regex.
func pathTemplate(v string) (string, error) {
	if len(v) > maxPathTemplate || !strings.HasPrefix(v, "/") {
		return "", fmt.Errorf("is not a path template (it must start with /)")
	}
	segs := strings.Split(v[1:], "/")
	var b strings.Builder
	for i, s := range segs {
		b.WriteString("/")
		switch {
		case s == templateOne:
			b.WriteString(segmentChars)
		case s == templateAny:
			if i != len(segs)-1 {
				return "", fmt.Errorf("has {**} before its last segment")
			}
			b.WriteString(multiSegChars)
		case strings.ContainsAny(s, "{}*"):
			return "", fmt.Errorf("has %q: {*} and {**} must be whole path segments, without other wildcards", s)
		default:
			b.WriteString(regexp.QuoteMeta(s))
		}
	}
	return b.String(), nil
}

// bracketNames reads "[a]" or "[a][b]".
func bracketNames(s string) ([]string, error) {
	var out []string
	for s != "" {
		if s[0] != '[' {
			return nil, fmt.Errorf("is not of the form [name] or [name][name]")
		}
		end := strings.IndexByte(s, ']')
		if end <= 1 || strings.ContainsAny(s[1:end], "[") {
			return nil, fmt.Errorf("is not of the form [name] or [name][name]")
		}
		out = append(out, s[1:end])
		s = s[end+1:]
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("names nothing")
	}
	return out, nil
}

// validHeaderName: an HTTP token, which the waypoint can match.
func validHeaderName(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0) {
			return false
		}
	}
	return true
}
