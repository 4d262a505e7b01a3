// Package rbac is the waypoint's role-based access control filter: Envoy's
// envoy.filters.http.rbac compiled (by waypoint/config.CompileRBAC) into a
// Set of typed policies, and Evaluate, the pure decision for one request.
//
// Istio puts two of these filters in a waypoint's chain, the DENY policies'
// filter before the ALLOW policies' filter; AUDIT policies become a LOG
// filter, and dry-run policies become shadow rules. Evaluate decides one
// filter; the proxy runs the filters in order and stops at the first denial.
package rbac

import (
	"net/netip"
	"sort"
	"strings"

	"github.com/zmesh/zmesh/waypoint/route"
)

// What the proxy answers when Evaluate denies a request, as Envoy does.
const (
	FilterName     = "envoy.filters.http.rbac"
	DeniedStatus   = 403
	DeniedBody     = "RBAC: access denied"
	DeniedFlag     = "RBAC" // the access log's response flag
	ShadowDenied   = "denied"
	ShadowAllowed  = "allowed"
	metadataFilter = "istio_authn"
)

// Action is Envoy's config.rbac.v3.RBAC.Action.
type Action uint8

const (
	ActionAllow Action = iota // allowed only if some policy matches
	ActionDeny                // denied if some policy matches
	ActionLog                 // always allowed; a match asks for the request to be logged
)

func (a Action) String() string {
	switch a {
	case ActionAllow:
		return "ALLOW"
	case ActionDeny:
		return "DENY"
	case ActionLog:
		return "LOG"
	}
	return "?"
}

// Set is one compiled RBAC filter. It is never modified after compilation.
type Set struct {
	// Rules are enforced; nil means the filter enforces nothing (Envoy's
	// filter without rules allows every request).
	Rules *Engine
	// Shadow rules are evaluated and reported but never enforced.
	Shadow *Engine

	RulesStatPrefix, ShadowRulesStatPrefix string
}

// Engine is one config.rbac.v3.RBAC: an action and its policies, sorted by
// name (Envoy keeps them in a sorted map, so the first matching policy in
// name order is the one that decides).
type Engine struct {
	Action   Action
	Policies []Policy
}

// Policy matches when any of its permissions and any of its principals
// match. A policy with no permissions or no principals never matches.
type Policy struct {
	Name        string
	Permissions []Matcher
	Principals  []Matcher
}

// Kind says which rule a Matcher is. Permissions and principals share one
// type: both are trees of and/or/not over the same request attributes.
type Kind uint8

const (
	KindAny                  Kind = iota
	KindAnd                       // all of Children (Envoy: and_rules, and_ids)
	KindOr                        // any of Children (or_rules, or_ids)
	KindNot                       // not Children[0] (not_rule, not_id)
	KindHeader                    // Header
	KindURLPath                   // String on the path without query and fragment
	KindDestinationIP             // CIDR
	KindDestinationPort           // Port
	KindDestinationPortRange      // [PortStart, PortEnd)
	KindAuthenticated             // String on the peer's SPIFFE ID; nil String: any authenticated peer
	KindDirectRemoteIP            // CIDR on the connection's peer address (also source_ip)
	KindRemoteIP                  // CIDR on the original client address
	KindRequestPrincipal          // Value on the JWT principal ("iss/sub")
	KindRequestClaim              // Value on the JWT claim at ClaimPath
)

// Matcher is one node of a permission or principal.
type Matcher struct {
	Kind     Kind
	Children []Matcher
	Header   *route.HeaderMatcher
	String   *route.StringMatcher
	CIDR     netip.Prefix
	Port     uint16
	// PortStart and PortEnd bound destination_port_range: [start, end).
	PortStart, PortEnd int32
	// ClaimPath is the claim's path inside the JWT payload (nested objects).
	ClaimPath []string
	Value     *ValueMatcher
	// Invert is a metadata matcher's invert.
	Invert bool
}

// ValueMatcher is the part of Envoy's type.matcher.v3.ValueMatcher that
// Istio emits for request principals and claims.
type ValueMatcher struct {
	// String matches a single string value; OneOf (list_match.one_of)
	// matches a list holding an element that OneOf matches; Present
	// (present_match) matches any value that exists.
	String  *route.StringMatcher
	OneOf   *ValueMatcher
	Present bool
}

// Request holds the attributes a policy can look at.
type Request struct {
	HTTP route.Request // method, authority, path with query, headers
	// Principal is the peer's SPIFFE ID as the mTLS handshake proved it
	// (spiffe://td/ns/NS/sa/SA); empty means no authenticated peer.
	Principal string
	// DirectRemoteIP is the connection's peer address; RemoteIP the
	// original client's (equal to it unless the client is proxied and
	// trusted to say so).
	DirectRemoteIP, RemoteIP netip.Addr
	DestinationIP            netip.Addr
	DestinationPort          uint16
	// RequestPrincipal is the verified JWT's "iss/sub"; empty means no JWT.
	RequestPrincipal string
	// Claims are the verified JWT's claims, each as a list of strings (a
	// string claim is a list of one), as Istio's authentication filter
	// writes them into the request.auth.claims metadata.
	Claims []Claim
}

