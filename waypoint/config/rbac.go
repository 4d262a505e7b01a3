package config

import (
	"errors"
	"fmt"
	"net/netip"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	rbacv3 "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	rbacfilterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/rbac/v3"
	netrbacv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/rbac/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"

	"github.com/zmesh/zmesh/waypoint/filter/rbac"
)

// The metadata Istio's RBAC policies read: the verified JWT's principal and
// claims, written by its authentication filter under "istio_authn".
const (
	istioAuthn          = "istio_authn"
	authnPrincipalKey   = "request.auth.principal"
	authnClaimsKey      = "request.auth.claims"
	maxRBACMatcherDepth = 32
	// peerPrincipalKey is the filter state Istio's waypoint policies read
	// the peer's identity from.
	peerPrincipalKey = "io.istio.peer_principal"
)

// CompileRBAC validates an RBAC filter's configuration against the
// supported subset and compiles it into an rbac.Set. Any set field the
// waypoint does not implement, and any invalid value, is a *NackError
// naming the field path (e.g. "rules.policies[\"p\"].principals[0].filter_state").
func CompileRBAC(name string, cfg *rbacfilterv3.RBAC) (*rbac.Set, error) {
	s, err := compileRBAC(cfg)
	if err != nil {
		var ne *NackError
		if errors.As(err, &ne) {
			ne.Resource = name
		}
		return nil, err
	}
	return s, nil
}

func compileRBAC(cfg *rbacfilterv3.RBAC) (*rbac.Set, error) {
	if cfg == nil {
		return nil, nackf("", "no RBAC configuration")
	}
	if err := checkSupported(cfg.ProtoReflect(), ""); err != nil {
		return nil, err
	}
	return rbacSet(cfg.GetRules(), cfg.GetShadowRules(), cfg.GetRulesStatPrefix(), cfg.GetShadowRulesStatPrefix())
}

// compileNetworkRBAC compiles a network RBAC filter (a TCP chain's): its
// rules are the same engines as the HTTP filter's. A connection has no
// HTTP attributes, so a header, path or JWT matcher never matches there,
// as in Envoy's network filter.
func compileNetworkRBAC(cfg *netrbacv3.RBAC) (*rbac.Set, error) {
	if cfg == nil {
		return nil, nackf("", "no RBAC configuration")
	}
	if err := checkSupported(cfg.ProtoReflect(), ""); err != nil {
		return nil, err
	}
	if cfg.GetStatPrefix() == "" {
		return nil, nackf("stat_prefix", "required")
	}
	return rbacSet(cfg.GetRules(), cfg.GetShadowRules(), cfg.GetStatPrefix(), cfg.GetShadowRulesStatPrefix())
}

// rbacSet compiles the enforced and shadow engines of one filter.
func rbacSet(rules, shadow *rbacv3.RBAC, rulesPrefix, shadowPrefix string) (*rbac.Set, error) {
	out := &rbac.Set{RulesStatPrefix: rulesPrefix, ShadowRulesStatPrefix: shadowPrefix}
	var err error
	if rules != nil {
		if out.Rules, err = rbacEngine("rules", rules); err != nil {
			return nil, err
		}
	}
	if shadow != nil {
		if out.Shadow, err = rbacEngine("shadow_rules", shadow); err != nil {
			return nil, err
		}
	}
	return out, nil
}

