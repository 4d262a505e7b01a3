package l7

import (
	"fmt"
	"net/http"
	"testing"
	"time"
)

// TestQueryParamsAndRewrite routes on a query parameter and rewrites a URI
// prefix with a VirtualService (l7-routing.yaml): ?version=v2 goes to v2,
// /ratings… becomes /v1/bookRatings… at v1, the rest goes to v1, and the
// first rule that matches wins.
func TestQueryParamsAndRewrite(t *testing.T) {
	t.Parallel()
	pods := withWaypoint(t, "l7-routing.yaml", "routing", 3)
	c := client(pods["client"])
	host := serviceAddr(t, "routing", "ratings", 9080).String()
	base := "http://" + host

	// Both versions serve the Service; the route is in force once
	// ?version=v2 reaches v2 alone.
	onlyVersion(t, c, base+"/?version=v2", "v2", nil)

	t.Run("query parameter", func(t *testing.T) {
		for _, tc := range []struct{ query, want string }{
			{"?version=v2", "v2"},
			{"?page=3&version=v2", "v2"},
			{"?version=v2&version=v1", "v2"}, // the first occurrence counts
			{"", "v1"},
			{"?version=v1", "v1"},
			{"?version=v22", "v1"}, // exact, not prefix
			{"?version=V2", "v1"},  // case-sensitive
			{"?Version=v2", "v1"},  // the name too
			{"?other=v2", "v1"},
		} {
			got := versions(t, c, base+"/"+tc.query, 20, nil)
			if got[tc.want] != 20 {
				t.Errorf("GET /%s 20 times: answered by %v, want all %s", tc.query, got, tc.want)
			}
		}
	})

	t.Run("uri prefix rewrite", func(t *testing.T) {
		for _, tc := range []struct{ path, wantPath, wantVersion string }{
			{"/ratings/0", "/v1/bookRatings/0", "v1"},
			{"/ratings", "/v1/bookRatings", "v1"},
			{"/ratings/0?x=1", "/v1/bookRatings/0?x=1", "v1"}, // the query is kept
			{"/reviews/0", "/reviews/0", "v1"},                // no match, no rewrite
			// The query rule comes first: no rewrite, v2.
			{"/ratings/0?version=v2", "/ratings/0?version=v2", "v2"},
		} {
			for range 10 {
				code, e, err := get(c, base+tc.path, nil)
				if err != nil || code != http.StatusOK {
					t.Fatalf("GET %s: %d %v", tc.path, code, err)
				}
				if e.Path != tc.wantPath || e.Version != tc.wantVersion || e.Host != host {
					t.Fatalf("GET %s: the app saw path %q host %q at %s, want path %q host %q at %s",
						tc.path, e.Path, e.Host, e.Version, tc.wantPath, host, tc.wantVersion)
				}
			}
			t.Logf("GET %s: the app saw %s at %s", tc.path, tc.wantPath, tc.wantVersion)
		}
	})

	t.Run("routes gone", func(t *testing.T) {
		// Without the VirtualService both versions serve every path again:
		// the routing above was the VirtualService's.
		mesh.MustKubectl(t, "delete", "virtualservice", "-n", "routing", "ratings")
		until(t, 30*time.Second, "/ratings/0 reaching both versions unrewritten", func() error {
			seen := map[string]bool{}
			for range 20 {
				code, e, err := get(c, base+"/ratings/0", nil)
				if err != nil || code != http.StatusOK {
					return fmt.Errorf("%d %v", code, err)
				}
				if e.Path != "/ratings/0" {
					return fmt.Errorf("path %q", e.Path)
				}
				seen[e.Version] = true
			}
			if !seen["v1"] || !seen["v2"] {
				return fmt.Errorf("answered by %v", seen)
			}
			return nil
		})
	})
}
