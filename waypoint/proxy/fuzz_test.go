package proxy

import (
	"strings"
	"testing"
)

// FuzzNormalizePath: normalization leaves no dot segment in the path, and
// is idempotent unless its decoding made a new escape ("%%370" is "%70":
// one level is decoded, as in Envoy).
func FuzzNormalizePath(f *testing.F) {
	for _, s := range []string{"/a/../b", "/%2e%2e/x", "/./", "/a?b=/../", "*", "/%zz/.%2E/"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		n := normalizePath(in)
		if again := normalizePath(n); again != n && strings.Count(n, "%") == strings.Count(in, "%") {
			t.Fatalf("normalizePath(%q) = %q, again %q", in, n, again)
		}
		p, _, _ := strings.Cut(n, "?")
		if strings.HasPrefix(p, "/") {
			for _, seg := range strings.Split(p[1:], "/") {
				if seg == "." || seg == ".." {
					t.Fatalf("normalizePath(%q) = %q keeps a dot segment", in, n)
				}
			}
		}
	})
}

// FuzzClassify: once the sniffer decides, more bytes do not change its
// mind.
func FuzzClassify(f *testing.F) {
	for _, s := range []string{"GET / HTTP/1.1\r\n", h2Preface, "\x16\x03\x01", "PRI * HTTP/2.0"} {
		f.Add([]byte(s), []byte("more"))
	}
	f.Fuzz(func(t *testing.T, b, more []byte) {
		k, done := classify(b)
		if !done {
			return
		}
		if k2, done2 := classify(append(b[:len(b):len(b)], more...)); !done2 || k2 != k {
			t.Fatalf("classify(%q) = %v, with more bytes %v, %v", b, k, k2, done2)
		}
	})
}