func rbacEngine(path string, r *rbacv3.RBAC) (*rbac.Engine, error) {
	e := &rbac.Engine{}
	switch r.GetAction() {
	case rbacv3.RBAC_ALLOW:
		e.Action = rbac.ActionAllow
	case rbacv3.RBAC_DENY:
		e.Action = rbac.ActionDeny
	case rbacv3.RBAC_LOG:
		e.Action = rbac.ActionLog
	default:
		return nil, nackf(path+".action", "%v not supported", r.GetAction())
	}
	for name, p := range r.GetPolicies() {
		pp := fmt.Sprintf("%s.policies[%q]", path, name)
		if name == "" {
			// The deciding policy is named in the access log.
			return nil, nackf(pp, "a policy name is required")
		}
		pol := rbac.Policy{Name: name}
		for i, perm := range p.GetPermissions() {
			m, err := permission(fmt.Sprintf("%s.permissions[%d]", pp, i), perm, 0)
			if err != nil {
				return nil, err
			}
			pol.Permissions = append(pol.Permissions, m)
		}
		for i, prin := range p.GetPrincipals() {
			m, err := principal(fmt.Sprintf("%s.principals[%d]", pp, i), prin, 0)
			if err != nil {
				return nil, err
			}
			pol.Principals = append(pol.Principals, m)
		}
		// Envoy requires both lists to be non-empty.
		if len(pol.Permissions) == 0 {
			return nil, nackf(pp+".permissions", "at least one permission is required")
		}
		if len(pol.Principals) == 0 {
			return nil, nackf(pp+".principals", "at least one principal is required")
		}
		e.Policies = append(e.Policies, pol)
	}
	rbac.SortPolicies(e.Policies)
	return e, nil
}

func permission(path string, p *rbacv3.Permission, depth int) (rbac.Matcher, error) {
	if depth > maxRBACMatcherDepth {
		return rbac.Matcher{}, nackf(path, "nested deeper than %d", maxRBACMatcherDepth)
	}
	var c compiler
	switch r := p.GetRule().(type) {
	case *rbacv3.Permission_Any:
		if !r.Any {
			return rbac.Matcher{}, nackf(path+".any", "must be true")
		}
		return rbac.Matcher{Kind: rbac.KindAny}, nil
	case *rbacv3.Permission_AndRules, *rbacv3.Permission_OrRules:
		kind, field, rules := rbac.KindAnd, "and_rules", p.GetAndRules().GetRules()
		if _, ok := r.(*rbacv3.Permission_OrRules); ok {
			kind, field, rules = rbac.KindOr, "or_rules", p.GetOrRules().GetRules()
		}
		if len(rules) == 0 {
			return rbac.Matcher{}, nackf(path+"."+field+".rules", "at least one rule is required")
		}
		m := rbac.Matcher{Kind: kind}
		for i, sub := range rules {
			cm, err := permission(fmt.Sprintf("%s.%s.rules[%d]", path, field, i), sub, depth+1)
			if err != nil {
				return rbac.Matcher{}, err
			}
			m.Children = append(m.Children, cm)
		}
		return m, nil
	case *rbacv3.Permission_NotRule:
		cm, err := permission(path+".not_rule", r.NotRule, depth+1)
		if err != nil {
			return rbac.Matcher{}, err
		}
		return rbac.Matcher{Kind: rbac.KindNot, Children: []rbac.Matcher{cm}}, nil
	case *rbacv3.Permission_Header:
		h, err := c.headerMatcher(path+".header", r.Header)
		if err != nil {
			return rbac.Matcher{}, err
		}
		return rbac.Matcher{Kind: rbac.KindHeader, Header: &h}, nil
	case *rbacv3.Permission_UrlPath:
		return urlPath(path+".url_path", r.UrlPath)
	case *rbacv3.Permission_DestinationIp:
		pfx, err := cidr(path+".destination_ip", r.DestinationIp)
		return rbac.Matcher{Kind: rbac.KindDestinationIP, CIDR: pfx}, err
	case *rbacv3.Permission_DestinationPort:
		if r.DestinationPort > 65535 {
			return rbac.Matcher{}, nackf(path+".destination_port", "%d is not a port", r.DestinationPort)
		}
		return rbac.Matcher{Kind: rbac.KindDestinationPort, Port: uint16(r.DestinationPort)}, nil
	case *rbacv3.Permission_DestinationPortRange:
		start, end := r.DestinationPortRange.GetStart(), r.DestinationPortRange.GetEnd()
		if start < 0 || end > 65536 || start >= end {
			return rbac.Matcher{}, nackf(path+".destination_port_range", "[%d, %d) is not a port range", start, end)
		}
		return rbac.Matcher{Kind: rbac.KindDestinationPortRange, PortStart: start, PortEnd: end}, nil
	case *rbacv3.Permission_Metadata:
		return metadata(path+".metadata", r.Metadata)
	}
	return rbac.Matcher{}, nackf(path, "a rule is required")
}

