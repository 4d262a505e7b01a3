package route

import (
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/cespare/xxhash/v2"
)

// HashPolicyKind is what a hash policy hashes.
type HashPolicyKind uint8

const (
	// HashHeader hashes a request header's values.
	HashHeader HashPolicyKind = iota + 1
	// HashCookie hashes a cookie's value, and may generate the cookie.
	HashCookie
	// HashSourceIP hashes the client's IP address.
	HashSourceIP
	// HashQueryParameter hashes a query parameter's value.
	HashQueryParameter
)

var hashKindNames = [...]string{"", "header", "cookie", "source_ip", "query_parameter"}

func (k HashPolicyKind) String() string {
	if int(k) < len(hashKindNames) && k != 0 {
		return hashKindNames[k]
	}
	return "hash_policy(" + strconv.Itoa(int(k)) + ")"
}

// HashPolicy is one entry of Envoy's RouteAction.hash_policy: what part of
// a request the consistent-hash load balancers (RING_HASH, MAGLEV) hash.
type HashPolicy struct {
	Kind HashPolicyKind
	// Name is the header (lowercase; ":authority", ":method", ":path" and
	// ":scheme" read the pseudo-headers), cookie or query parameter name.
	Name string
	// GenerateCookie is set when the cookie policy has a ttl: a request
	// without the cookie gets one generated, hashed, and returned for the
	// response's Set-Cookie. CookieTTL 0 makes it a session cookie.
	GenerateCookie bool
	CookieTTL      time.Duration
	CookiePath     string
	// Terminal stops the evaluation of the following policies once a hash
	// has been computed.
	Terminal bool

	key string // http.CanonicalHeaderKey(Name) for headers
}

// NewHashPolicy returns p ready for use (its header lookup key computed).
func NewHashPolicy(p HashPolicy) HashPolicy {
	if p.Kind == HashHeader {
		m := NewHeaderMatcher(HeaderMatcher{Name: p.Name})
		p.key = m.key
	}
	return p
}

// RequestHash computes the request's hash from a route's hash policies as
// Envoy does: each policy that yields a value is hashed with xxHash64 and
// combined as rotl(previous, 1) XOR value (so two equal policies do not
// cancel out); a terminal policy that leaves a hash ends the list. ok is
// false when no policy yields a value: the load balancer then picks at
// random. setCookie, when not empty, is a Set-Cookie header value the
// response must carry (a cookie policy with a ttl found no cookie and
// generated one). client is the downstream client's address (for
// source_ip and for generated cookies); an invalid one yields no value.
//
// RequestHash is pure and allocates only for a generated cookie and for a
// header with more than eight values.
func RequestHash(policies []HashPolicy, req *Request, client netip.Addr) (hash uint64, ok bool, setCookie string) {
	for i := range policies {
		p := &policies[i]
		v, has := uint64(0), false
		switch p.Kind {
		case HashHeader:
			v, has = p.headerHash(req)
		case HashCookie:
			var value string
			if value, has = cookieValue(req, p.Name); has {
				v = xxhash.Sum64String(value)
			} else if p.GenerateCookie && setCookie == "" {
				value = generatedCookie(client)
				v, has = xxhash.Sum64String(value), true
				setCookie = formatSetCookie(p.Name, value, p.CookiePath, p.CookieTTL)
			}
		case HashSourceIP:
			if client.IsValid() {
				var buf [64]byte
				v, has = xxhash.Sum64(client.Unmap().AppendTo(buf[:0])), true
			}
		case HashQueryParameter:
			_, query := splitPath(req.Path)
			var value string
			if value, has = rawQueryValue(query, p.Name); has {
				v = xxhash.Sum64String(value)
			}
		}
		if has {
			if ok {
				hash = (hash<<1 | hash>>63) ^ v
			} else {
				hash, ok = v, true
			}
		}
		if p.Terminal && ok {
			break
		}
	}
	return hash, ok, setCookie
}

// headerHash hashes every value of the header, sorted so that their order
// does not matter, each value's hash seeding the next (Envoy's rule).
func (p *HashPolicy) headerHash(req *Request) (uint64, bool) {
	if strings.HasPrefix(p.Name, ":") {
		m := HeaderMatcher{Name: p.Name}
		v, ok := m.value(req)
		if !ok {
			return 0, false
		}
		return xxhash.Sum64String(v), true
	}
	vs := req.Header[p.key]
	switch len(vs) {
	case 0:
		return 0, false
	case 1:
		return xxhash.Sum64String(vs[0]), true
	}
	var buf [8]string
	sorted := append(buf[:0], vs...)
	slices.Sort(sorted)
	var d xxhash.Digest
	h := uint64(0)
	for _, v := range sorted {
		d.ResetWithSeed(h)
		d.WriteString(v)
		h = d.Sum64()
	}
	return h, true
}

// cookieValue finds the first cookie called name in the request's Cookie
// headers, its value unquoted, without building a map.
func cookieValue(req *Request, name string) (string, bool) {
	for _, line := range req.Header["Cookie"] {
		for line != "" {
			var part string
			part, line, _ = strings.Cut(line, ";")
			k, v, found := strings.Cut(strings.TrimSpace(part), "=")
			if !found || k != name {
				continue
			}
			if len(v) >= 2 && v[0] == '"' && v[len(v)-1] == '"' {
				v = v[1 : len(v)-1]
			}
			return v, true
		}
	}
	return "", false
}

// generatedCookie is the value of a generated cookie: the hex xxHash64 of
// the client's address, so that the first requests of one client racing
// each other get the same cookie and the same endpoint. (Envoy hashes the
// connection's addresses for the same reason.)
func generatedCookie(client netip.Addr) string {
	var buf [64]byte
	h := xxhash.Sum64(client.Unmap().AppendTo(buf[:0]))
	s := strconv.FormatUint(h, 16)
	return strings.Repeat("0", 16-len(s)) + s
}

// formatSetCookie writes the Set-Cookie value as Envoy does: the value
// quoted, Max-Age when there is a ttl, Path when configured, HttpOnly.
func formatSetCookie(name, value, path string, ttl time.Duration) string {
	var b strings.Builder
	b.Grow(len(name) + len(value) + len(path) + 48)
	b.WriteString(name)
	b.WriteString(`="`)
	b.WriteString(value)
	b.WriteByte('"')
	if s := int64(ttl / time.Second); s > 0 {
		b.WriteString("; Max-Age=")
		b.WriteString(strconv.FormatInt(s, 10))
	}
	if path != "" {
		b.WriteString("; Path=")
		b.WriteString(path)
	}
	b.WriteString("; HttpOnly")
	return b.String()
}

// rawQueryValue finds name's first value in the query string q as sent,
// not percent-decoded: Envoy hashes query parameters undecoded (unlike
// its matchers). A key without "=" has the empty value.
func rawQueryValue(q, name string) (string, bool) {
	for q != "" {
		var pair string
		pair, q, _ = strings.Cut(q, "&")
		if k, v, _ := strings.Cut(pair, "="); k == name && pair != "" {
			return v, true
		}
	}
	return "", false
}
