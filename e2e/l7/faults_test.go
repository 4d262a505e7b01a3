package l7

import (
	"net/http"
	"testing"
	"time"
)

// TestFaultAndTimeout follows Istio's fault-injection and request-timeouts
// tasks (l7-faults.yaml): the waypoint aborts jason's requests with 503
// `fault filter abort`, aborts or delays the share of requests a route's
// percentage says, and answers 504 `upstream request timeout` when ratings
// takes longer than the route's 2 s.
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

	// Partial aborts: over 200 requests, a 50 % abort falls outside
	// [70, 130] and a 10 % one outside [5, 40] with probabilities below 1e-4.
	t.Run("abort percentage", func(t *testing.T) {
		const n = 200
		for _, tc := range []struct {
			fault    string
			min, max int
		}{
			{"abort-50", 70, 130},
			{"abort-10", 5, 40},
		} {
			aborted := 0
			for range n {
				code, body, _, err := send(c, http.MethodGet, base+"/", http.Header{"X-Fault": {tc.fault}})
				switch {
				case err != nil:
					t.Fatalf("GET / x-fault %s: %v", tc.fault, err)
				case code == http.StatusInternalServerError && body == "fault filter abort":
					aborted++
				case code != http.StatusOK:
					t.Fatalf("GET / x-fault %s: %d %q, want 200 or 500 %q", tc.fault, code, body, "fault filter abort")
				}
			}
			t.Logf("x-fault %s: %d of %d aborted with 500 %q", tc.fault, aborted, n, "fault filter abort")
			if aborted < tc.min || aborted > tc.max {
				t.Errorf("x-fault %s: %d of %d aborted, want between %d and %d", tc.fault, aborted, n, tc.min, tc.max)
			}
		}
	})

	// Delays: a delay can only make a request slower, so a request that
	// took less than the fixed delay was not delayed.
	t.Run("delay", func(t *testing.T) {
		for range 3 {
			start := time.Now()
			code, body, _, err := send(c, http.MethodGet, base+"/", http.Header{"X-Fault": {"delay"}})
			took := time.Since(start)
			if err != nil || code != http.StatusOK {
				t.Fatalf("GET / x-fault delay: %d %q %v, want 200", code, body, err)
			}
			if took < time.Second {
				t.Fatalf("GET / x-fault delay answered after %s, want at least the fixed delay of 1s", took)
			}
		}
		// Half of 40 requests delayed by 300 ms: fewer than 8 or more
		// than 32 with a probability below 1e-4. A request slower than
		// 300 ms without a delay counts as delayed, so the upper bound
		// leaves room for four of those.
		const n = 40
		delayed := 0
		for range n {
			start := time.Now()
			code, body, _, err := send(c, http.MethodGet, base+"/", http.Header{"X-Fault": {"delay-50"}})
			if err != nil || code != http.StatusOK {
				t.Fatalf("GET / x-fault delay-50: %d %q %v, want 200", code, body, err)
			}
			if time.Since(start) >= 300*time.Millisecond {
				delayed++
			}
		}
		t.Logf("x-fault delay-50: %d of %d delayed by 300ms", delayed, n)
		if delayed < 8 || delayed > 36 {
			t.Errorf("x-fault delay-50: %d of %d delayed, want about half", delayed, n)
		}
	})

	t.Run("timeout", func(t *testing.T) {
		for _, tc := range []struct {
			query string
			code  int
			body  string
		}{
			{"?delay=3s", http.StatusGatewayTimeout, "upstream request timeout"},
			{"?delay=100ms", http.StatusOK, ""},
		} {
			for range 2 {
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
