package proxy

import "testing"

func TestNormalizePath(t *testing.T) {
	for in, want := range map[string]string{
		"/":                      "/",
		"/a/b?x=/../y":           "/a/b?x=/../y",
		"/a/./b":                 "/a/b",
		"/a/b/../c":              "/a/c",
		"/public/../admin":       "/admin",
		"/%2e%2e/admin":          "/admin",
		"/%2E/admin/%7Euser":     "/admin/~user",
		"/a/%2F../b":             "/a/%2F../b",
		"/a/%2f/b":               "/a/%2f/b",
		"/a/..":                  "/",
		"/a/.":                   "/a/",
		"/../../x":               "/x",
		"//admin":                "//admin",
		"/a/..b/.c":              "/a/..b/.c",
		"/%41%zz%4":              "/A%zz%4",
		"/x/../y?q=1":            "/y?q=1",
		"*":                      "*",
		"reviews:80":             "reviews:80",
		"/a/b/../../../../c/./d": "/c/d",
	} {
		if got := normalizePath(in); got != want {
			t.Errorf("normalizePath(%q) = %q, want %q", in, got, want)
		}
	}
}

func BenchmarkNormalizePathClean(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		normalizePath("/api/v1/reviews/123?detail=full")
	}
}
