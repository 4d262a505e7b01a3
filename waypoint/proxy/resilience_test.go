package proxy

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/zmesh/zmesh/waypoint/upstream"
)

const (
	clusterDefault  = "inbound-vip|80|http|reviews.default.svc.cluster.local"
	clusterBoth     = "inbound-vip|80|http/both|reviews.default.svc.cluster.local"
	clusterGRPCBoth = "inbound-vip|8081|http/both|reviews.default.svc.cluster.local"
	bodyOverflowUO  = "upstream connect error or disconnect/reset before headers. reset reason: overflow"
)

// clusterStat returns one statistic of cluster as the metrics export
// reads it.
func clusterStat(p *Proxy, cluster, stat string) uint64 {
	var v uint64
	p.ClusterStats(func(c, s string, n uint64, _ bool) {
		if c == cluster && s == stat {
			v = n
		}
	})
	return v
}

// withCluster applies the test mesh's configuration with edit applied to
// one cluster.
func (m *mesh) withCluster(t *testing.T, name string, edit func(*upstream.Cluster)) {
	t.Helper()
	s := m.snapshot(t, "v1")
	c := *s.Clusters[name]
	edit(&c)
	s.Clusters[name] = &c
	m.proxy.Update(s)
}

// eventually polls check every 50 ms until it returns "" or d passes.
func eventually(t *testing.T, d time.Duration, check func() string) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		msg := check()
		if msg == "" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %v: %s", d, msg)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestOutlierEjection: endpoints answering 503 are ejected after
// consecutive_5xx errors; with both ejected (and no panic threshold) the
// waypoint answers 503 "no healthy upstream", flag UH, without sending
// anything upstream; the ejections are counted; after the ejection time
// the endpoints serve again.
func TestOutlierEjection(t *testing.T) {
	m := newMesh(t, bounds{})
	m.withCluster(t, clusterBoth, func(c *upstream.Cluster) {
		c.LB.HealthyPanicThreshold = 0
		c.Outlier = &upstream.OutlierDetection{
			Consecutive5xx: 3, EnforcingConsecutive5xx: 100,
			ConsecutiveGatewayFailure: 5, EnforcingGatewayFailure: 0,
			Interval: 100 * time.Millisecond, BaseEjectionTime: time.Second, MaxEjectionTime: 300 * time.Second,
			MaxEjectionPercent: 100,
		}
	})
	c := m.h1Client(vipHTTP)
	// Round robin over two endpoints: six failures eject both.
	for i := range 6 {
		res, body := get(t, c, "http://reviews/both/fail-on-all")
		if res.StatusCode != 503 || !strings.HasPrefix(body, "failed on") {
			t.Fatalf("request %d: got %d %q, want the endpoints' own 503", i, res.StatusCode, body)
		}
		m.obs.next(t)
	}
	for len(m.requests) > 0 {
		<-m.requests
	}
	res, body := get(t, c, "http://reviews/both/ok")
	if res.StatusCode != 503 || body != "no healthy upstream" {
		t.Fatalf("with every endpoint ejected: got %d %q, want 503 \"no healthy upstream\"", res.StatusCode, body)
	}
	if rec := m.obs.next(t); rec.ResponseFlags != "UH" {
		t.Errorf("flags %q, want UH", rec.ResponseFlags)
	}
	if n := len(m.requests); n != 0 {
		t.Errorf("the apps saw %d requests while every endpoint was ejected", n)
	}
	if n := clusterStat(m.proxy, clusterBoth, "outlier_detection.ejections_enforced_total"); n != 2 {
		t.Errorf("ejections_enforced_total %d, want 2", n)
	}
	if n := clusterStat(m.proxy, clusterBoth, "outlier_detection.ejections_active"); n != 2 {
		t.Errorf("ejections_active %d, want 2", n)
	}
	// A configuration push keeps the ejections (the detector carries
	// over): still no healthy upstream.
	m.withCluster(t, clusterBoth, func(c *upstream.Cluster) {
		c.LB.HealthyPanicThreshold = 0
		c.Outlier = &upstream.OutlierDetection{Consecutive5xx: 3, EnforcingConsecutive5xx: 100,
			Interval: 100 * time.Millisecond, BaseEjectionTime: time.Second, MaxEjectionTime: 300 * time.Second, MaxEjectionPercent: 100}
	})
	if res, body := get(t, c, "http://reviews/both/ok"); res.StatusCode != 503 || body != "no healthy upstream" {
		t.Errorf("after a configuration push: got %d %q, want the ejections kept", res.StatusCode, body)
	}
	m.obs.next(t)
	eventually(t, 10*time.Second, func() string {
		res, body := get(t, c, "http://reviews/both/ok")
		m.obs.next(t)
		if res.StatusCode != 200 {
			return "no recovery: " + body
		}
		return ""
	})
}

