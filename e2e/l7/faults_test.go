package l7

import (
	"net/http"
	"testing"
	"time"
)

// TestFaultAndTimeout follows Istio's fault-injection and request-timeouts
// tasks (l7-faults.yaml): the waypoint aborts jason's requests with 503
// `fault filter abort`, and answers 504 `upstream request timeout` when
// ratings takes longer than the route's 0.5 s.
func TestFaultAndTimeout(t *testing.T) {
	t.Parallel()
	pods := withWaypoint(t, "l7-faults.yaml", "faults", 2)
	c := client(pods["client"])
	base := "http://" + serviceAddr(t, "faults", "ratings", 9080).String()
	jason := http.Header{"End-User": {"jason"}}

	untilCode(t, "jason's requests aborted", c, base+"/", jason, http.StatusServiceUnavailable)

	t.Run("abort", func(t *testing.T) {
		for _, tc := range []struct {
			header http.Header
			code   int
			body   string
		}{
			{jason, http.StatusServiceUnavailable, "fault filter abort"},
			{http.Header{"End-User": {"alice"}}, http.StatusOK, ""},
			{nil, http.StatusOK, ""},
		} {
			for range 20 {
				code, body, _, err := send(c, http.MethodGet, base+"/", tc.header)
				if err != nil || code != tc.code || (tc.body != "" && body != tc.body) {
					t.Fatalf("GET / with %v: %d %q %v, want %d %q", tc.header, code, body, err, tc.code, tc.body)
				}
			}
		}
	})

	t.Run("timeout", func(t *testing.T) {
		for _, tc := range []struct {
			query string
			code  int
			body  string
		}{
			{"?delay=2s", http.StatusGatewayTimeout, "upstream request timeout"},
			{"?delay=100ms", http.StatusOK, ""},
		} {
			for range 3 {
				start := time.Now()
				code, body, _, err := send(c, http.MethodGet, base+"/"+tc.query, nil)
				if err != nil || code != tc.code || (tc.body != "" && body != tc.body) {
					t.Fatalf("GET /%s: %d %q %v, want %d %q", tc.query, code, body, err, tc.code, tc.body)
				}
				t.Logf("GET /%s: %d %q after %s", tc.query, code, trim(body), time.Since(start).Round(time.Millisecond))
			}
		}
	})
}

// trim shortens a body for a log line.
func trim(s string) string {
	if len(s) > 40 {
		return s[:40] + "…"
	}
	return s
}
