package translate

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	"google.golang.org/protobuf/types/known/emptypb"
	securityapi "istio.io/api/security/v1beta1"

	"github.com/zmesh/zmesh/api/workload/security"
)

// ruleTranslator translates one AuthorizationPolicy rule for ztunnel and
// fails closed on what ztunnel cannot enforce or cannot read:
//
//   - ALLOW: a rule with an HTTP (L7) attribute, an unsupported attribute or
//     an invalid value is left out: it matches nothing, so the policy never
//     allows more than written.
//   - DENY: such an attribute or value is ignored as if it matched every
//     connection: a positive list with an invalid value is dropped as a
//     whole, an invalid entry of a not-list is dropped alone, and a from/to
//     entry or when condition left with nothing matches everything. So the
//     rule denies at least what was written (its whole L4 match).
type ruleTranslator struct {
	deny      bool
	namespace string // of the policy, for serviceAccounts without one
	index     int    // of the rule in spec.rules

	// drop: ALLOW only, the rule is left out.
	drop bool
	// http and unsupported are field paths ztunnel cannot enforce; invalid
	// holds one message per bad value.
	http, unsupported, invalid []string
}

// path names a field of a rule; it is only formatted for messages.
type path struct {
	rule  int
	kind  string // from, to or when
	entry int
	field string
}

func (p path) with(field string) path {
	p.field = field
	return p
}

func (p path) String() string {
	s := fmt.Sprintf("spec.rules[%d].%s[%d]", p.rule, p.kind, p.entry)
	switch p.kind {
	case "from":
		s += ".source"
	case "to":
		s += ".operation"
	}
	if p.field != "" {
		s += "." + p.field
	}
	return s
}

// entry is a translated from/to entry or when condition.
type entry int

const (
	// entryMatch: the Match holds it.
	entryMatch entry = iota
	// entryAny: DENY only, nothing is left of it: it matches everything.
	entryAny
	// entryNever: it matches no connection (e.g. disjoint ipBlocks and
	// remoteIpBlocks).
	entryNever
)

// rule returns the Rule, or nil when the rule is left out.
func (rt *ruleTranslator) rule(r *securityapi.Rule) *security.Rule {
	if r == nil {
		return &security.Rule{}
	}
	out := &security.Rule{}
	never := false
	addClause := func(results []entry, matches []*security.Match, n int) {
		if n == 0 {
			return
		}
		for _, e := range results {
			if e == entryAny {
				return // one entry matching everything: the clause does
			}
		}
		if len(matches) == 0 {
			never = true
			return
		}
		out.Clauses = append(out.Clauses, &security.Clause{Matches: matches})
	}

	var results []entry
	var matches []*security.Match
	for j, from := range r.From {
		e, m := rt.source(path{rule: rt.index, kind: "from", entry: j}, from.GetSource())
		results = append(results, e)
		if e == entryMatch {
			matches = append(matches, m)
		}
	}
	addClause(results, matches, len(r.From))

	results, matches = nil, nil
	for j, to := range r.To {
		e, m := rt.operation(path{rule: rt.index, kind: "to", entry: j}, to.GetOperation())
		results = append(results, e)
		if e == entryMatch {
			matches = append(matches, m)
		}
	}
	addClause(results, matches, len(r.To))

	for j, c := range r.When {
		e, m := rt.condition(path{rule: rt.index, kind: "when", entry: j}, c)
		var ms []*security.Match
		if e == entryMatch {
			ms = []*security.Match{m}
		}
		addClause([]entry{e}, ms, 1)
	}
	if rt.drop || never {
		return nil
	}
	return out
}

// report turns what the rule translation found into condition findings.
func (rt *ruleTranslator) report() []finding {
	var out []finding
	if len(rt.invalid) > 0 {
		consequence := "the rule is left out, so the policy allows less than written"
		if rt.deny {
			consequence = "the values are ignored, so the rule denies more than written"
		}
		out = append(out, finding{true, ReasonInvalidValue, strings.Join(rt.invalid, "; ") + " (" + consequence + ")"})
	}
	if len(rt.http) > 0 {
		consequence := "the rule is left out of this ALLOW policy, so it allows less than written"
		if rt.deny {
			consequence = "they are ignored, so this DENY rule denies its whole L4 match"
		}
		out = append(out, finding{true, ReasonUnsupportedValue, fmt.Sprintf(
			"%s: ztunnel enforces L4 only and a waypoint is needed to enforce HTTP attributes; %s",
			strings.Join(rt.http, ", "), consequence)})
	}
	if len(rt.unsupported) > 0 {
		consequence := "the rule is left out of this ALLOW policy, so it allows less than written"
		if rt.deny {
			consequence = "they are ignored, so this DENY rule denies more than written"
		}
		out = append(out, finding{true, ReasonUnsupportedValue, fmt.Sprintf(
			"%s: not supported by ztunnel; %s", strings.Join(rt.unsupported, ", "), consequence)})
	}
	return out
}