// TestOutlierLocalOrigin: with split local-origin errors, failures to
// connect eject the endpoint (consecutive_local_origin_failure) and the
// other endpoint takes the traffic.
func TestOutlierLocalOrigin(t *testing.T) {
	m := newMesh(t, bounds{})
	// The impostor's endpoint fails its identity check at every connect;
	// put it beside a good endpoint.
	s := m.snapshot(t, "v1")
	bc := *s.Clusters[clusterBoth]
	bc.LB.HealthyPanicThreshold = 0
	bc.Outlier = &upstream.OutlierDetection{
		Consecutive5xx: 5, EnforcingConsecutive5xx: 100,
		SplitExternalLocalOriginErrors: true, ConsecutiveLocalOriginFailure: 2, EnforcingLocalOriginFailure: 100,
		Interval: time.Second, BaseEjectionTime: 30 * time.Second, MaxEjectionTime: 300 * time.Second, MaxEjectionPercent: 50,
	}
	s.Clusters[clusterBoth] = &bc
	a := *s.Assignments[clusterBoth]
	a.Priorities = [][]upstream.Locality{{{Endpoints: []upstream.Endpoint{ep(podEvil, 8080, v1ID, "v1"), ep(podV2, 8080, v2ID, "v2")}}}}
	s.Assignments[clusterBoth] = &a
	m.proxy.Update(s)
	c := m.h1Client(vipHTTP)
	failures := 0
	for range 20 {
		res, _ := get(t, c, "http://reviews/both/ok")
		if res.StatusCode != 200 {
			failures++
		}
		m.obs.next(t)
	}
	if failures != 2 {
		t.Errorf("%d of 20 requests failed, want 2 (the connect failures that ejected the bad endpoint)", failures)
	}
	if n := clusterStat(m.proxy, clusterBoth, "outlier_detection.ejections_enforced_consecutive_local_origin_failure"); n != 1 {
		t.Errorf("ejections_enforced_consecutive_local_origin_failure %d, want 1", n)
	}
}

// TestPendingOverflow: with one connection allowed and one request
// pending, a third concurrent request is refused with Envoy's overflow
// reply, flag UO; the pending one is served once the first ends.
func TestPendingOverflow(t *testing.T) {
	m := newMesh(t, bounds{})
	m.withCluster(t, clusterDefault, func(c *upstream.Cluster) {
		c.Limits = upstream.Limits{MaxConnections: 1, MaxPendingRequests: 1, MaxRequests: 1024, MaxRetries: 3}
		c.ConnectTimeout = 20 * time.Second
	})
	c := m.h1Client(vipHTTP)
	type result struct {
		code int
		body string
	}
	results := make(chan result, 2)
	var wg sync.WaitGroup
	send := func() {
		defer wg.Done()
		res, body := get(t, c, "http://reviews/app/wait")
		results <- result{res.StatusCode, body}
	}
	wg.Add(1)
	go send()
	<-m.waiting // the first holds the only connection
	wg.Add(1)
	go send()
	eventually(t, 10*time.Second, func() string {
		if n := clusterStat(m.proxy, clusterDefault, "circuit_breakers.default.remaining_pending"); n != 0 {
			return "the second request is not pending"
		}
		return ""
	})
	res, body := get(t, c, "http://reviews/app/wait")
	if res.StatusCode != 503 || body != bodyOverflowUO || res.Header.Get("X-Envoy-Overloaded") != "true" {
		t.Errorf("third request: got %d %q (x-envoy-overloaded %q), want 503 %q", res.StatusCode, body, res.Header.Get("X-Envoy-Overloaded"), bodyOverflowUO)
	}
	close(m.release)
	wg.Wait()
	close(results)
	for r := range results {
		if r.code != 200 {
			t.Errorf("a held request got %d %q, want 200", r.code, r.body)
		}
	}
	flags := map[string]int{}
	for range 3 {
		flags[m.obs.next(t).ResponseFlags]++
	}
	if flags["UO"] != 1 || flags["-"] != 2 {
		t.Errorf("record flags %v, want one UO and two -", flags)
	}
	if n := clusterStat(m.proxy, clusterDefault, "upstream_rq_pending_overflow"); n != 1 {
		t.Errorf("upstream_rq_pending_overflow %d, want 1", n)
	}
	if n := clusterStat(m.proxy, clusterDefault, "upstream_cx_overflow"); n < 2 {
		t.Errorf("upstream_cx_overflow %d, want at least 2", n)
	}
	// The slot is given back as the handler returns, which may be just
	// after the client read its answer; a slot never given back fails.
	eventually(t, 10*time.Second, func() string {
		if s := clusterStat(m.proxy, clusterDefault, "circuit_breakers.default.remaining_pending"); s != 1 {
			return fmt.Sprintf("remaining_pending %d after the requests, want 1", s)
		}
		return ""
	})
}

