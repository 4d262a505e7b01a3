package route

import (
	"net/http"
	"regexp"
	"strings"
)

// StringMatcher is Envoy's type.matcher.v3.StringMatcher: exactly one of
// Exact, Prefix, Suffix, Contains or Regex applies, chosen by Kind.
type StringMatcher struct {
	Kind       StringMatchKind
	Value      string         // the pattern of Exact, Prefix, Suffix and Contains
	Regex      *regexp.Regexp // Regex: compiled so that it must match the whole value
	IgnoreCase bool           // ASCII case folding; never set for Regex
}

// StringMatchKind says which StringMatcher pattern applies.
type StringMatchKind uint8

const (
	MatchExact StringMatchKind = iota
	MatchPrefix
	MatchSuffix
	MatchContains
	MatchRegex
)

// Match reports whether v matches. An empty Exact pattern matches only the
// empty string, as in Envoy.
func (m *StringMatcher) Match(v string) bool {
	switch m.Kind {
	case MatchExact:
		if m.IgnoreCase {
			return len(v) == len(m.Value) && asciiEqualFold(v, m.Value)
		}
		return v == m.Value
	case MatchPrefix:
		return hasPrefix(v, m.Value, m.IgnoreCase)
	case MatchSuffix:
		if len(v) < len(m.Value) {
			return false
		}
		if m.IgnoreCase {
			return asciiEqualFold(v[len(v)-len(m.Value):], m.Value)
		}
		return strings.HasSuffix(v, m.Value)
	case MatchContains:
		if !m.IgnoreCase {
			return strings.Contains(v, m.Value)
		}
		for i := 0; i+len(m.Value) <= len(v); i++ {
			if asciiEqualFold(v[i:i+len(m.Value)], m.Value) {
				return true
			}
		}
		return false
	case MatchRegex:
		return m.Regex.MatchString(v)
	}
	return false
}

// HeaderMatcher is Envoy's config.route.v3.HeaderMatcher restricted to
// string_match and present_match, with invert_match and
// treat_missing_header_as_empty.
type HeaderMatcher struct {
	Name string // lowercase as configured; ":authority", ":method", ":path", ":scheme" read the request's pseudo-headers
	// String is the value matcher; nil means a present_match.
	String *StringMatcher
	// Present is present_match's value (used when String is nil).
	Present             bool
	Invert              bool
	TreatMissingAsEmpty bool

	key string // http.CanonicalHeaderKey(Name), computed once
}

// NewHeaderMatcher returns m ready for use (its lookup key computed).
func NewHeaderMatcher(m HeaderMatcher) HeaderMatcher {
	m.key = http.CanonicalHeaderKey(m.Name)
	return m
}

// Match applies Envoy's rules: with the header absent (and not treated as
// empty) only a present_match can match — present_match false matches,
// and inverted, present_match true matches; an inverted string match does
// not match an absent header. Several values of one header are joined with
// "," before matching, as Envoy joins them.
func (m *HeaderMatcher) Match(req *Request) bool {
	v, ok := m.value(req)
	if !ok && !m.TreatMissingAsEmpty {
		if m.String != nil {
			return false
		}
		if m.Invert {
			return m.Present
		}
		return !m.Present
	}
	var matched bool
	if m.String == nil {
		matched = m.Present
	} else {
		matched = m.String.Match(v)
	}
	return matched != m.Invert
}

func (m *HeaderMatcher) value(req *Request) (string, bool) {
	if strings.HasPrefix(m.Name, ":") {
		switch m.Name {
		case ":authority":
			return req.Authority, true
		case ":method":
			return req.Method, true
		case ":path":
			return req.Path, true
		case ":scheme":
			return req.scheme(), true
		}
		return "", false
	}
	vs := req.Header[m.key]
	switch len(vs) {
	case 0:
		return "", false
	case 1:
		return vs[0], true
	}
	return strings.Join(vs, ","), true
}

// QueryParameterMatcher is Envoy's config.route.v3.QueryParameterMatcher:
// the first occurrence of the parameter, percent-decoded, must match String,
// or merely be present when String is nil.
type QueryParameterMatcher struct {
	Name   string
	String *StringMatcher
}

// Match reports whether the query string q (without "?") satisfies m.
func (m *QueryParameterMatcher) Match(q string) bool {
	v, ok := firstQueryValue(q, m.Name)
	if !ok {
		return false
	}
	return m.String == nil || m.String.Match(v)
}

