package proxy

import "strings"

// normalizePath is Envoy's normalize_path (Istio's default path
// normalization, BASE) on a request target: percent-encoded unreserved
// characters are decoded and dot segments removed (RFC 3986 §2.3, §5.2.4)
// before filters and routing see the path, and the upstream gets the
// result. Without it a rule on /admin would not see /public/../admin or
// /%2e%2e/admin, which the app resolves to /admin. Slashes are not merged
// and encoded slashes (%2F) stay as they are, as in Envoy's defaults
// (merge_slashes false, KEEP_UNCHANGED). The query is kept as sent.
func normalizePath(uri string) string {
	p, q, hasQuery := strings.Cut(uri, "?")
	if p == "" || p[0] != '/' {
		return uri // "*" or an authority form: nothing to normalize
	}
	if !strings.Contains(p, "%") && !strings.Contains(p, "/.") {
		return uri
	}
	n := removeDotSegments(decodeUnreserved(p))
	if n == p {
		return uri
	}
	if hasQuery {
		return n + "?" + q
	}
	return n
}

func decodeUnreserved(p string) string {
	if !strings.Contains(p, "%") {
		return p
	}
	var b strings.Builder
	b.Grow(len(p))
	for i := 0; i < len(p); i++ {
		if p[i] == '%' && i+2 < len(p) {
			if c, ok := unhex2(p[i+1], p[i+2]); ok && isUnreserved(c) {
				b.WriteByte(c)
				i += 2
				continue
			}
		}
		b.WriteByte(p[i])
	}
	return b.String()
}

func unhex2(a, b byte) (byte, bool) {
	x, ok1 := unhex(a)
	y, ok2 := unhex(b)
	return x<<4 | y, ok1 && ok2
}

func unhex(c byte) (byte, bool) {
	switch {
	case c >= '0' && c <= '9':
		return c - '0', true
	case c >= 'a' && c <= 'f':
		return c - 'a' + 10, true
	case c >= 'A' && c <= 'F':
		return c - 'A' + 10, true
	}
	return 0, false
}

func isUnreserved(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '.' || c == '_' || c == '~'
}

// removeDotSegments resolves "." and ".." in an absolute path; ".." never
// climbs above the root.
func removeDotSegments(p string) string {
	if !strings.Contains(p, "/.") {
		return p
	}
	segs := strings.Split(p[1:], "/")
	out := make([]string, 0, len(segs))
	for i, s := range segs {
		last := i == len(segs)-1
		switch s {
		case ".":
		case "..":
			if len(out) > 0 {
				out = out[:len(out)-1]
			}
		default:
			out = append(out, s)
			continue
		}
		if last {
			out = append(out, "") // "/a/." and "/a/b/.." end in a slash
		}
	}
	return "/" + strings.Join(out, "/")
}