// TestMaxRequestsOverflow: http2MaxRequests 1 with a request in flight
// refuses the next at once with 503 UO.
func TestMaxRequestsOverflow(t *testing.T) {
	m := newMesh(t, bounds{})
	m.withCluster(t, clusterDefault, func(c *upstream.Cluster) {
		c.Limits = upstream.Limits{MaxConnections: 1024, MaxPendingRequests: 1024, MaxRequests: 1, MaxRetries: 3}
	})
	c := m.h2Client(vipHTTP)
	done := make(chan int, 1)
	go func() {
		res, _ := get(t, c, "http://reviews/app/wait")
		done <- res.StatusCode
	}()
	<-m.waiting
	res, body := get(t, c, "http://reviews/app")
	if res.StatusCode != 503 || body != bodyOverflowUO {
		t.Errorf("second request: got %d %q, want 503 overflow", res.StatusCode, body)
	}
	close(m.release)
	if code := <-done; code != 200 {
		t.Errorf("first request: %d, want 200", code)
	}
	if n := clusterStat(m.proxy, clusterDefault, "upstream_rq_pending_overflow"); n != 1 {
		t.Errorf("upstream_rq_pending_overflow %d, want 1", n)
	}
	// The slot is back: the next request passes.
	if res, body := get(t, c, "http://reviews/app"); res.StatusCode != 200 {
		t.Errorf("after the first ended: got %d %q", res.StatusCode, body)
	}
}