// unenforceable records fields ztunnel cannot enforce; in ALLOW the rule
// is left out, in DENY the caller ignores them.
func (rt *ruleTranslator) unenforceable(list *[]string, path string) {
	*list = append(*list, path)
	if !rt.deny {
		rt.drop = true
	}
}

func (rt *ruleTranslator) source(at path, s *securityapi.Source) (entry, *security.Match) {
	m := &security.Match{}
	if s == nil {
		return rt.emptyEntry(at)
	}
	removed := false
	for _, f := range []struct {
		name   string
		values []string
	}{
		{"requestPrincipals", s.RequestPrincipals}, {"notRequestPrincipals", s.NotRequestPrincipals},
	} {
		if len(f.values) > 0 {
			rt.unenforceable(&rt.http, at.with(f.name).String())
			removed = true
		}
	}
	for _, f := range []struct {
		name   string
		values []string
	}{
		{"trustDomains", s.TrustDomains}, {"notTrustDomains", s.NotTrustDomains},
	} {
		if len(f.values) > 0 {
			rt.unenforceable(&rt.unsupported, at.with(f.name).String())
			removed = true
		}
	}
	var r bool
	m.Principals, r = convert(rt, at.with("principals"), s.Principals, false, parsePrincipal)
	removed = removed || r
	m.NotPrincipals, r = convert(rt, at.with("notPrincipals"), s.NotPrincipals, true, parsePrincipal)
	removed = removed || r
	m.Namespaces, r = convert(rt, at.with("namespaces"), s.Namespaces, false, parseStringMatch)
	removed = removed || r
	m.NotNamespaces, r = convert(rt, at.with("notNamespaces"), s.NotNamespaces, true, parseStringMatch)
	removed = removed || r
	parseSA := func(v string) (*security.ServiceAccountMatch, error) { return parseServiceAccount(v, rt.namespace) }
	m.ServiceAccounts, r = convert(rt, at.with("serviceAccounts"), s.ServiceAccounts, false, parseSA)
	removed = removed || r
	m.NotServiceAccounts, r = convert(rt, at.with("notServiceAccounts"), s.NotServiceAccounts, true, parseSA)
	removed = removed || r

	// ztunnel sees the client's own address: remote and peer IP are the
	// same, so both lists must match it.
	ips, r := convert(rt, at.with("ipBlocks"), s.IpBlocks, false, parseCIDR)
	removed = removed || r
	remote, r := convert(rt, at.with("remoteIpBlocks"), s.RemoteIpBlocks, false, parseCIDR)
	removed = removed || r
	switch {
	case len(ips) > 0 && len(remote) > 0:
		if m.SourceIps = intersect(ips, remote); len(m.SourceIps) == 0 {
			return entryNever, nil
		}
	case len(ips) > 0:
		m.SourceIps = ips
	default:
		m.SourceIps = remote
	}
	notIPs, r := convert(rt, at.with("notIpBlocks"), s.NotIpBlocks, true, parseCIDR)
	removed = removed || r
	notRemote, r := convert(rt, at.with("notRemoteIpBlocks"), s.NotRemoteIpBlocks, true, parseCIDR)
	removed = removed || r
	m.NotSourceIps = append(notIPs, notRemote...)
	return rt.finish(at, m, removed)
}

func (rt *ruleTranslator) operation(at path, op *securityapi.Operation) (entry, *security.Match) {
	if op == nil {
		return rt.emptyEntry(at)
	}
	removed := false
	for _, f := range []struct {
		name   string
		values []string
	}{
		{"hosts", op.Hosts}, {"notHosts", op.NotHosts}, {"methods", op.Methods},
		{"notMethods", op.NotMethods}, {"paths", op.Paths}, {"notPaths", op.NotPaths},
	} {
		if len(f.values) > 0 {
			rt.unenforceable(&rt.http, at.with(f.name).String())
			removed = true
		}
	}
	m := &security.Match{}
	var r bool
	m.DestinationPorts, r = convert(rt, at.with("ports"), op.Ports, false, parsePort)
	removed = removed || r
	m.NotDestinationPorts, r = convert(rt, at.with("notPorts"), op.NotPorts, true, parsePort)
	removed = removed || r
	return rt.finish(at, m, removed)
}

