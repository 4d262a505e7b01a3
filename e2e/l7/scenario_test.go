package l7

import (
	"context"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/zmesh/zmesh/e2e/cluster"
)

// withWaypoint applies file, whose namespace ns holds n pods, waits for
// them, gives the namespace a waypoint as a user would (`zmeshctl waypoint
// apply --enroll-namespace --wait`) and waits for the waypoint's pod too.
// It returns the namespace's pods by name, the waypoint's among them.
func withWaypoint(t *testing.T, file, ns string, n int) map[string]*cluster.Pod {
	t.Helper()
	mesh.Apply(t, file, ns)
	mesh.MustWaitPods(t, ns, n)
	zmeshctl(t, "waypoint", "apply", "-n", ns, "--enroll-namespace", "--wait")
	return mesh.MustWaitPods(t, ns, n+1)
}

// waypointPod is the pod of the Deployment zmeshctl's Gateway made.
func waypointPod(t *testing.T, pods map[string]*cluster.Pod) *cluster.Pod {
	t.Helper()
	for name, p := range pods {
		if strings.HasPrefix(name, "waypoint-") {
			return p
		}
	}
	t.Fatalf("no waypoint pod among %d pods", len(pods))
	return nil
}

// send makes one request and returns the status, body and headers of the
// answer.
func send(c *http.Client, method, url string, header http.Header) (int, string, http.Header, error) {
	req, err := http.NewRequest(method, url, nil)
	if err != nil {
		return 0, "", nil, err
	}
	for k, v := range header {
		req.Header[k] = v
	}
	resp, err := c.Do(req)
	if err != nil {
		return 0, "", nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), resp.Header, err
}

// checkSplit fails the test when a version's share of n answers is more
// than six standard deviations of the binomial count from its weight: a
// correct split fails about once in 10⁹ runs.
func checkSplit(t *testing.T, got map[string]int, n int, want map[string]float64) {
	t.Helper()
	for v, p := range want {
		sd := math.Sqrt(float64(n) * p * (1 - p))
		if d := math.Abs(float64(got[v]) - float64(n)*p); d > 6*sd {
			t.Errorf("%s answered %d of %d, want %.0f ± %.0f", v, got[v], n, float64(n)*p, 6*sd)
		}
	}
	total := 0
	for _, c := range got {
		total += c
	}
	if total != n {
		t.Errorf("%d answers of %d requests: %v", total, n, got)
	}
}

// waypointMetrics reads the waypoint's Prometheus endpoint (15020) from its
// node's host namespace, as a node-local scraper would.
func waypointMetrics(ctx context.Context, wp *cluster.Pod) (string, error) {
	c := &http.Client{
		Timeout: 5 * time.Second,
		Transport: &http.Transport{
			DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
				return wp.Node.Host.Dial(ctx, network, addr)
			},
			DisableKeepAlives: true,
		},
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+wp.Addr(15020).String()+"/stats/prometheus", nil)
	if err != nil {
		return "", err
	}
	resp, err := c.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err == nil && resp.StatusCode != http.StatusOK {
		err = fmt.Errorf("GET /stats/prometheus: %d %q", resp.StatusCode, b)
	}
	return string(b), err
}

// containsLine reports whether text has line as one of its lines.
func containsLine(text, line string) bool {
	for _, l := range strings.Split(text, "\n") {
		if strings.TrimSpace(l) == line {
			return true
		}
	}
	return false
}
