package telemetry

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"net/http/httptest"
	"net/netip"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// request is a gRPC request from productpage v1 to reviews v2 through the
// waypoint, allowed by one policy.
func request() *Record {
	return &Record{
		Start: time.Date(2026, 12, 5, 21, 4, 5, 678_900_000, time.UTC), Duration: 12345 * time.Microsecond,
		Protocol: "HTTP/2", Method: "POST", Path: "/reviews.Reviews/Get?x=1", Authority: "reviews.default.svc.cluster.local:9080",
		UserAgent: "grpc-go/1.70", RequestID: "8c1f0a3e-1b2c-4d5e-8f90-0123456789ab",
		ResponseCode: 200, ResponseFlags: "", GRPCStatus: "0", BytesReceived: 17, BytesSent: 2048,
		RouteName: "default", UpstreamCluster: "inbound-vip|9080|http/v2|reviews.default.svc.cluster.local",
		UpstreamHost: netip.MustParseAddrPort("10.1.2.7:9080"), PolicyName: "ns[default]-policy[allow-productpage]-rule[0]",
		Source: Peer{Principal: "spiffe://cluster.local/ns/default/sa/bookinfo-productpage", Workload: "productpage-v1", Namespace: "default",
			App: "productpage", Version: "v1", Addr: netip.MustParseAddrPort("10.1.1.4:43210")},
		Destination: Peer{Principal: "spiffe://cluster.local/ns/default/sa/bookinfo-reviews", Workload: "reviews-v2", Namespace: "default",
			App: "reviews", Version: "v2", Addr: netip.MustParseAddrPort("10.1.2.7:9080")},
		DestinationService: "reviews.default.svc.cluster.local", DestinationServiceName: "reviews", DestinationServiceNamespace: "default",
	}
}

// TestAccessLogLine is the golden access-log line.
func TestAccessLogLine(t *testing.T) {
	var out bytes.Buffer
	l, err := NewAccessLog(&out, 0, prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	l.Observe(request())
	noRoute := &Record{Start: time.Date(2026, 12, 5, 21, 4, 6, 0, time.UTC), Protocol: "HTTP/1.1", Method: "GET", Path: "/nowhere",
		Authority: "reviews", ResponseCode: 404, ResponseFlags: "NR", BytesSent: 0}
	l.Observe(noRoute)
	l.Close()
	want := `{"start_time":"2026-12-05T21:04:05.678Z","route_name":"default","method":"POST","path":"/reviews.Reviews/Get?x=1","protocol":"HTTP/2","response_code":200,"response_flags":"-","grpc_status":0,"bytes_received":17,"bytes_sent":2048,"duration":12,"user_agent":"grpc-go/1.70","request_id":"8c1f0a3e-1b2c-4d5e-8f90-0123456789ab","authority":"reviews.default.svc.cluster.local:9080","upstream_host":"10.1.2.7:9080","upstream_cluster":"inbound-vip|9080|http/v2|reviews.default.svc.cluster.local","downstream_remote_address":"10.1.1.4:43210","downstream_peer_uri_san":"spiffe://cluster.local/ns/default/sa/bookinfo-productpage","upstream_peer_uri_san":"spiffe://cluster.local/ns/default/sa/bookinfo-reviews","authorization_policy":"ns[default]-policy[allow-productpage]-rule[0]","destination_service":"reviews.default.svc.cluster.local"}
{"start_time":"2026-12-05T21:04:06.000Z","route_name":null,"method":"GET","path":"/nowhere","protocol":"HTTP/1.1","response_code":404,"response_flags":"NR","grpc_status":null,"bytes_received":0,"bytes_sent":0,"duration":0,"user_agent":null,"request_id":null,"authority":"reviews","upstream_host":null,"upstream_cluster":null,"downstream_remote_address":null,"downstream_peer_uri_san":null,"upstream_peer_uri_san":null,"authorization_policy":null,"destination_service":null}
`
	if out.String() != want {
		t.Errorf("access log:\n%s\nwant:\n%s", out.String(), want)
	}
	for _, line := range strings.Split(strings.TrimSpace(out.String()), "\n") {
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Errorf("line is not JSON: %v", err)
		}
	}
}

// blockingWriter blocks every Write until released.
type blockingWriter struct {
	release chan struct{}
	mu      sync.Mutex
	n       int
}

func (w *blockingWriter) Write(p []byte) (int, error) {
	<-w.release
	w.mu.Lock()
	w.n += bytes.Count(p, []byte("\n"))
	w.mu.Unlock()
	return len(p), nil
}

// TestAccessLogNeverBlocks: with a writer that does not return, Observe
// still returns at once; what the buffer cannot hold is counted as
// dropped, and the rest is written once the writer moves.
func TestAccessLogNeverBlocks(t *testing.T) {
	w := &blockingWriter{release: make(chan struct{})}
	reg := prometheus.NewRegistry()
	l, err := NewAccessLog(w, 8, reg)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		for i := 0; i < 1000; i++ {
			l.Observe(request())
		}
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		close(w.release)
		t.Fatal("Observe blocked on a stuck writer")
	}
	// The queue (8) and the lines the writer's 32 KiB buffer takes
	// before its first Write (some 50 of these) are kept; the rest is
	// dropped.
	if d := l.Dropped(); d < 1000-8-64 || d > 1000-8 {
		t.Errorf("%v dropped, want 928 to 992", d)
	}
	if got := testutil.ToFloat64(l.dropped); got != l.Dropped() {
		t.Errorf("metric %v, Dropped %v", got, l.Dropped())
	}
	close(w.release)
	l.Close()
	if int(l.Dropped())+w.n != 1000 {
		t.Errorf("%d written + %v dropped != 1000", w.n, l.Dropped())
	}
	l.Observe(request()) // after Close: ignored, no panic
}