// condition translates one `when` condition; only the L4 keys reach
// ztunnel (remote.ip is the source IP there).
func (rt *ruleTranslator) condition(at path, c *securityapi.Condition) (entry, *security.Match) {
	if c == nil || (len(c.Values) == 0 && len(c.NotValues) == 0) {
		return rt.emptyEntry(at)
	}
	m := &security.Match{}
	var r1, r2 bool
	switch c.Key {
	case "source.ip", "remote.ip":
		m.SourceIps, r1 = convert(rt, at.with("values"), c.Values, false, parseCIDR)
		m.NotSourceIps, r2 = convert(rt, at.with("notValues"), c.NotValues, true, parseCIDR)
	case "destination.ip":
		m.DestinationIps, r1 = convert(rt, at.with("values"), c.Values, false, parseCIDR)
		m.NotDestinationIps, r2 = convert(rt, at.with("notValues"), c.NotValues, true, parseCIDR)
	case "destination.port":
		m.DestinationPorts, r1 = convert(rt, at.with("values"), c.Values, false, parsePort)
		m.NotDestinationPorts, r2 = convert(rt, at.with("notValues"), c.NotValues, true, parsePort)
	case "source.namespace":
		m.Namespaces, r1 = convert(rt, at.with("values"), c.Values, false, parseStringMatch)
		m.NotNamespaces, r2 = convert(rt, at.with("notValues"), c.NotValues, true, parseStringMatch)
	case "source.principal":
		m.Principals, r1 = convert(rt, at.with("values"), c.Values, false, parsePrincipal)
		m.NotPrincipals, r2 = convert(rt, at.with("notValues"), c.NotValues, true, parsePrincipal)
	default:
		path := fmt.Sprintf("%s (key %q)", at.String(), c.Key)
		if strings.HasPrefix(c.Key, "request.") || strings.HasPrefix(c.Key, "experimental.envoy.") {
			rt.unenforceable(&rt.http, path)
		} else {
			rt.unenforceable(&rt.unsupported, path)
		}
		return entryAny, nil
	}
	return rt.finish(at, m, r1 || r2)
}

// emptyEntry handles an entry with nothing in it, which Istio rejects.
func (rt *ruleTranslator) emptyEntry(at path) (entry, *security.Match) {
	rt.invalid = append(rt.invalid, at.String()+": empty")
	if !rt.deny {
		rt.drop = true
	}
	return entryAny, nil
}

// finish classifies a translated entry.
func (rt *ruleTranslator) finish(at path, m *security.Match, removed bool) (entry, *security.Match) {
	if !matchEmpty(m) {
		return entryMatch, m
	}
	if removed {
		return entryAny, nil // DENY: what was removed matched everything
	}
	return rt.emptyEntry(at)
}

func matchEmpty(m *security.Match) bool {
	return len(m.Namespaces) == 0 && len(m.NotNamespaces) == 0 &&
		len(m.ServiceAccounts) == 0 && len(m.NotServiceAccounts) == 0 &&
		len(m.Principals) == 0 && len(m.NotPrincipals) == 0 &&
		len(m.SourceIps) == 0 && len(m.NotSourceIps) == 0 &&
		len(m.DestinationIps) == 0 && len(m.NotDestinationIps) == 0 &&
		len(m.DestinationPorts) == 0 && len(m.NotDestinationPorts) == 0
}

// convert parses one list of values. On an invalid value, ALLOW drops the
// rule; DENY drops the whole list if positive (the list then matches
// everything) or the value alone if negative. removed reports that
// something was dropped.
func convert[T any](rt *ruleTranslator, at path, values []string, negative bool, parse func(string) (T, error)) (out []T, removed bool) {
	if len(values) == 0 {
		return nil, false
	}
	out = make([]T, 0, len(values))
	bad := false
	for i, v := range values {
		x, err := parse(v)
		if err != nil {
			rt.invalid = append(rt.invalid, fmt.Sprintf("%s[%d]: %q %v", at.String(), i, v, err))
			bad = true
			continue
		}
		out = append(out, x)
	}
	if !bad {
		return out, false
	}
	if !rt.deny {
		rt.drop = true
	}
	if !negative {
		return nil, true
	}
	return out, true
}

