package authz

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/zmesh/zmesh/api/workload/security"
)

// Policy is a validated, compiled Authorization. Compile builds it; it is
// immutable afterwards and safe to share between goroutines.
type Policy struct {
	Name      string
	Namespace string
	// Scope is for the caller, which selects the policies that apply to a
	// workload; Evaluate does not look at it.
	Scope  security.Scope
	Action security.Action
	// DryRun policies are evaluated and reported in Decision.DryRun but never
	// change the decision.
	DryRun bool

	raw *security.Authorization
	// rejected is why a refused policy's stand-in (see Rejected) stands in.
	rejected string
	// rules matches if any rule matches; no rules matches nothing, so an ALLOW
	// policy without rules allows nothing (Istio's ALLOW `spec: {}`).
	rules []rule
}

// A rule matches if every clause matches; a rule without clauses matches
// every connection.
type rule []clause

// A clause matches if any of its matches matches; a clause without matches
// matches every connection.
type clause []match

// match is a compiled security.Match. Every non-empty positive list needs a
// hit and every non-empty not_ list must have none. A match with every list
// empty matches nothing (see match.matches).
type match struct {
	namespaces, notNamespaces             []stringMatch
	serviceAccounts, notServiceAccounts   []serviceAccount
	principals, notPrincipals             []stringMatch
	sourceIPs, notSourceIPs               []netip.Prefix
	destinationIPs, notDestinationIPs     []netip.Prefix
	destinationPorts, notDestinationPorts []uint16
}

type matchKind uint8

const (
	exact matchKind = iota + 1
	prefix
	suffix
	presence
)

type stringMatch struct {
	kind  matchKind
	value string
}

// serviceAccount matches a workload identity's namespace and service account,
// whatever its trust domain.
type serviceAccount struct {
	namespace, name string
}

// Raw returns the wire form the policy was compiled from (for config dumps).
func (p *Policy) Raw() *security.Authorization { return p.raw }

// Key returns "namespace/name", the policy's xDS resource name and the name
// workloads use to reference it.
func (p *Policy) Key() string {
	if p.Namespace == "" {
		return p.Name // a stand-in for a policy whose name could not be read
	}
	return p.Namespace + "/" + p.Name
}

// Compile validates a wire policy and compiles it for Evaluate. Errors name the
// offending field by its path, e.g.
// "rules[0].clauses[1].matches[0].source_ips[2]: 5 address bytes, want 4 or 16".
//
// Compile rejects only what cannot be interpreted (bad addresses and ports,
// string matches without a type, unknown enum values, missing names); odd but
// well-formed values such as an empty exact string are kept and evaluated as
// ztunnel would. A policy that fails is never partly applied; whether to keep
// its previous version or to fail closed is the caller's decision.
func Compile(a *security.Authorization) (*Policy, error) {
	if a == nil {
		return nil, errors.New("nil authorization")
	}
	if a.GetName() == "" {
		return nil, errors.New("name: empty")
	}
	if a.GetNamespace() == "" {
		return nil, errors.New("namespace: empty")
	}
	if _, ok := security.Scope_name[int32(a.GetScope())]; !ok {
		return nil, fmt.Errorf("scope: unknown value %d", a.GetScope())
	}
	if _, ok := security.Action_name[int32(a.GetAction())]; !ok {
		return nil, fmt.Errorf("action: unknown value %d", a.GetAction())
	}
	p := &Policy{
		Name:      a.GetName(),
		Namespace: a.GetNamespace(),
		Scope:     a.GetScope(),
		Action:    a.GetAction(),
		DryRun:    a.GetDryRun(),
		raw:       a,
		rules:     make([]rule, 0, len(a.GetRules())),
	}
	for i, r := range a.GetRules() {
		cr, err := compileRule(fmt.Sprintf("rules[%d]", i), r)
		if err != nil {
			return nil, err
		}
		p.rules = append(p.rules, cr)
	}
	return p, nil
}

// Every compile function takes the path of what it compiles ("rules[0]",
// "rules[0].clauses[1].matches[0]") and puts it in front of its errors.
//
// Nil elements cannot come out of proto.Unmarshal, but a policy built in Go
// could hold them; read through the getters, a nil rule would be an empty rule
// and so match everything, which is why they are refused rather than skipped.
func compileRule(at string, r *security.Rule) (rule, error) {
	if r == nil {
		return nil, fmt.Errorf("%s: nil rule", at)
	}
	out := make(rule, 0, len(r.GetClauses()))
	for i, c := range r.GetClauses() {
		if c == nil {
			return nil, fmt.Errorf("%s.clauses[%d]: nil clause", at, i)
		}
		cc := make(clause, 0, len(c.GetMatches()))
		for j, m := range c.GetMatches() {
			cm, err := compileMatch(fmt.Sprintf("%s.clauses[%d].matches[%d]", at, i, j), m)
			if err != nil {
				return nil, err
			}
			cc = append(cc, cm)
		}
		out = append(out, cc)
	}
	return out, nil
}

