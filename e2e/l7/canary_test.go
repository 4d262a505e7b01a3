package l7

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"
)

// TestCanary follows Istio's request-routing and traffic-shifting tasks on
// a namespace given a waypoint with `zmeshctl waypoint apply
// --enroll-namespace`: the default route to v2 with jason's requests to
// v1, then 80/20 and 10/10/80 splits measured over 1 000 requests each,
// and, throughout, no way around the waypoint by dialing a pod.
func TestCanary(t *testing.T) {
	mesh.Apply(t, "l7-canary.yaml", "canary")
	pods := mesh.MustWaitPods(t, "canary", 4)
	zmeshctl(t, "waypoint", "apply", "-n", "canary", "--enroll-namespace", "--wait")
	mesh.MustWaitPods(t, "canary", 5) // and the waypoint's
	mesh.MustKubectl(t, "get", "gateway,deployment,pods", "-n", "canary", "-o", "wide")

	c := client(pods["client"])
	url := "http://" + serviceAddr(t, "canary", "reviews", 9080).String() + "/"

	t.Run("through the waypoint", func(t *testing.T) {
		// The waypoint gives every request an x-request-id; the app
		// echoes what it received.
		until(t, 30*time.Second, "a request carrying the waypoint's x-request-id", func() error {
			code, e, err := get(c, url, nil)
			if err != nil {
				return err
			}
			if code != http.StatusOK || len(e.Headers["X-Request-Id"]) != 1 {
				return fmt.Errorf("%d, headers %v", code, e.Headers)
			}
			return nil
		})
	})

	t.Run("default route to v2, jason to v1", func(t *testing.T) {
		mesh.Apply(t, "l7-canary-v2.yaml")
		onlyVersion(t, c, url, "v2", nil)
		jason := http.Header{"End-User": {"jason"}}
		onlyVersion(t, c, url, "v1", jason)
		if got := versions(t, c, url, 200, nil); got["v2"] != 200 {
			t.Errorf("200 requests without end-user: %v, want all v2", got)
		}
		if got := versions(t, c, url, 200, jason); got["v1"] != 200 {
			t.Errorf("200 requests as jason: %v, want all v1", got)
		}
	})

	for _, split := range []struct {
		file string
		want map[string]float64
	}{
		{"l7-canary-80-20.yaml", map[string]float64{"v1": 0.8, "v2": 0.2}},
		{"l7-canary-10-10-80.yaml", map[string]float64{"v1": 0.1, "v2": 0.1, "v3": 0.8}},
	} {
		t.Run(strings.TrimSuffix(strings.TrimPrefix(split.file, "l7-canary-"), ".yaml"), func(t *testing.T) {
			mesh.Apply(t, split.file)
			// The split is in force once v3 (or v1) answers at all.
			until(t, 30*time.Second, "the split in force", func() error {
				got, err := count(c, url, 50, nil)
				if err != nil {
					return err
				}
				if got["v2"] == 50 || (split.want["v3"] > 0 && got["v3"] == 0) {
					return fmt.Errorf("answered by %v", got)
				}
				return nil
			})
			const n = 1000
			got := versions(t, c, url, n, nil)
			t.Logf("%d requests: %v", n, got)
			checkSplit(t, got, n, split.want)
		})
	}

	t.Run("no bypass by pod IP", func(t *testing.T) {
		// reviews-v1's own address and target port: ztunnel on its node
		// admits only the waypoint there.
		direct := "http://" + pods["reviews-v1"].Addr(8080).String() + "/"
		ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
		defer cancel()
		code, body, err := pods["client"].HTTPGet(ctx, direct)
		if err == nil {
			t.Fatalf("GET %s from the client = %d %q, want the connection refused", direct, code, body)
		}
		t.Logf("GET %s from the client: %v (refused, as it should)", direct, err)
		if errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("the bypass attempt hung instead of being refused")
		}
	})
}