// TestMaxConnectionsTCP: a TCP tunnel over max_connections is refused,
// flag UO.
func TestMaxConnectionsTCP(t *testing.T) {
	m := newMesh(t, bounds{})
	const tcpCluster = "inbound-vip|9000|tcp|reviews.default.svc.cluster.local"
	m.withCluster(t, tcpCluster, func(c *upstream.Cluster) {
		c.Limits = upstream.Limits{MaxConnections: 1, MaxPendingRequests: 1, MaxRequests: 1, MaxRetries: 1}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	first, err := m.tunnel(ctx, vipTCP)
	if err != nil {
		t.Fatal(err)
	}
	defer first.Close()
	buf := make([]byte, 3)
	if _, err := first.Read(buf); err != nil || string(buf) != "v1:" {
		t.Fatalf("first tunnel: %q %v", buf, err)
	}
	if second, err := m.tunnel(ctx, vipTCP); err == nil {
		second.Close()
		t.Fatal("a second tunnel over max_connections 1 was accepted")
	}
	first.Close()
	for {
		if rec := m.obs.next(t); rec.ResponseFlags == "UO" {
			break
		}
	}
	if n := clusterStat(m.proxy, tcpCluster, "upstream_cx_overflow"); n != 1 {
		t.Errorf("upstream_cx_overflow %d, want 1", n)
	}
}

// TestMaxRequestsPerConnection: with max_requests_per_connection 2 an
// upstream connection, HTTP/1.1 or HTTP/2, carries two requests, then a
// new one is opened.
func TestMaxRequestsPerConnection(t *testing.T) {
	m := newMesh(t, bounds{})
	m.withCluster(t, clusterDefault, func(c *upstream.Cluster) {
		c.HTTP.MaxRequestsPerConnection = 2
	})
	for _, tc := range []struct {
		proto string
		c     *http.Client
	}{{"HTTP/1.1", m.h1Client(vipHTTP)}, {"HTTP/2.0", m.h2Client(vipHTTP)}} {
		before := len(m.pods[podV1].tunnels())
		for range 6 {
			res, body := get(t, tc.c, "http://reviews/app")
			if res.StatusCode != 200 || res.Header.Get("X-Proto") != tc.proto {
				t.Fatalf("got %d %q over %s, want 200 over %s", res.StatusCode, body, res.Header.Get("X-Proto"), tc.proto)
			}
		}
		if n := len(m.pods[podV1].tunnels()) - before; n != 3 {
			t.Errorf("%s: 6 requests opened %d upstream connections, want 3", tc.proto, n)
		}
	}
}

// TestRetryBudget: max_retries 0 leaves no retry: a failed attempt stands,
// flagged UO, and the app sees it once.
func TestRetryBudget(t *testing.T) {
	m := newMesh(t, bounds{})
	m.withCluster(t, clusterBoth, func(c *upstream.Cluster) {
		c.Limits.MaxRetries = 0
	})
	c := m.h1Client(vipHTTP)
	res, _ := get(t, c, "http://reviews/retry/fail-on-all")
	if res.StatusCode != 503 {
		t.Errorf("got %d, want the upstream's 503", res.StatusCode)
	}
	if rec := m.obs.next(t); rec.ResponseFlags != "UO" {
		t.Errorf("flags %q, want UO", rec.ResponseFlags)
	}
	if n := len(m.requests); n != 1 {
		t.Errorf("the apps saw %d attempts, want 1", n)
	}
	if n := clusterStat(m.proxy, clusterBoth, "upstream_rq_retry_overflow"); n != 1 {
		t.Errorf("upstream_rq_retry_overflow %d, want 1", n)
	}
}

// TestGRPCRetryUnavailable: a gRPC UNAVAILABLE (grpc-status in a
// trailers-only response) is retried on the other endpoint; UNAVAILABLE
// on every endpoint counts towards ejection as a 503 would.
func TestGRPCRetryUnavailable(t *testing.T) {
	m := newMesh(t, bounds{})
	m.withCluster(t, clusterGRPCBoth, func(c *upstream.Cluster) {
		c.LB.HealthyPanicThreshold = 0
		c.Outlier = &upstream.OutlierDetection{Consecutive5xx: 3, EnforcingConsecutive5xx: 100,
			Interval: time.Second, BaseEjectionTime: 30 * time.Second, MaxEjectionTime: 300 * time.Second, MaxEjectionPercent: 100}
	})
	cc, err := grpc.NewClient("passthrough:///reviews",
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return m.tunnel(ctx, vipHTTP) }))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	client := grpc_testing.NewTestServiceClient(cc)
	call := func(failOn string) (string, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		var hdr metadata.MD
		_, err := client.UnaryCall(metadata.AppendToOutgoingContext(ctx, "fail-on", failOn), &grpc_testing.SimpleRequest{}, grpc.Header(&hdr))
		if p := hdr.Get("x-pod"); len(p) == 1 {
			return p[0], err
		}
		return "", err
	}
	for i := range 4 {
		pod, err := call("v1")
		if err != nil || pod != "v2" {
			t.Fatalf("call %d: pod %q, %v; want v2 after a retry", i, pod, err)
		}
		m.obs.next(t)
	}
	for len(m.requests) > 0 {
		<-m.requests
	}
	// Every endpoint UNAVAILABLE: each call makes 3 attempts; the
	// third failure on each endpoint ejects it.
	for range 2 {
		_, err := call("all")
		if status.Code(err) != codes.Unavailable {
			t.Fatalf("all failing: %v, want UNAVAILABLE", err)
		}
		m.obs.next(t)
	}
	_, err = call("all")
	if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "no healthy upstream") {
		t.Errorf("with both endpoints ejected: %v, want UNAVAILABLE from \"no healthy upstream\"", err)
	}
	if n := clusterStat(m.proxy, clusterGRPCBoth, "outlier_detection.ejections_enforced_total"); n != 2 {
		t.Errorf("ejections_enforced_total %d, want 2", n)
	}
}

