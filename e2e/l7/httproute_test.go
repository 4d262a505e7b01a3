package l7

import (
	"fmt"
	"testing"
	"time"
)

// TestHTTPRouteSplit is Istio's traffic-shifting task with the Gateway API:
// an HTTPRoute attached to the reviews Service (GAMMA) sends 90% of its
// requests to the reviews-v1 Service and 10% to reviews-v2, measured over
// 1 000 requests.
func TestHTTPRouteSplit(t *testing.T) {
	t.Parallel()
	pods := withWaypoint(t, "l7-httproute.yaml", "gamma", 3)
	c := client(pods["client"])
	url := "http://" + serviceAddr(t, "gamma", "reviews", 9080).String() + "/"

	// Without a route the waypoint balances over both versions' pods.
	until(t, 30*time.Second, "both versions answering", func() error {
		got, err := count(c, url, 50, nil)
		if err != nil {
			return err
		}
		if got["v1"] == 0 || got["v2"] == 0 {
			return fmt.Errorf("answered by %v", got)
		}
		return nil
	})

	mesh.Apply(t, "l7-httproute-90-10.yaml")
	// In force once v2 answers at most 25 of 100: five standard deviations
	// below the even split, five above 10%.
	until(t, 30*time.Second, "the split in force", func() error {
		got, err := count(c, url, 100, nil)
		if err != nil {
			return err
		}
		if got["v2"] > 25 {
			return fmt.Errorf("answered by %v", got)
		}
		return nil
	})
	const n = 1000
	got := versions(t, c, url, n, nil)
	t.Logf("%d requests: %v", n, got)
	checkSplit(t, got, n, map[string]float64{"v1": 0.9, "v2": 0.1})

	// The route says so in its status, as the Gateway API asks.
	until(t, 30*time.Second, "HTTPRoute gamma/reviews Accepted", func() error {
		out, err := mesh.Kubectl(t.Context(), "get", "httproute", "-n", "gamma", "reviews", "-o",
			`jsonpath={range .status.parents[*].conditions[*]}{.type}={.status}{"\n"}{end}`)
		if err != nil {
			return err
		}
		if !containsLine(out, "Accepted=True") {
			return fmt.Errorf("conditions %q", out)
		}
		return nil
	})
}
