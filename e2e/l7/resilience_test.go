package l7

import (
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/zmesh/zmesh/e2e/cluster"
)

const overflowBody = "upstream connect error or disconnect/reset before headers. reset reason: overflow"

// TestResilience follows Istio's circuit-breaking task and its outlier
// detection and retry settings, through a waypoint (l7-resilience.yaml):
// endpoints answering 503 are ejected until the waypoint answers 503 "no
// healthy upstream", then come back; a connection pool of one refuses
// concurrent requests with Envoy's overflow reply, counted in the
// waypoint's metrics; and a retry takes a request that met a failing pod
// to the pod that works.
func TestResilience(t *testing.T) {
	t.Parallel()
	pods := withWaypoint(t, "l7-resilience.yaml", "resilience", 5)
	wp := waypointPod(t, pods)
	c := client(pods["client"])
	httpbin := "http://" + serviceAddr(t, "resilience", "httpbin", 8000).String()
	const httpbinCluster = "inbound-vip|8000|http|httpbin.resilience.svc.cluster.local"
	untilCode(t, "httpbin served through the waypoint", c, httpbin+"/get", nil, http.StatusOK)

	// Istio's example uses baseEjectionTime 10s; 5s keeps the scenario
	// short and still leaves seconds between the ejection and the checks
	// made during it.
	t.Run("outlier detection", func(t *testing.T) {
		apply(t, `
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: httpbin
  namespace: resilience
spec:
  host: httpbin
  trafficPolicy:
    outlierDetection:
      consecutive5xxErrors: 3
      interval: 1s
      baseEjectionTime: 5s
      maxEjectionPercent: 100
`)
		// Until the rule reaches the waypoint the app's own 503s come
		// back (empty); then three in a row eject each pod, and with
		// both out the waypoint answers for them.
		var seen []string
		until(t, 30*time.Second, "both httpbin pods ejected", func() error {
			code, body, _, err := send(c, http.MethodGet, httpbin+"/status/503", nil)
			if err != nil {
				return err
			}
			seen = append(seen, fmt.Sprintf("%d %q", code, body))
			if code != http.StatusServiceUnavailable || body != "no healthy upstream" {
				return fmt.Errorf("%d %q", code, body)
			}
			return nil
		})
		t.Logf("GET /status/503 answered, in order: %s", strings.Join(seen, ", "))
		code, body, _, err := send(c, http.MethodGet, httpbin+"/get", nil)
		if err != nil || code != http.StatusServiceUnavailable || body != "no healthy upstream" {
			t.Fatalf("GET /get with every pod ejected: %d %q %v, want 503 \"no healthy upstream\"", code, body, err)
		}
		t.Logf("GET /get with every pod ejected: %d %q", code, body)
		line := waypointMetric(t, wp, "envoy_cluster_outlier_detection_ejections_enforced_total", httpbinCluster, 2)
		t.Logf("waypoint metrics: %s", line)
		start := time.Now()
		untilCode(t, "httpbin back after the ejection time", c, httpbin+"/get", nil, http.StatusOK)
		t.Logf("GET /get answered 200 again %s later", time.Since(start).Round(100*time.Millisecond))
	})

	t.Run("connection pool overflow", func(t *testing.T) {
		apply(t, `
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: httpbin
  namespace: resilience
spec:
  host: httpbin
  trafficPolicy:
    connectionPool:
      tcp:
        maxConnections: 1
      http:
        http1MaxPendingRequests: 1
        http2MaxRequests: 1
        maxRequestsPerConnection: 1
`)
		// Five clients at once, each request held a second by the app:
		// one is served at a time and the others overflow.
		var ok, overflow int
		until(t, 30*time.Second, "concurrent requests refused with overflow", func() error {
			res := concurrently(c, httpbin+"/get?delay=1s", 5)
			ok, overflow = 0, 0
			for _, r := range res {
				switch {
				case r.err != nil:
					return r.err
				case r.code == http.StatusOK:
					ok++
				case r.code == http.StatusServiceUnavailable && r.body == overflowBody && r.header.Get("X-Envoy-Overloaded") == "true":
					overflow++
				default:
					return fmt.Errorf("unexpected answer %d %q", r.code, r.body)
				}
			}
			if overflow == 0 || ok == 0 {
				return fmt.Errorf("%d served, %d overflowed", ok, overflow)
			}
			return nil
		})
		t.Logf("5 concurrent GET /get?delay=1s: %d answered 200, %d answered 503 %q", ok, overflow, overflowBody)
		line := waypointMetric(t, wp, "envoy_cluster_upstream_rq_pending_overflow", httpbinCluster, float64(overflow))
		t.Logf("waypoint metrics: %s", line)
		// One at a time, every request is served.
		for i := range 5 {
			if code, body, _, err := send(c, http.MethodGet, httpbin+"/get", nil); err != nil || code != http.StatusOK {
				t.Fatalf("sequential request %d: %d %q %v", i, code, body, err)
			}
		}
	})

	t.Run("retries", func(t *testing.T) {
		flaky := "http://" + serviceAddr(t, "resilience", "flaky", 8000).String() + "/get"
		// Without retries about half the requests meet flaky-down,
		// whose connections fail.
		apply(t, `
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: flaky
  namespace: resilience
spec:
  hosts:
  - flaky
  http:
  - route:
    - destination:
        host: flaky
    retries:
      attempts: 0
`)
		untilCode(t, "a request to flaky-down failing without retries", c, flaky, nil, http.StatusServiceUnavailable)
		code, body, _, _ := send(c, http.MethodGet, flaky, nil)
		for code == http.StatusOK {
			code, body, _, _ = send(c, http.MethodGet, flaky, nil)
		}
		t.Logf("without retries: %d %q", code, body)

		apply(t, `
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: flaky
  namespace: resilience
spec:
  hosts:
  - flaky
  http:
  - route:
    - destination:
        host: flaky
    retries:
      attempts: 3
      retryOn: connect-failure,reset
`)
		// Each request's upstream attempts carry x-envoy-attempt-count (as
		// istiod configures it): a request that first went to flaky-down
		// reaches flaky-up on attempt 2 or later.
		retried := 0
		until(t, 30*time.Second, "every request served by flaky-up after retries", func() error {
			retried = 0
			for i := range 20 {
				code, e, err := get(c, flaky, nil)
				if err != nil || code != http.StatusOK || e.Pod != "flaky-up" {
					return fmt.Errorf("request %d: %d from %q %v", i, code, e.Pod, err)
				}
				n, err := strconv.Atoi(strings.Join(e.Headers["X-Envoy-Attempt-Count"], ","))
				if err != nil || n < 1 {
					return fmt.Errorf("request %d: x-envoy-attempt-count %q at the app", i, e.Headers["X-Envoy-Attempt-Count"])
				}
				if n > 1 {
					retried++
				}
			}
			if retried == 0 {
				return fmt.Errorf("none of 20 requests was retried (every one reached flaky-up on its first attempt)")
			}
			return nil
		})
		t.Logf("20 requests in a row answered 200 by flaky-up, %d of them on a retry (x-envoy-attempt-count > 1)", retried)
	})
}