// TestConnectTimeoutEjects: an endpoint whose ztunnel accepts TCP and
// never answers fails each attempt at the cluster's connect timeout (503
// UF, not a hang), and outlier detection, counting connect failures as
// 503s, ejects it: the other endpoint serves from then on.
func TestConnectTimeoutEjects(t *testing.T) {
	m := newMesh(t, bounds{})
	silent, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { silent.Close() })
	held := make(chan net.Conn, 64)
	go func() {
		for {
			c, err := silent.Accept()
			if err != nil {
				return
			}
			held <- c // kept open, never answered
		}
	}()
	t.Cleanup(func() {
		for len(held) > 0 {
			(<-held).Close()
		}
	})
	blackhole := netip.MustParseAddr("10.1.0.9")
	m.pods[blackhole] = &fakePod{ip: blackhole, id: v1ID, addr: silent.Addr().String()}

	s := m.snapshot(t, "v1")
	bc := *s.Clusters[clusterBoth]
	bc.ConnectTimeout = 300 * time.Millisecond
	bc.LB.HealthyPanicThreshold = 0
	bc.Outlier = &upstream.OutlierDetection{Consecutive5xx: 2, EnforcingConsecutive5xx: 100,
		Interval: time.Second, BaseEjectionTime: 30 * time.Second, MaxEjectionTime: 300 * time.Second, MaxEjectionPercent: 50}
	s.Clusters[clusterBoth] = &bc
	a := *s.Assignments[clusterBoth]
	a.Priorities = [][]upstream.Locality{{{Endpoints: []upstream.Endpoint{ep(blackhole, 8080, v1ID, "v1"), ep(podV2, 8080, v2ID, "v2")}}}}
	s.Assignments[clusterBoth] = &a
	m.proxy.Update(s)

	c := m.h1Client(vipHTTP)
	failures := 0
	for range 12 {
		res, body := get(t, c, "http://reviews/both/ok")
		switch {
		case res.StatusCode == 200:
		case res.StatusCode == 503 && body == "upstream connect error or disconnect/reset before headers. reset reason: connection failure":
			failures++
		default:
			t.Fatalf("got %d %q", res.StatusCode, body)
		}
		if rec := m.obs.next(t); res.StatusCode == 503 && rec.ResponseFlags != "UF" {
			t.Errorf("flags %q, want UF", rec.ResponseFlags)
		}
	}
	if failures != 2 {
		t.Errorf("%d connect failures, want 2 (then the endpoint is ejected)", failures)
	}
}

// TestGRPCOutcomeCountedOnce: each attempt's grpc-status counts once
// towards ejection, also the last one, whose trailers-only response is
// passed on as headers then trailers: three attempts of one call on a
// single endpoint are three errors, below a threshold of four.
func TestGRPCOutcomeCountedOnce(t *testing.T) {
	m := newMesh(t, bounds{})
	s := m.snapshot(t, "v1")
	gc := *s.Clusters[clusterGRPCBoth]
	gc.LB.HealthyPanicThreshold = 0
	gc.Outlier = &upstream.OutlierDetection{Consecutive5xx: 4, EnforcingConsecutive5xx: 100,
		Interval: time.Second, BaseEjectionTime: 30 * time.Second, MaxEjectionTime: 300 * time.Second, MaxEjectionPercent: 100}
	s.Clusters[clusterGRPCBoth] = &gc
	a := *s.Assignments[clusterGRPCBoth]
	a.Priorities = [][]upstream.Locality{{{Endpoints: []upstream.Endpoint{ep(podV1, 8081, v1ID, "v1")}}}}
	s.Assignments[clusterGRPCBoth] = &a
	m.proxy.Update(s)
	cc, err := grpc.NewClient("passthrough:///reviews",
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return m.tunnel(ctx, vipHTTP) }))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	call := func() error {
		_, err := grpc_testing.NewTestServiceClient(cc).UnaryCall(metadata.AppendToOutgoingContext(ctx, "fail-on", "all"), &grpc_testing.SimpleRequest{})
		m.obs.next(t)
		return err
	}
	if err := call(); status.Code(err) != codes.Unavailable {
		t.Fatalf("first call: %v, want UNAVAILABLE", err)
	}
	if n := len(m.requests); n != 3 {
		t.Errorf("the app saw %d attempts, want 3", n)
	}
	if n := clusterStat(m.proxy, clusterGRPCBoth, "outlier_detection.ejections_enforced_total"); n != 0 {
		t.Fatalf("ejections after 3 errors with a threshold of 4: %d, want 0", n)
	}
	call()
	if n := clusterStat(m.proxy, clusterGRPCBoth, "outlier_detection.ejections_enforced_total"); n != 1 {
		t.Errorf("ejections after the fourth error: %d, want 1", n)
	}
}
