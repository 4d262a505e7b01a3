package hbone

import (
	"fmt"
	"net/netip"
	"strings"
)

// formatForwarded renders the RFC 7239 Forwarded header HBONE clients send:
// for="ip:port" (IPv6 in brackets, quoted as the RFC requires for ':'), or
// the bare address when the port is 0,
// plus host= when the client addressed a service.
func formatForwarded(src netip.AddrPort, host string) string {
	var b strings.Builder
	switch {
	case src.IsValid() && src.Port() == 0:
		// A bare address: a proxy that pools connections per client
		// address (the waypoint) has no single client port to name.
		if src.Addr().Is6() {
			b.WriteString(`for="[` + src.Addr().String() + `]"`)
		} else {
			b.WriteString("for=" + src.Addr().String())
		}
	case src.IsValid():
		b.WriteString(`for="`)
		b.WriteString(src.String()) // [v6]:port or v4:port
		b.WriteByte('"')
	}
	if host != "" {
		if b.Len() > 0 {
			b.WriteByte(';')
		}
		b.WriteString("host=")
		b.WriteString(quoteIfNeeded(host))
	}
	return b.String()
}

// parseForwarded reads the first forwarded-element of an RFC 7239 header and
// returns its for= address (when it is an ip:port or a bare ip) and host=.
// Obfuscated identifiers ("_hidden", "unknown") are accepted and ignored.
// Later elements were added by later hops; the first is the original client.
func parseForwarded(v string) (netip.AddrPort, string, error) {
	var src netip.AddrPort
	var host string
	elem, _, _ := cutUnquoted(v, ',')
	for pair := range splitUnquoted(elem, ';') {
		pair = strings.TrimSpace(pair)
		if pair == "" {
			continue
		}
		name, val, ok := strings.Cut(pair, "=")
		if !ok {
			return src, host, fmt.Errorf("pair %q has no '='", pair)
		}
		val, err := unquote(strings.TrimSpace(val))
		if err != nil {
			return src, host, fmt.Errorf("%s: %w", name, err)
		}
		switch strings.ToLower(strings.TrimSpace(name)) {
		case "for":
			if val == "unknown" || strings.HasPrefix(val, "_") {
				continue
			}
			if ap, err := netip.ParseAddrPort(val); err == nil {
				src = unmap(ap)
				continue
			}
			ip := strings.TrimSuffix(strings.TrimPrefix(val, "["), "]")
			a, err := netip.ParseAddr(ip)
			if err != nil {
				return src, host, fmt.Errorf("for=%q is not an address", val)
			}
			src = netip.AddrPortFrom(a.Unmap(), 0)
		case "host":
			host = val
		}
	}
	return src, host, nil
}

// cutUnquoted is strings.Cut that ignores separators inside quotes.
func cutUnquoted(s string, sep byte) (before, after string, found bool) {
	inQuote := false
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c == '\\' && inQuote:
			i++
		case c == '"':
			inQuote = !inQuote
		case c == sep && !inQuote:
			return s[:i], s[i+1:], true
		}
	}
	return s, "", false
}

func splitUnquoted(s string, sep byte) func(func(string) bool) {
	return func(yield func(string) bool) {
		for {
			before, after, found := cutUnquoted(s, sep)
			if !yield(before) || !found {
				return
			}
			s = after
		}
	}
}

func unquote(v string) (string, error) {
	if !strings.HasPrefix(v, `"`) {
		if strings.ContainsAny(v, "\"\\") {
			return "", fmt.Errorf("stray quote in token %q", v)
		}
		return v, nil
	}
	if len(v) < 2 || !strings.HasSuffix(v, `"`) {
		return "", fmt.Errorf("unterminated quoted string %s", v)
	}
	var b strings.Builder
	in := v[1 : len(v)-1]
	for i := 0; i < len(in); i++ {
		c := in[i]
		if c == '\\' {
			if i+1 == len(in) {
				return "", fmt.Errorf("dangling escape in %s", v)
			}
			i++
			c = in[i]
		} else if c == '"' {
			return "", fmt.Errorf("unescaped quote in %s", v)
		}
		b.WriteByte(c)
	}
	return b.String(), nil
}

func quoteIfNeeded(s string) string {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c == '.' || c == '-' || c == '_' || c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z') {
			return `"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(s) + `"`
		}
	}
	return s
}
