package config

import (
	"fmt"
	"strings"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"

	"github.com/zmesh/zmesh/waypoint/route"
)

// hashPolicies compiles RouteAction.hash_policy: what the consistent-hash
// load balancers hash for a request on this route.
func hashPolicies(path string, hps []*routev3.RouteAction_HashPolicy) ([]route.HashPolicy, error) {
	if len(hps) == 0 {
		return nil, nil
	}
	out := make([]route.HashPolicy, 0, len(hps))
	generating := ""
	for i, hp := range hps {
		p := fmt.Sprintf("%s[%d]", path, i)
		hpol := route.HashPolicy{Terminal: hp.GetTerminal()}
		switch s := hp.GetPolicySpecifier().(type) {
		case *routev3.RouteAction_HashPolicy_Header_:
			name := strings.ToLower(s.Header.GetHeaderName())
			if err := hashHeaderName(name); err != nil {
				return nil, nackf(p+".header.header_name", "%v", err)
			}
			hpol.Kind, hpol.Name = route.HashHeader, name
		case *routev3.RouteAction_HashPolicy_Cookie_:
			c := s.Cookie
			if !isToken(c.GetName()) {
				return nil, nackf(p+".cookie.name", "%q is not a cookie name", c.GetName())
			}
			if strings.ContainsFunc(c.GetPath(), func(r rune) bool { return r < 0x20 || r == 0x7f || r == ';' || r > 0x7e }) {
				return nil, nackf(p+".cookie.path", "%q cannot be a cookie path", c.GetPath())
			}
			hpol.Kind, hpol.Name, hpol.CookiePath = route.HashCookie, c.GetName(), c.GetPath()
			if ttl := c.GetTtl(); ttl != nil {
				d, err := duration(p+".cookie.ttl", ttl)
				if err != nil {
					return nil, err
				}
				// One generated cookie per response: the hash of a request
				// has one Set-Cookie to give back.
				if generating != "" {
					return nil, nackf(p+".cookie.ttl", "only one cookie policy may generate a cookie (%s already does)", generating)
				}
				generating = fmt.Sprintf("hash_policy[%d]", i)
				hpol.GenerateCookie, hpol.CookieTTL = true, d
			}
		case *routev3.RouteAction_HashPolicy_ConnectionProperties_:
			// Envoy ignores connection_properties without source_ip; here
			// nothing is ignored.
			if !s.ConnectionProperties.GetSourceIp() {
				return nil, nackf(p+".connection_properties.source_ip", "must be true")
			}
			hpol.Kind = route.HashSourceIP
		case *routev3.RouteAction_HashPolicy_QueryParameter_:
			if s.QueryParameter.GetName() == "" {
				return nil, nackf(p+".query_parameter.name", "required")
			}
			hpol.Kind, hpol.Name = route.HashQueryParameter, s.QueryParameter.GetName()
		default:
			return nil, nackf(p, "one of header, cookie, connection_properties or query_parameter is required")
		}
		out = append(out, route.NewHashPolicy(hpol))
	}
	return out, nil
}

// hashHeaderName accepts a header name, or one of the pseudo-headers a
// request has.
func hashHeaderName(name string) error {
	switch name {
	case "":
		return fmt.Errorf("required")
	case ":authority", ":method", ":path", ":scheme":
		return nil
	}
	if !isToken(name) {
		return fmt.Errorf("%q is not a header name", name)
	}
	return nil
}

// isToken reports whether s is a non-empty RFC 9110 token (header and
// cookie names).
func isToken(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		case strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0:
		default:
			return false
		}
	}
	return true
}