func principal(path string, p *rbacv3.Principal, depth int) (rbac.Matcher, error) {
	if depth > maxRBACMatcherDepth {
		return rbac.Matcher{}, nackf(path, "nested deeper than %d", maxRBACMatcherDepth)
	}
	var c compiler
	switch r := p.GetIdentifier().(type) {
	case *rbacv3.Principal_Any:
		if !r.Any {
			return rbac.Matcher{}, nackf(path+".any", "must be true")
		}
		return rbac.Matcher{Kind: rbac.KindAny}, nil
	case *rbacv3.Principal_AndIds, *rbacv3.Principal_OrIds:
		kind, field, ids := rbac.KindAnd, "and_ids", p.GetAndIds().GetIds()
		if _, ok := r.(*rbacv3.Principal_OrIds); ok {
			kind, field, ids = rbac.KindOr, "or_ids", p.GetOrIds().GetIds()
		}
		if len(ids) == 0 {
			return rbac.Matcher{}, nackf(path+"."+field+".ids", "at least one principal is required")
		}
		m := rbac.Matcher{Kind: kind}
		for i, sub := range ids {
			cm, err := principal(fmt.Sprintf("%s.%s.ids[%d]", path, field, i), sub, depth+1)
			if err != nil {
				return rbac.Matcher{}, err
			}
			m.Children = append(m.Children, cm)
		}
		return m, nil
	case *rbacv3.Principal_NotId:
		cm, err := principal(path+".not_id", r.NotId, depth+1)
		if err != nil {
			return rbac.Matcher{}, err
		}
		return rbac.Matcher{Kind: rbac.KindNot, Children: []rbac.Matcher{cm}}, nil
	case *rbacv3.Principal_Authenticated_:
		m := rbac.Matcher{Kind: rbac.KindAuthenticated}
		if sm := r.Authenticated.GetPrincipalName(); sm != nil {
			s, err := stringMatcher(path+".authenticated.principal_name", sm)
			if err != nil {
				return m, err
			}
			m.String = &s
		}
		return m, nil
	case *rbacv3.Principal_FilterState:
		// Istio's waypoints match the peer's identity through the filter
		// state its HBONE listener sets from the peer certificate's URI SAN;
		// here that is the peer's SPIFFE ID, as for authenticated.
		fs := r.FilterState
		if fs.GetKey() != peerPrincipalKey {
			return rbac.Matcher{}, nackf(path+".filter_state.key", "%q not supported (only %q)", fs.GetKey(), peerPrincipalKey)
		}
		if fs.GetStringMatch() == nil {
			return rbac.Matcher{}, nackf(path+".filter_state.string_match", "required")
		}
		s, err := stringMatcher(path+".filter_state.string_match", fs.GetStringMatch())
		return rbac.Matcher{Kind: rbac.KindAuthenticated, String: &s}, err
	case *rbacv3.Principal_SourceIp:
		// Deprecated spelling of direct_remote_ip, which Envoy treats alike.
		pfx, err := cidr(path+".source_ip", r.SourceIp)
		return rbac.Matcher{Kind: rbac.KindDirectRemoteIP, CIDR: pfx}, err
	case *rbacv3.Principal_DirectRemoteIp:
		pfx, err := cidr(path+".direct_remote_ip", r.DirectRemoteIp)
		return rbac.Matcher{Kind: rbac.KindDirectRemoteIP, CIDR: pfx}, err
	case *rbacv3.Principal_RemoteIp:
		pfx, err := cidr(path+".remote_ip", r.RemoteIp)
		return rbac.Matcher{Kind: rbac.KindRemoteIP, CIDR: pfx}, err
	case *rbacv3.Principal_Header:
		h, err := c.headerMatcher(path+".header", r.Header)
		if err != nil {
			return rbac.Matcher{}, err
		}
		return rbac.Matcher{Kind: rbac.KindHeader, Header: &h}, nil
	case *rbacv3.Principal_UrlPath:
		return urlPath(path+".url_path", r.UrlPath)
	case *rbacv3.Principal_Metadata:
		return metadata(path+".metadata", r.Metadata)
	}
	return rbac.Matcher{}, nackf(path, "an identifier is required")
}