// Claim is one JWT claim: its path (["groups"], or ["a", "b"] for a
// nested claim) and values.
type Claim struct {
	Path   []string
	Values []string
}

// Decision is the outcome of one filter.
type Decision struct {
	Allowed bool
	// Policy is the deciding policy: the matching policy that allowed (ALLOW)
	// or denied (DENY) the request, or that asked for logging (LOG); empty
	// when no policy matched (an ALLOW filter's denial, a DENY filter's
	// allowance) or the filter has no rules.
	Policy string
	// Log is set when a LOG policy matched.
	Log bool
	// Shadow is the shadow rules' outcome ("" without shadow rules,
	// ShadowAllowed or ShadowDenied) and ShadowPolicy their deciding policy.
	Shadow       string
	ShadowPolicy string
}

// Evaluate decides one request against one filter. It does no I/O and
// allocates nothing.
func Evaluate(s *Set, req *Request) Decision {
	d := Decision{Allowed: true}
	if s == nil {
		return d
	}
	if s.Rules != nil {
		allowed, policy := s.Rules.evaluate(req)
		d.Allowed, d.Policy = allowed, policy
		if s.Rules.Action == ActionLog && policy != "" { // policy names are never empty
			d.Log = true
		}
	}
	if s.Shadow != nil {
		allowed, policy := s.Shadow.evaluate(req)
		d.Shadow, d.ShadowPolicy = ShadowDenied, policy
		if allowed {
			d.Shadow = ShadowAllowed
		}
	}
	return d
}

func (e *Engine) evaluate(req *Request) (allowed bool, policy string) {
	matched := false
	for i := range e.Policies {
		if e.Policies[i].matches(req) {
			matched, policy = true, e.Policies[i].Name
			break
		}
	}
	switch e.Action {
	case ActionAllow:
		return matched, policy
	case ActionDeny:
		return !matched, policy
	}
	return true, policy
}

// SortPolicies orders policies by name, as Evaluate expects.
func SortPolicies(ps []Policy) {
	sort.Slice(ps, func(i, j int) bool { return ps[i].Name < ps[j].Name })
}

func (p *Policy) matches(req *Request) bool {
	return anyMatches(p.Permissions, req) && anyMatches(p.Principals, req)
}

func anyMatches(ms []Matcher, req *Request) bool {
	for i := range ms {
		if ms[i].Match(req) {
			return true
		}
	}
	return false
}

// Match reports whether the request has the attribute m describes.
func (m *Matcher) Match(req *Request) bool {
	switch m.Kind {
	case KindAny:
		return true
	case KindAnd:
		for i := range m.Children {
			if !m.Children[i].Match(req) {
				return false
			}
		}
		return true
	case KindOr:
		return anyMatches(m.Children, req)
	case KindNot:
		return !m.Children[0].Match(req)
	case KindHeader:
		return m.Header.Match(&req.HTTP)
	case KindURLPath:
		return m.String.Match(pathOnly(req.HTTP.Path))
	case KindDestinationIP:
		return contains(m.CIDR, req.DestinationIP)
	case KindDestinationPort:
		return req.DestinationPort == m.Port
	case KindDestinationPortRange:
		p := int32(req.DestinationPort)
		return p >= m.PortStart && p < m.PortEnd
	case KindAuthenticated:
		if req.Principal == "" {
			return false
		}
		return m.String == nil || m.String.Match(req.Principal)
	case KindDirectRemoteIP:
		return contains(m.CIDR, req.DirectRemoteIP)
	case KindRemoteIP:
		return contains(m.CIDR, req.RemoteIP)
	case KindRequestPrincipal:
		ok := req.RequestPrincipal != "" && m.Value.matchString(req.RequestPrincipal)
		return ok != m.Invert
	case KindRequestClaim:
		ok := false
		if vs, found := req.claim(m.ClaimPath); found {
			ok = m.Value.matchList(vs)
		}
		return ok != m.Invert
	}
	return false
}

// matchString applies a value matcher to a string value.
func (v *ValueMatcher) matchString(s string) bool {
	switch {
	case v.String != nil:
		return v.String.Match(s)
	case v.OneOf != nil:
		return false // a string is not a list
	}
	return v.Present
}

// matchList applies a value matcher to a list value: only list_match and
// present_match can match a list, as in Envoy.
func (v *ValueMatcher) matchList(vs []string) bool {
	switch {
	case v.OneOf != nil:
		for _, s := range vs {
			if v.OneOf.matchString(s) {
				return true
			}
		}
		return false
	case v.String != nil:
		return false
	}
	return v.Present
}

func (r *Request) claim(path []string) ([]string, bool) {
	for i := range r.Claims {
		if equalPath(r.Claims[i].Path, path) {
			return r.Claims[i].Values, true
		}
	}
	return nil, false
}

func equalPath(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func contains(p netip.Prefix, a netip.Addr) bool {
	return a.IsValid() && p.Contains(a.Unmap())
}

// pathOnly drops the query string and fragment: url_path matches the path
// alone.
func pathOnly(p string) string {
	if i := strings.IndexAny(p, "?#"); i >= 0 {
		return p[:i]
	}
	return p
}