// parseStringMatch reads Istio's string forms: "*" any non-empty value,
// "*x" a suffix, "x*" a prefix, anything else exactly.
func parseStringMatch(v string) (*security.StringMatch, error) {
	switch n := strings.Count(v, "*"); {
	case v == "":
		return nil, fmt.Errorf("is empty")
	case v == "*":
		return &security.StringMatch{MatchType: &security.StringMatch_Presence{Presence: &emptypb.Empty{}}}, nil
	case n == 0:
		return &security.StringMatch{MatchType: &security.StringMatch_Exact{Exact: v}}, nil
	case n == 1 && v[0] == '*':
		return &security.StringMatch{MatchType: &security.StringMatch_Suffix{Suffix: v[1:]}}, nil
	case n == 1 && v[len(v)-1] == '*':
		return &security.StringMatch{MatchType: &security.StringMatch_Prefix{Prefix: v[:len(v)-1]}}, nil
	default:
		return nil, fmt.Errorf("has a wildcard elsewhere than at its start or end")
	}
}

// parsePrincipal is parseStringMatch for principals, which are written
// without "spiffe://" ("cluster.local/ns/foo/sa/bar").
func parsePrincipal(v string) (*security.StringMatch, error) {
	if strings.HasPrefix(v, "spiffe://") {
		return nil, fmt.Errorf("starts with spiffe://; principals are written without it, e.g. cluster.local/ns/foo/sa/bar")
	}
	return parseStringMatch(v)
}

// parseServiceAccount reads "namespace/name", or "name" in the policy's
// namespace; no wildcards.
func parseServiceAccount(v, namespace string) (*security.ServiceAccountMatch, error) {
	if strings.Contains(v, "*") {
		return nil, fmt.Errorf("has a wildcard; service accounts are matched exactly")
	}
	ns, name, found := strings.Cut(v, "/")
	if !found {
		ns, name = namespace, v
	}
	if ns == "" || name == "" || strings.Contains(name, "/") {
		return nil, fmt.Errorf("is not namespace/serviceaccount or serviceaccount")
	}
	return &security.ServiceAccountMatch{Namespace: ns, ServiceAccount: name}, nil
}

// parseCIDR reads an IP or a CIDR.
func parseCIDR(v string) (*security.Address, error) {
	if strings.Contains(v, "/") {
		p, err := netip.ParsePrefix(v)
		if err != nil {
			return nil, fmt.Errorf("is not an IP or CIDR")
		}
		return &security.Address{Address: p.Addr().AsSlice(), Length: uint32(p.Bits())}, nil
	}
	a, err := netip.ParseAddr(v)
	if err != nil || a.Zone() != "" {
		return nil, fmt.Errorf("is not an IP or CIDR")
	}
	return &security.Address{Address: a.AsSlice(), Length: uint32(a.BitLen())}, nil
}

func parsePort(v string) (uint32, error) {
	n, err := strconv.ParseUint(v, 10, 32)
	if err != nil || n < 1 || n > 65535 {
		return 0, fmt.Errorf("is not a port (1-65535)")
	}
	return uint32(n), nil
}

// intersect returns the CIDRs in both lists: of two overlapping prefixes,
// the narrower is their intersection.
func intersect(a, b []*security.Address) []*security.Address {
	var out []*security.Address
	for _, x := range a {
		px := toPrefix(x)
		for _, y := range b {
			py := toPrefix(y)
			if !px.Overlaps(py) {
				continue
			}
			if px.Bits() >= py.Bits() {
				out = append(out, x)
			} else {
				out = append(out, y)
			}
		}
	}
	return out
}

// toPrefix reads an Address parseCIDR made, in authz's canonical form (an
// IPv4-mapped prefix as IPv4).
func toPrefix(a *security.Address) netip.Prefix {
	addr, _ := netip.AddrFromSlice(a.Address)
	bits := int(a.Length)
	if addr.Is4In6() && bits >= 96 {
		addr, bits = addr.Unmap(), bits-96
	}
	return netip.PrefixFrom(addr, bits).Masked()
}