func urlPath(path string, pm *matcherv3.PathMatcher) (rbac.Matcher, error) {
	sm := pm.GetPath()
	if sm == nil {
		return rbac.Matcher{}, nackf(path+".path", "required")
	}
	s, err := stringMatcher(path+".path", sm)
	return rbac.Matcher{Kind: rbac.KindURLPath, String: &s}, err
}

// cidr compiles a CidrRange; like Envoy, the address's bits beyond the
// prefix length are ignored.
func cidr(path string, c *corev3.CidrRange) (netip.Prefix, error) {
	a, err := netip.ParseAddr(c.GetAddressPrefix())
	if err != nil || a.Zone() != "" {
		return netip.Prefix{}, nackf(path+".address_prefix", "%q is not an IP address", c.GetAddressPrefix())
	}
	a = a.Unmap()
	bits := a.BitLen()
	if c.GetPrefixLen() != nil {
		bits = int(c.GetPrefixLen().GetValue())
	}
	if bits > a.BitLen() {
		return netip.Prefix{}, nackf(path+".prefix_len", "%d is longer than the address (%d bits)", bits, a.BitLen())
	}
	return netip.PrefixFrom(a, bits).Masked(), nil
}

// metadata compiles the metadata matchers Istio emits: the JWT principal
// and claims under filter "istio_authn". Other metadata is not produced by
// anything in the waypoint, so a policy on it could never be meant.
func metadata(path string, m *matcherv3.MetadataMatcher) (rbac.Matcher, error) {
	if m.GetFilter() != istioAuthn {
		return rbac.Matcher{}, nackf(path+".filter", "%q not supported (only %q)", m.GetFilter(), istioAuthn)
	}
	var keys []string
	for i, seg := range m.GetPath() {
		if seg.GetKey() == "" {
			return rbac.Matcher{}, nackf(fmt.Sprintf("%s.path[%d].key", path, i), "required")
		}
		keys = append(keys, seg.GetKey())
	}
	if m.GetValue() == nil {
		return rbac.Matcher{}, nackf(path+".value", "required")
	}
	v, err := valueMatcher(path+".value", m.GetValue(), 0)
	if err != nil {
		return rbac.Matcher{}, err
	}
	out := rbac.Matcher{Value: v, Invert: m.GetInvert()}
	switch {
	case len(keys) == 1 && keys[0] == authnPrincipalKey:
		out.Kind = rbac.KindRequestPrincipal
	case len(keys) >= 2 && keys[0] == authnClaimsKey:
		out.Kind, out.ClaimPath = rbac.KindRequestClaim, keys[1:]
	default:
		return rbac.Matcher{}, nackf(path+".path", "%q not supported (only [%s] and [%s, claim...])", keys, authnPrincipalKey, authnClaimsKey)
	}
	return out, nil
}

func valueMatcher(path string, v *matcherv3.ValueMatcher, depth int) (*rbac.ValueMatcher, error) {
	switch p := v.GetMatchPattern().(type) {
	case *matcherv3.ValueMatcher_StringMatch:
		s, err := stringMatcher(path+".string_match", p.StringMatch)
		if err != nil {
			return nil, err
		}
		return &rbac.ValueMatcher{String: &s}, nil
	case *matcherv3.ValueMatcher_PresentMatch:
		return &rbac.ValueMatcher{Present: p.PresentMatch}, nil
	case *matcherv3.ValueMatcher_ListMatch:
		if depth > 0 {
			return nil, nackf(path+".list_match", "nested lists not supported")
		}
		one := p.ListMatch.GetOneOf()
		if one == nil {
			return nil, nackf(path+".list_match.one_of", "required")
		}
		inner, err := valueMatcher(path+".list_match.one_of", one, depth+1)
		if err != nil {
			return nil, err
		}
		return &rbac.ValueMatcher{OneOf: inner}, nil
	}
	return nil, nackf(path, "a match pattern is required")
}
