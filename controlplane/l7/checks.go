package l7

import (
	"fmt"
	"regexp"
	"strings"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"golang.org/x/net/http/httpguts"
)

// The waypoint refuses a whole route configuration for one invalid value,
// which would take every route of the Service port down with it. These
// checks keep such values out, each reported on the object it came from.

// maxDirectBody is Envoy's default max_direct_response_body_size_bytes,
// which the route configurations built here leave unset.
const maxDirectBody = 4096

// checkSubstitution checks a regex rewrite's substitution as RE2 (and the
// waypoint) read it: \0 to \9 name groups the pattern has, \\ is a
// backslash, any other escape is an error.
func checkSubstitution(pattern, sub string) error {
	re, err := regexp.Compile(pattern)
	if err != nil {
		return fmt.Errorf("invalid RE2 regex %q: %v", pattern, err)
	}
	for i := 0; i < len(sub); i++ {
		if sub[i] != '\\' {
			continue
		}
		i++
		switch {
		case i == len(sub):
			return fmt.Errorf("substitution %q ends with a lone backslash", sub)
		case sub[i] == '\\':
		case '0' <= sub[i] && sub[i] <= '9':
			if n := int(sub[i] - '0'); n > re.NumSubexp() {
				return fmt.Errorf("substitution %q uses group \\%d but the pattern has %d", sub, n, re.NumSubexp())
			}
		default:
			return fmt.Errorf("substitution %q has an invalid escape \\%c", sub, sub[i])
		}
	}
	return nil
}

// literalSubstitution is s as a regex substitution that inserts it as is.
func literalSubstitution(s string) string {
	return strings.ReplaceAll(s, `\`, `\\`)
}

// checkMatchName tells why a header or query parameter name cannot be
// matched on, or "".
func checkMatchName(name string, header bool) string {
	switch {
	case name == "":
		return "an empty name"
	case header && !strings.HasPrefix(name, ":") && !httpguts.ValidHeaderFieldName(name):
		return fmt.Sprintf("%q is not a header name", name)
	}
	return ""
}

// checkPrefix tells why a path prefix cannot be a path-separated prefix.
func checkPrefix(p string) string {
	if strings.ContainsAny(p, "?#") {
		return fmt.Sprintf("%q holds '?' or '#': a path never does", p)
	}
	return ""
}

// isToken reports whether s is an HTTP token (a cookie name).
func isToken(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if !httpguts.IsTokenRune(rune(s[i])) {
			return false
		}
	}
	return true
}

// actionProblem finds a value of a route's action that would end up in a
// request line or a response header (a Location) and is not fit for one:
// control characters or spaces in an authority, a path or a scheme. It
// returns the object field to blame and why, or "", "".
func actionProblem(r *routev3.Route) (field, why string) {
	bad := func(v string) bool {
		return !httpguts.ValidHeaderFieldValue(v) || strings.ContainsAny(v, " \t")
	}
	var checks [][2]string
	switch a := r.Action.(type) {
	case *routev3.Route_Redirect:
		rd := a.Redirect
		checks = [][2]string{{"authority", rd.HostRedirect}, {"uri", rd.GetPathRedirect()}, {"path", rd.GetPrefixRewrite()}}
		if s := rd.GetSchemeRedirect(); s != "" && !isScheme(s) {
			return "scheme", fmt.Sprintf("%q is not a URL scheme", s)
		}
	case *routev3.Route_Route:
		checks = [][2]string{{"authority", a.Route.GetHostRewriteLiteral()}, {"uri", a.Route.PrefixRewrite}}
		if rr := a.Route.RegexRewrite; rr != nil {
			checks = append(checks, [2]string{"uri", rr.Substitution})
		}
	}
	for _, c := range checks {
		if bad(c[1]) {
			return c[0], fmt.Sprintf("%q holds spaces or control characters", c[1])
		}
	}
	return "", ""
}

// isScheme reports whether s is a URL scheme (RFC 3986).
func isScheme(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z':
		case i > 0 && ('0' <= c && c <= '9' || c == '+' || c == '-' || c == '.'):
		default:
			return false
		}
	}
	return s != ""
}
