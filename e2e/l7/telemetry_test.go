package l7

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/zmesh/zmesh/e2e/cluster"
)

// TestTelemetry reads what the waypoint reports of sleep's requests to
// reviews (l7-telemetry.yaml): Istio's istio_requests_total with
// reporter="waypoint" and the labels of both sides, a 404 without a route
// flagged NR, and one JSON access-log line per request on the waypoint's
// stdout.
func TestTelemetry(t *testing.T) {
	t.Parallel()
	pods := withWaypoint(t, "l7-telemetry.yaml", "telemetry", 2)
	wp := waypointPod(t, pods)
	c := client(pods["sleep"])
	base := "http://" + serviceAddr(t, "telemetry", "reviews", 9080).String()

	// The waypoint's own 404 for a path no route serves (the app would
	// answer 200) says the VirtualService is in force.
	untilCode(t, "GET /ratings/0 answered 404 by the waypoint", c, base+"/ratings/0", nil, http.StatusNotFound)
	const ok, nr = 10, 5
	var okID string
	for range ok {
		code, e, err := get(c, base+"/reviews/0", nil)
		if err != nil || code != http.StatusOK {
			t.Fatalf("GET /reviews/0: %d %v", code, err)
		}
		okID = e.Headers["X-Request-Id"][0]
	}
	for i := range nr {
		h := http.Header{"X-Request-Id": {fmt.Sprintf("telemetry-nr-%d", i)}}
		code, body, _, err := send(c, http.MethodGet, base+"/ratings/0", h)
		if err != nil || code != http.StatusNotFound || body != "" {
			t.Fatalf("GET /ratings/0: %d %q %v, want 404 with no body", code, body, err)
		}
	}

	src := "spiffe://cluster.local/ns/telemetry/sa/sleep"
	common := map[string]string{
		"reporter":                   "waypoint",
		"source_principal":           src,
		"source_workload_namespace":  "telemetry",
		"request_protocol":           "http",
		"connection_security_policy": "mutual_tls",
	}
	with := func(extra map[string]string) map[string]string {
		out := map[string]string{}
		for k, v := range common {
			out[k] = v
		}
		for k, v := range extra {
			out[k] = v
		}
		return out
	}
	for _, s := range []struct {
		what    string
		labels  map[string]string
		atLeast float64
	}{
		{"200s from reviews v1", with(map[string]string{
			"response_code": "200", "response_flags": "-",
			"destination_service":            "reviews.telemetry.svc.cluster.local",
			"destination_service_name":       "reviews",
			"destination_service_namespace":  "telemetry",
			"destination_principal":          "spiffe://cluster.local/ns/telemetry/sa/bookinfo-reviews",
			"destination_workload_namespace": "telemetry",
			"destination_app":                "reviews", "destination_version": "v1",
		}), ok},
		// No route, so no cluster: the waypoint names no destination.
		{"404s without a route", with(map[string]string{"response_code": "404", "response_flags": "NR"}), nr},
	} {
		var line string
		until(t, 10*time.Second, "istio_requests_total counting the "+s.what, func() error {
			m, err := waypointMetrics(t.Context(), wp)
			if err != nil {
				return err
			}
			line = cluster.MetricLine(m, "istio_requests_total", s.labels)
			if line == "" || cluster.MetricValue(line) < s.atLeast {
				return fmt.Errorf("no sample of %v with value ≥ %v in:\n%s", s.labels, s.atLeast, grepLines(m, "istio_requests_total{"))
			}
			return nil
		})
		t.Logf("%s: %s", s.what, line)
	}

	t.Run("access log", func(t *testing.T) {
		for _, want := range []struct {
			id    string
			check func(l accessLine) error
		}{
			{okID, func(l accessLine) error {
				if l.ResponseCode != 200 || l.ResponseFlags != "-" || l.Path != "/reviews/0" ||
					l.UpstreamHost != pods["reviews-v1"].Addr(9080).String() || l.DownstreamPeer != src {
					return fmt.Errorf("want 200 - /reviews/0 from %s to %s", src, pods["reviews-v1"].Addr(9080))
				}
				return nil
			}},
			{"telemetry-nr-0", func(l accessLine) error {
				if l.ResponseCode != 404 || l.ResponseFlags != "NR" || l.Path != "/ratings/0" || l.UpstreamHost != "" {
					return fmt.Errorf("want 404 NR /ratings/0 with no upstream host")
				}
				return nil
			}},
		} {
			var line accessLine
			until(t, 10*time.Second, "the access-log line of request "+want.id, func() error {
				var err error
				line, err = accessLogLine(wp, want.id)
				if err != nil {
					return err
				}
				return want.check(line)
			})
			t.Logf("request %s: %s", want.id, line.raw)
		}
	})
}

// accessLine is the part of an access-log line the test reads.
type accessLine struct {
	ResponseCode   int    `json:"response_code"`
	ResponseFlags  string `json:"response_flags"`
	Path           string `json:"path"`
	RequestID      string `json:"request_id"`
	UpstreamHost   string `json:"upstream_host"`
	DownstreamPeer string `json:"downstream_peer_uri_san"`
	raw            string
}

// accessLogLine finds the JSON line of request id in the waypoint's output.
func accessLogLine(wp *cluster.Pod, id string) (accessLine, error) {
	path := filepath.Join(wp.Node.Dir, "pods", fmt.Sprintf("pod-%s-%s-%s.log", wp.Namespace, wp.Name, string(wp.UID)[:8]))
	f, err := os.Open(path)
	if err != nil {
		return accessLine{}, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var l accessLine
		if json.Unmarshal(sc.Bytes(), &l) == nil && l.RequestID == id {
			l.raw = sc.Text()
			return l, nil
		}
	}
	return accessLine{}, fmt.Errorf("no line with request_id %q in %s", id, path)
}

// grepLines keeps the lines of text that start with prefix.
func grepLines(text, prefix string) string {
	var out []string
	for _, l := range strings.Split(text, "\n") {
		if strings.HasPrefix(l, prefix) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
