package xds

import (
	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	pushes      *prometheus.CounterVec
	responses   *prometheus.CounterVec
	nacks       *prometheus.CounterVec
	resources   *prometheus.GaugeVec
	connected   prometheus.Gauge
	setDuration *prometheus.HistogramVec
	pushLatency *prometheus.HistogramVec
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		pushes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "zmeshd_xds_pushes_total", Help: "Config changes pushed, per type.",
		}, []string{"type"}),
		responses: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "zmeshd_xds_responses_total", Help: "Responses sent to proxies, per type.",
		}, []string{"type"}),
		nacks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "zmeshd_xds_nacks_total", Help: "Responses proxies rejected, per type.",
		}, []string{"type"}),
		resources: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "zmeshd_xds_resources", Help: "Resources currently served, per type.",
		}, []string{"type"}),
		connected: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "zmeshd_xds_connected_proxies", Help: "Proxies with an open ADS stream.",
		}),
		setDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "zmeshd_xds_diff_seconds", Help: "Time to diff a new resource set and hand the changes to the cache.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 4, 10),
		}, []string{"type"}),
		pushLatency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "zmeshd_xds_push_latency_seconds", Help: "Time from a config change being diffed to a response carrying it being sent to a proxy.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 4, 10),
		}, []string{"type"}),
	}
	if reg != nil {
		reg.MustRegister(m.pushes, m.responses, m.nacks, m.resources, m.connected, m.setDuration, m.pushLatency)
	}
	return m
}
