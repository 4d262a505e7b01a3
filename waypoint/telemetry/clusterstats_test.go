package telemetry

import (
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// TestClusterStats: each statistic is exported under Envoy's Prometheus
// name with the cluster as cluster_name, counters as counters and gauges
// as gauges, read afresh at each scrape.
func TestClusterStats(t *testing.T) {
	reg := prometheus.NewRegistry()
	n := uint64(1)
	_, err := NewClusterStats(reg, func(f func(cluster, stat string, v uint64, gauge bool)) {
		f("inbound-vip|80|http|web.default.svc.cluster.local", "outlier_detection.ejections_enforced_total", n, false)
		f("inbound-vip|80|http|web.default.svc.cluster.local", "outlier_detection.ejections_active", 1, true)
		f("inbound-vip|80|http|web.default.svc.cluster.local", "upstream_rq_pending_overflow", 2*n, false)
	})
	if err != nil {
		t.Fatal(err)
	}
	n = 3
	want := `
# HELP envoy_cluster_outlier_detection_ejections_active Envoy cluster statistic outlier_detection.ejections_active.
# TYPE envoy_cluster_outlier_detection_ejections_active gauge
envoy_cluster_outlier_detection_ejections_active{cluster_name="inbound-vip|80|http|web.default.svc.cluster.local"} 1
# HELP envoy_cluster_outlier_detection_ejections_enforced_total Envoy cluster statistic outlier_detection.ejections_enforced_total.
# TYPE envoy_cluster_outlier_detection_ejections_enforced_total counter
envoy_cluster_outlier_detection_ejections_enforced_total{cluster_name="inbound-vip|80|http|web.default.svc.cluster.local"} 3
# HELP envoy_cluster_upstream_rq_pending_overflow Envoy cluster statistic upstream_rq_pending_overflow.
# TYPE envoy_cluster_upstream_rq_pending_overflow counter
envoy_cluster_upstream_rq_pending_overflow{cluster_name="inbound-vip|80|http|web.default.svc.cluster.local"} 6
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want)); err != nil {
		t.Fatal(err)
	}
}
