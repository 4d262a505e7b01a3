package telemetry

import (
	"strings"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
)

// ClusterStatsFunc calls f with every statistic of every upstream cluster,
// under Envoy's name without its "cluster.<name>." prefix (e.g.
// "upstream_rq_pending_overflow",
// "outlier_detection.ejections_enforced_total"); gauge tells a gauge from a
// counter.
type ClusterStatsFunc func(f func(cluster, stat string, value uint64, gauge bool))

// ClusterStats exports the upstream clusters' statistics as Envoy's
// Prometheus output names them, so that dashboards and alerts written for
// Envoy read them unchanged: "envoy_cluster_" and the statistic's name with
// dots as underscores, labelled cluster_name (the label Istio's proxies
// use), e.g.
//
//	envoy_cluster_upstream_rq_pending_overflow{cluster_name="inbound-vip|80|http|reviews.default.svc.cluster.local"}
//	envoy_cluster_outlier_detection_ejections_enforced_total{cluster_name="…"}
//
// The values are read from the source at each scrape. Cluster names come
// from the waypoint's configuration, never from a request, so the series
// are bounded by the configuration.
type ClusterStats struct {
	src ClusterStatsFunc

	mu    sync.Mutex
	descs map[string]*prometheus.Desc
}

// NewClusterStats registers the cluster statistics of src with reg.
func NewClusterStats(reg prometheus.Registerer, src ClusterStatsFunc) (*ClusterStats, error) {
	c := &ClusterStats{src: src, descs: map[string]*prometheus.Desc{}}
	if err := reg.Register(c); err != nil {
		return nil, err
	}
	return c, nil
}

// Describe sends nothing: which statistics exist depends on the
// configuration (an unchecked collector).
func (c *ClusterStats) Describe(chan<- *prometheus.Desc) {}

// Collect implements prometheus.Collector.
func (c *ClusterStats) Collect(ch chan<- prometheus.Metric) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.src(func(cluster, stat string, v uint64, gauge bool) {
		name := "envoy_cluster_" + strings.ReplaceAll(stat, ".", "_")
		d := c.descs[name]
		if d == nil {
			d = prometheus.NewDesc(name, "Envoy cluster statistic "+stat+".", []string{"cluster_name"}, nil)
			c.descs[name] = d
		}
		t := prometheus.CounterValue
		if gauge {
			t = prometheus.GaugeValue
		}
		ch <- prometheus.MustNewConstMetric(d, t, float64(v), cluster)
	})
}