var update = flag.Bool("update", false, "rewrite testdata/metrics.golden")

// TestMetricLabels is the golden metric exposition (testdata/metrics.golden)
// for a gRPC request, an HTTP request that found no route, and a TCP
// connection: Istio's names, labels, buckets and units.
func TestMetricLabels(t *testing.T) {
	reg := prometheus.NewRegistry()
	m, err := NewMetrics(reg, MetricsOptions{})
	if err != nil {
		t.Fatal(err)
	}
	m.Observe(request())
	noRoute := &Record{Protocol: "HTTP/1.1", ResponseCode: 404, ResponseFlags: "NR", Duration: 300 * time.Microsecond, BytesSent: 0,
		DestinationService: "reviews.default.svc.cluster.local", DestinationServiceName: "reviews", DestinationServiceNamespace: "default"}
	m.Observe(noRoute)
	tcp := request()
	tcp.Protocol, tcp.GRPCStatus, tcp.ResponseCode, tcp.BytesReceived, tcp.BytesSent = "TCP", "", 0, 100, 5000
	m.Observe(tcp)

	const golden = "testdata/metrics.golden"
	if *update {
		if err := os.WriteFile(golden, []byte(exposition(reg)), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatal(err)
	}
	if err := testutil.GatherAndCompare(reg, bytes.NewReader(want)); err != nil {
		t.Error(err)
	}
	// Spot checks that the golden file itself says what Istio says.
	for _, s := range []string{
		`istio_requests_total{connection_security_policy="mutual_tls",destination_app="reviews",destination_canonical_revision="v2",destination_canonical_service="reviews",destination_cluster="Kubernetes",destination_principal="spiffe://cluster.local/ns/default/sa/bookinfo-reviews",destination_service="reviews.default.svc.cluster.local",destination_service_name="reviews",destination_service_namespace="default",destination_version="v2",destination_workload="reviews-v2",destination_workload_namespace="default",grpc_response_status="0",reporter="waypoint",request_protocol="grpc",response_code="200",response_flags="-",source_app="productpage",source_canonical_revision="v1",source_canonical_service="productpage",source_cluster="Kubernetes",source_principal="spiffe://cluster.local/ns/default/sa/bookinfo-productpage",source_version="v1",source_workload="productpage-v1",source_workload_namespace="default"} 1`,
		`grpc_response_status="",reporter="waypoint",request_protocol="http",response_code="404",response_flags="NR",source_app="unknown",source_canonical_revision="latest",source_canonical_service="unknown",source_cluster="Kubernetes",source_principal="unknown",source_version="unknown",source_workload="unknown",source_workload_namespace="unknown",le="0.5"} 1`,
		`source_workload_namespace="default",le="25"} 1`, `source_workload_namespace="default",le="10"} 0`,
		`istio_request_duration_milliseconds_sum{`, `} 12.345`,
		`istio_tcp_sent_bytes_total{`, `request_protocol="tcp",response_flags="-",source_app="productpage"`, `} 5000`,
		`istio_tcp_connections_closed_total{`,
	} {
		if !bytes.Contains(want, []byte(s)) {
			t.Errorf("golden exposition lacks %s", s)
		}
	}
}

// exposition is the registry's text exposition.
func exposition(reg *prometheus.Registry) string {
	rec := httptest.NewRecorder()
	promhttp.HandlerFor(reg, promhttp.HandlerOpts{}).ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	return rec.Body.String()
}

// gatherContains checks that the text exposition holds each line.
func gatherContains(reg *prometheus.Registry, lines ...string) error {
	text := exposition(reg)
	for _, l := range lines {
		if !strings.Contains(text, l+"\n") {
			return fmt.Errorf("exposition lacks\n%s\nin\n%s", l, text)
		}
	}
	return nil
}

// TestSourceCardinalityBounded: a client varying what it presents gets
// MaxSources series of its own, then shares one "overflow" series; long
// and invalid values are cut and cleaned; a made-up grpc-status is
// "unknown".
func TestSourceCardinalityBounded(t *testing.T) {
	reg := prometheus.NewRegistry()
	m, err := NewMetrics(reg, MetricsOptions{MaxSources: 3})
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 50; i++ {
		r := request()
		r.Source.Workload = fmt.Sprintf("w-%d", i)
		m.Observe(r)
	}
	if n := testutil.CollectAndCount(m.requests); n != 4 {
		t.Errorf("%d series after 50 sources with MaxSources 3, want 4", n)
	}
	if v := testutil.ToFloat64(m.overflowed); v != 47 {
		t.Errorf("overflow count %v, want 47", v)
	}
	over := `source_app="overflow",source_canonical_revision="overflow",source_canonical_service="overflow",source_cluster="Kubernetes",source_principal="overflow",source_version="overflow",source_workload="overflow",source_workload_namespace="overflow"} 47`
	if err := gatherContains(reg, `request_protocol="grpc",response_code="200",response_flags="-",`+over); err != nil {
		t.Error(err)
	}

	if got := value(strings.Repeat("é", 200)); len(got) > maxLabelLen || got != strings.Repeat("é", 126) {
		t.Errorf("long value cut to %d bytes: %q", len(got), got)
	}
	if got := value("a\xffb"); got != "a\uFFFDb" {
		t.Errorf("invalid UTF-8 kept: %q", got)
	}
	for in, want := range map[string]string{"": "", "0": "0", "16": "16", "17": "unknown", "-1": "unknown", "07": "unknown", "OK": "unknown"} {
		if got := grpcStatus(in); got != want {
			t.Errorf("grpcStatus(%q) = %q, want %q", in, got, want)
		}
	}
}