func compileMatch(at string, m *security.Match) (match, error) {
	if m == nil {
		return match{}, fmt.Errorf("%s: nil match", at)
	}
	var (
		out match
		err error
	)
	strs := []struct {
		name string
		in   []*security.StringMatch
		out  *[]stringMatch
	}{
		{"namespaces", m.GetNamespaces(), &out.namespaces},
		{"not_namespaces", m.GetNotNamespaces(), &out.notNamespaces},
		{"principals", m.GetPrincipals(), &out.principals},
		{"not_principals", m.GetNotPrincipals(), &out.notPrincipals},
	}
	for _, f := range strs {
		if *f.out, err = compileStringMatches(at+"."+f.name, f.in); err != nil {
			return match{}, err
		}
	}
	sas := []struct {
		name string
		in   []*security.ServiceAccountMatch
		out  *[]serviceAccount
	}{
		{"service_accounts", m.GetServiceAccounts(), &out.serviceAccounts},
		{"not_service_accounts", m.GetNotServiceAccounts(), &out.notServiceAccounts},
	}
	for _, f := range sas {
		if *f.out, err = compileServiceAccounts(at+"."+f.name, f.in); err != nil {
			return match{}, err
		}
	}
	ips := []struct {
		name string
		in   []*security.Address
		out  *[]netip.Prefix
	}{
		{"source_ips", m.GetSourceIps(), &out.sourceIPs},
		{"not_source_ips", m.GetNotSourceIps(), &out.notSourceIPs},
		{"destination_ips", m.GetDestinationIps(), &out.destinationIPs},
		{"not_destination_ips", m.GetNotDestinationIps(), &out.notDestinationIPs},
	}
	for _, f := range ips {
		if *f.out, err = compilePrefixes(at+"."+f.name, f.in); err != nil {
			return match{}, err
		}
	}
	if out.destinationPorts, err = compilePorts(at+".destination_ports", m.GetDestinationPorts()); err != nil {
		return match{}, err
	}
	if out.notDestinationPorts, err = compilePorts(at+".not_destination_ports", m.GetNotDestinationPorts()); err != nil {
		return match{}, err
	}
	return out, nil
}

func compileStringMatches(at string, in []*security.StringMatch) ([]stringMatch, error) {
	if len(in) == 0 {
		return nil, nil
	}
	out := make([]stringMatch, 0, len(in))
	for i, sm := range in {
		if sm == nil {
			return nil, fmt.Errorf("%s[%d]: nil string match", at, i)
		}
		switch t := sm.GetMatchType().(type) {
		case *security.StringMatch_Exact:
			out = append(out, stringMatch{kind: exact, value: t.Exact})
		case *security.StringMatch_Prefix:
			out = append(out, stringMatch{kind: prefix, value: t.Prefix})
		case *security.StringMatch_Suffix:
			out = append(out, stringMatch{kind: suffix, value: t.Suffix})
		case *security.StringMatch_Presence:
			out = append(out, stringMatch{kind: presence})
		case nil:
			// ztunnel drops such an entry, which would silently widen a
			// not_ list or narrow a positive one; refuse it instead.
			return nil, fmt.Errorf("%s[%d]: no match type", at, i)
		default:
			return nil, fmt.Errorf("%s[%d]: unknown match type %T", at, i, t)
		}
	}
	return out, nil
}

func compileServiceAccounts(at string, in []*security.ServiceAccountMatch) ([]serviceAccount, error) {
	if len(in) == 0 {
		return nil, nil
	}
	out := make([]serviceAccount, 0, len(in))
	for i, sa := range in {
		if sa == nil {
			return nil, fmt.Errorf("%s[%d]: nil service account match", at, i)
		}
		out = append(out, serviceAccount{namespace: sa.GetNamespace(), name: sa.GetServiceAccount()})
	}
	return out, nil
}

func compilePrefixes(at string, in []*security.Address) ([]netip.Prefix, error) {
	if len(in) == 0 {
		return nil, nil
	}
	out := make([]netip.Prefix, 0, len(in))
	for i, a := range in {
		if a == nil {
			return nil, fmt.Errorf("%s[%d]: nil address", at, i)
		}
		addr, ok := netip.AddrFromSlice(a.GetAddress())
		if !ok {
			return nil, fmt.Errorf("%s[%d]: %d address bytes, want 4 or 16", at, i, len(a.GetAddress()))
		}
		if a.GetLength() > uint32(addr.BitLen()) {
			return nil, fmt.Errorf("%s[%d]: prefix length %d, want at most %d", at, i, a.GetLength(), addr.BitLen())
		}
		out = append(out, canonicalPrefix(netip.PrefixFrom(addr, int(a.GetLength()))))
	}
	return out, nil
}

// canonicalPrefix masks host bits and turns a prefix inside ::ffff:0:0/96
// into its IPv4 form, so that it contains the IPv4 addresses Evaluate compares
// it with (Evaluate unmaps connection addresses too). A wider IPv6 prefix such
// as ::/0 stays IPv6 and contains no IPv4 address, as in ztunnel.
func canonicalPrefix(p netip.Prefix) netip.Prefix {
	if a := p.Addr(); a.Is4In6() && p.Bits() >= 96 {
		p = netip.PrefixFrom(a.Unmap(), p.Bits()-96)
	}
	return p.Masked()
}

func compilePorts(at string, in []uint32) ([]uint16, error) {
	if len(in) == 0 {
		return nil, nil
	}
	out := make([]uint16, 0, len(in))
	for i, port := range in {
		if port == 0 || port > 65535 {
			return nil, fmt.Errorf("%s[%d]: port %d, want 1 to 65535", at, i, port)
		}
		out = append(out, uint16(port))
	}
	return out, nil
}