// apply applies YAML as Istio's tasks do (kubectl apply -f - <<EOF).
func apply(t *testing.T, yaml string) {
	t.Helper()
	out, err := mesh.Env.KubectlRun(t.Context(), yaml, "apply", "-f", "-")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("$ kubectl apply -f - <<EOF%sEOF\n%s", yaml, strings.TrimSpace(out))
}

// answer is one request's outcome.
type answer struct {
	code   int
	body   string
	header http.Header
	err    error
}

// concurrently sends n GETs of url at once and returns their answers.
func concurrently(c *http.Client, url string, n int) []answer {
	out := make([]answer, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			a := &out[i]
			a.code, a.body, a.header, a.err = send(c, http.MethodGet, url, nil)
		})
	}
	wg.Wait()
	return out
}

// waypointMetric waits (10 s) until the waypoint's metrics have a sample
// of name for cluster with a value of at least atLeast, and returns it.
func waypointMetric(t *testing.T, wp *cluster.Pod, name, clusterName string, atLeast float64) string {
	t.Helper()
	var line string
	until(t, 10*time.Second, name+" counted", func() error {
		m, err := waypointMetrics(t.Context(), wp)
		if err != nil {
			return err
		}
		line = cluster.MetricLine(m, name, map[string]string{"cluster_name": clusterName})
		if line == "" || cluster.MetricValue(line) < atLeast {
			return fmt.Errorf("no sample of %s{cluster_name=%q} ≥ %v in:\n%s", name, clusterName, atLeast, grepLines(m, name))
		}
		return nil
	})
	return line
}
