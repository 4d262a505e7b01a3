package l7

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/zmesh/zmesh/e2e/cluster"
)

// TestTelemetryLabels reads the workload labels the waypoint reports of
// sleep's requests to reviews (l7-telemetry-labels.yaml, both Deployments):
// the source named by workload discovery from the client pod's address and
// its proven identity (Deployment name, app and version labels through the
// canonical service and revision), the destination by the endpoint's
// metadata (the Deployment's name, app.kubernetes.io/name and version
// labels), and the access log's route_name as istiod names a named rule's
// named match.
func TestTelemetryLabels(t *testing.T) {
	t.Parallel()
	pods := withWaypoint(t, "l7-telemetry-labels.yaml", "tlabels", 2)
	wp := waypointPod(t, pods)
	var sleep *cluster.Pod
	for name, p := range pods {
		if strings.HasPrefix(name, "sleep-") {
			sleep = p
		}
	}
	if sleep == nil {
		t.Fatalf("no sleep pod among %d pods", len(pods))
	}
	c := client(sleep)
	base := "http://" + serviceAddr(t, "tlabels", "reviews", 9080).String()
	// The waypoint's own 404 for a path no route serves says the
	// VirtualService is in force.
	untilCode(t, "GET /ratings/0 answered 404 by the waypoint", c, base+"/ratings/0", nil, http.StatusNotFound)
	const n = 10
	for i := range n {
		h := http.Header{"X-Request-Id": {fmt.Sprintf("tlabels-%d", i)}}
		code, _, _, err := send(c, http.MethodGet, base+"/reviews/0", h)
		if err != nil || code != http.StatusOK {
			t.Fatalf("GET /reviews/0: %d %v", code, err)
		}
	}

	want := map[string]string{
		"reporter":                       "waypoint",
		"source_principal":               "spiffe://cluster.local/ns/tlabels/sa/sleep",
		"source_workload":                "sleep",
		"source_workload_namespace":      "tlabels",
		"source_app":                     "sleep",
		"source_version":                 "v3",
		"source_canonical_service":       "sleep",
		"source_canonical_revision":      "v3",
		"source_cluster":                 "Kubernetes",
		"destination_principal":          "spiffe://cluster.local/ns/tlabels/sa/bookinfo-reviews",
		"destination_workload":           "reviews-v2",
		"destination_workload_namespace": "tlabels",
		"destination_app":                "reviews",
		"destination_version":            "v2",
		"destination_canonical_service":  "reviews",
		"destination_canonical_revision": "v2",
		"destination_cluster":            "Kubernetes",
		"destination_service":            "reviews.tlabels.svc.cluster.local",
		"response_code":                  "200",
	}
	var line string
	until(t, 20*time.Second, "istio_requests_total with both sides' workload labels", func() error {
		m, err := waypointMetrics(t.Context(), wp)
		if err != nil {
			return err
		}
		line = cluster.MetricLine(m, "istio_requests_total", want)
		if line == "" || cluster.MetricValue(line) < n {
			return fmt.Errorf("no sample of %v with value ≥ %d in:\n%s", want, n, grepLines(m, "istio_requests_total{"))
		}
		return nil
	})
	t.Logf("%s", line)

	var raw string
	until(t, 10*time.Second, "the access-log line of request tlabels-0", func() error {
		l, err := accessLogLine(wp, "tlabels-0")
		if err != nil {
			return err
		}
		raw = l.raw
		var e struct {
			RouteName *string `json:"route_name"`
		}
		if err := json.Unmarshal([]byte(l.raw), &e); err != nil {
			return err
		}
		if e.RouteName == nil || *e.RouteName != "reviews-route.v2" {
			return fmt.Errorf("route_name %v, want reviews-route.v2", e.RouteName)
		}
		return nil
	})
	t.Logf("access log: %s", raw)
}