// firstQueryValue finds name's first value in q without building a map.
// Keys and values are decoded as Envoy decodes query parameters before
// matching them (see decodeQuery); a key without "=" has the empty value.
func firstQueryValue(q, name string) (string, bool) {
	for q != "" {
		var pair string
		pair, q, _ = strings.Cut(q, "&")
		if pair == "" {
			continue
		}
		k, v, _ := strings.Cut(pair, "=")
		if decodeQuery(k) == name {
			return decodeQuery(v), true
		}
	}
	return "", false
}

// decodeQuery is Envoy's PercentEncoding::urlDecodeQueryParameter: a valid
// %XY escape is decoded unless it encodes a control character, a byte
// above 0x7F, a space or one of "<>\^{|}, which stay encoded as sent;
// invalid escapes stay as they are, and "+" is not a space.
func decodeQuery(s string) string {
	i := strings.IndexByte(s, '%')
	if i < 0 {
		return s
	}
	var b strings.Builder
	b.WriteString(s[:i])
	for ; i < len(s); i++ {
		if s[i] == '%' && i+2 < len(s) {
			hi, ok1 := unhex(s[i+1])
			lo, ok2 := unhex(s[i+2])
			if ok1 && ok2 {
				if c := hi<<4 | lo; !keptEncoded(c) {
					b.WriteByte(c)
					i += 2
					continue
				}
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

func keptEncoded(c byte) bool {
	return c < 0x20 || c >= 0x7f || strings.IndexByte(" \"<>\\^{|}", c) >= 0
}

func unhex(c byte) (byte, bool) {
	switch {
	case '0' <= c && c <= '9':
		return c - '0', true
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10, true
	case 'A' <= c && c <= 'F':
		return c - 'A' + 10, true
	}
	return 0, false
}

// PathMatchKind says how RouteMatch compares the request path.
type PathMatchKind uint8

const (
	PathPrefix PathMatchKind = iota
	PathExact
	PathRegex
	PathSeparatedPrefix
)

// RouteMatch is Envoy's config.route.v3.RouteMatch for the supported
// specifiers. The path is compared without its query string and fragment.
type RouteMatch struct {
	Kind          PathMatchKind
	Path          string         // the prefix, exact path or separated prefix
	Regex         *regexp.Regexp // PathRegex: must match the whole path
	CaseSensitive bool           // Envoy's default is true; not applied to PathRegex
	Headers       []HeaderMatcher
	Query         []QueryParameterMatcher
	// PeerPrincipal are filter_state matchers on io.istio.peer_principal:
	// each must match the request's PeerPrincipal, and a request without
	// one matches no route that has any (Envoy's filter state match fails
	// when the object is absent). Gateway API consumer routes select their
	// namespace's clients with them.
	PeerPrincipal []StringMatcher
}

// match reports whether the request matches and, if so, how many bytes of
// the path the path specifier matched (what prefix_rewrite replaces).
func (m *RouteMatch) match(req *Request, path, query string) (int, bool) {
	var n int
	switch m.Kind {
	case PathPrefix:
		if !hasPrefix(path, m.Path, !m.CaseSensitive) {
			return 0, false
		}
		n = len(m.Path)
	case PathExact:
		if len(path) != len(m.Path) || !hasPrefix(path, m.Path, !m.CaseSensitive) {
			return 0, false
		}
		n = len(m.Path)
	case PathSeparatedPrefix:
		if !hasPrefix(path, m.Path, !m.CaseSensitive) || (len(path) > len(m.Path) && path[len(m.Path)] != '/') {
			return 0, false
		}
		n = len(m.Path)
	case PathRegex:
		if !m.Regex.MatchString(path) {
			return 0, false
		}
		n = len(path)
	}
	for i := range m.Headers {
		if !m.Headers[i].Match(req) {
			return 0, false
		}
	}
	for i := range m.Query {
		if !m.Query[i].Match(query) {
			return 0, false
		}
	}
	for i := range m.PeerPrincipal {
		if req.PeerPrincipal == "" || !m.PeerPrincipal[i].Match(req.PeerPrincipal) {
			return 0, false
		}
	}
	return n, true
}

func hasPrefix(s, prefix string, ignoreCase bool) bool {
	if len(s) < len(prefix) {
		return false
	}
	if ignoreCase {
		return asciiEqualFold(s[:len(prefix)], prefix)
	}
	return s[:len(prefix)] == prefix
}

// asciiEqualFold compares equal-length strings folding ASCII letters only,
// as Envoy's absl::EqualsIgnoreCase does.
func asciiEqualFold(a, b string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := 0; i < len(a); i++ {
		x, y := a[i], b[i]
		if 'A' <= x && x <= 'Z' {
			x += 'a' - 'A'
		}
		if 'A' <= y && y <= 'Z' {
			y += 'a' - 'A'
		}
		if x != y {
			return false
		}
	}
	return true
}
