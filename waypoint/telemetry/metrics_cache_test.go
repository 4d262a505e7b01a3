package telemetry

import (
	"strconv"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// TestMetricsObserveCached: a request whose label set was seen before is
// counted without an allocation (its series are found in one lookup, the
// response code's label value is not formatted anew), and into the same
// series as the first.
func TestMetricsObserveCached(t *testing.T) {
	m, err := NewMetrics(prometheus.NewRegistry(), MetricsOptions{})
	if err != nil {
		t.Fatal(err)
	}
	r := request()
	m.Observe(r)
	if a := testing.AllocsPerRun(100, func() { m.Observe(r) }); a != 0 {
		t.Errorf("%v allocations per observed request, want 0", a)
	}
	if n := testutil.CollectAndCount(m.requests); n != 1 {
		t.Errorf("%d istio_requests_total series, want 1", n)
	}
	var lv labelValues
	for k, v := range m.series {
		lv = k
		if got := testutil.ToFloat64(v.requests); got != 102 {
			t.Errorf("istio_requests_total %v, want 102", got)
		}
	}
	if got := testutil.ToFloat64(m.requests.WithLabelValues(lv[:]...)); got != 102 {
		t.Errorf("the vector's series: %v, want 102", got)
	}
}

// TestMetricsSeriesCacheBounded: label sets beyond the cache's bound are
// still counted, looked up in the vectors, and the cache stops growing.
func TestMetricsSeriesCacheBounded(t *testing.T) {
	m, err := NewMetrics(prometheus.NewRegistry(), MetricsOptions{})
	if err != nil {
		t.Fatal(err)
	}
	m.maxSeries = 5
	r := request()
	for i := range 20 {
		r.DestinationService = "svc-" + strconv.Itoa(i)
		m.Observe(r)
		m.Observe(r)
	}
	if len(m.series) != 5 {
		t.Errorf("%d cached label sets, want 5", len(m.series))
	}
	if n := testutil.CollectAndCount(m.requests); n != 20 {
		t.Errorf("%d istio_requests_total series, want 20", n)
	}
	if got := testutil.ToFloat64(m.requests.WithLabelValues(lvOf(m, r)...)); got != 2 {
		t.Errorf("last label set counted %v times, want 2", got)
	}
}

// lvOf is r's HTTP label values as m reports them.
func lvOf(m *Metrics, r *Record) []string {
	src, dst := m.source(r.Source), m.peer(r.Destination)
	return []string{Reporter,
		src.workload, src.canonicalService, src.canonicalRevision, src.namespace,
		src.principal, src.app, src.version, src.cluster,
		dst.workload, dst.namespace, dst.principal, dst.app,
		dst.version, value(r.DestinationService), value(r.DestinationServiceName), value(r.DestinationServiceNamespace),
		dst.canonicalService, dst.canonicalRevision, dst.cluster,
		protocol(r), strconv.Itoa(r.ResponseCode), grpcStatus(r.GRPCStatus), flags(r.ResponseFlags), "mutual_tls"}
}
