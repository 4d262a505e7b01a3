package proxy

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/cors/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/retry/host/previous_hosts/v3"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"golang.org/x/net/http2"
	"golang.org/x/net/websocket"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"sigs.k8s.io/yaml"

	"github.com/zmesh/zmesh/identity"
	"github.com/zmesh/zmesh/internal/hbone"
	"github.com/zmesh/zmesh/waypoint/config"
	"github.com/zmesh/zmesh/waypoint/route"
	"github.com/zmesh/zmesh/waypoint/telemetry"
	"github.com/zmesh/zmesh/waypoint/upstream"
)

var (
	waypointID = identity.MustWorkloadID("cluster.local", "default", "waypoint")
	sleepID    = identity.MustWorkloadID("cluster.local", "default", "sleep")
	v1ID       = identity.MustWorkloadID("cluster.local", "default", "reviews-v1")
	v2ID       = identity.MustWorkloadID("cluster.local", "default", "reviews-v2")
	evilID     = identity.MustWorkloadID("cluster.local", "default", "evil")
	// consumerID is a client of another namespace than the others'.
	consumerID = identity.MustWorkloadID("cluster.local", "consumer", "client")
)

var (
	pkiOnce sync.Once
	pkiSrc  *identity.StaticSource
	pkiErr  error
)

// testCerts returns a source holding certificates for every test identity
// from one CA per test binary (key generation is the slow part).
func testCerts(t testing.TB) *identity.StaticSource {
	pkiOnce.Do(func() {
		dir, err := osMkdirTemp()
		if err != nil {
			pkiErr = err
			return
		}
		ca, err := identity.LoadOrCreateCA(dir, identity.CAOptions{TrustDomain: spiffeid.RequireTrustDomainFromString("cluster.local")})
		if err != nil {
			pkiErr = err
			return
		}
		pkiSrc = identity.NewStaticSource(ca.Bundle())
		for _, id := range []spiffeid.ID{waypointID, sleepID, v1ID, v2ID, evilID, consumerID} {
			svid, err := ca.Issue(id, time.Hour)
			if err != nil {
				pkiErr = err
				return
			}
			pkiSrc.Put(svid)
		}
	})
	if pkiErr != nil {
		t.Fatal(pkiErr)
	}
	return pkiSrc
}

// Addresses of the test mesh. Pods and VIPs are never dialled: the
// proxy's DialUpstream maps a pod's HBONE address to its fake ztunnel on
// loopback, and the test client's tunnels name VIPs in their CONNECT.
var (
	vipHTTP  = netip.MustParseAddrPort("10.96.0.1:80")
	vipTCP   = netip.MustParseAddrPort("10.96.0.2:9000")
	vipSniff = netip.MustParseAddrPort("10.96.0.3:7000")
	vipNone  = netip.MustParseAddrPort("10.96.0.99:80")
	podV1    = netip.MustParseAddr("10.1.0.1")
	podV2    = netip.MustParseAddr("10.1.0.2")
	podEvil  = netip.MustParseAddr("10.1.0.3")
	// clientIP is the loopback address the test client dials the
	// waypoint from: the address the destination must see in Forwarded.
	clientIP = netip.MustParseAddr("127.0.0.7")
)

// recorder is a telemetry.Observer keeping every record.
type recorder struct {
	mu   sync.Mutex
	recs []telemetry.Record
	ch   chan telemetry.Record
	// instead, when set, receives the records in place of the recorder:
	// benchmarks give the proxy the waypoint's own telemetry.
	instead atomic.Pointer[telemetry.Observer]
}

func newRecorder() *recorder { return &recorder{ch: make(chan telemetry.Record, 1024)} }

func (r *recorder) Observe(rec *telemetry.Record) {
	if o := r.instead.Load(); o != nil {
		(*o).Observe(rec)
		return
	}
	r.mu.Lock()
	r.recs = append(r.recs, *rec)
	r.mu.Unlock()
	select {
	case r.ch <- *rec:
	default:
	}
}

// next waits for the next record.
func (r *recorder) next(t *testing.T) telemetry.Record {
	t.Helper()
	select {
	case rec := <-r.ch:
		return rec
	case <-time.After(10 * time.Second):
		t.Fatal("no telemetry record within 10s")
	}
	return telemetry.Record{}
}

// seenTunnel is what a fake ztunnel saw of one CONNECT from the waypoint.
type seenTunnel struct {
	peer   spiffeid.ID
	source netip.AddrPort
	target netip.AddrPort
}

// fakePod stands in for a destination pod's ztunnel: it terminates HBONE
// as the pod's identity, accepts only the waypoint, records the
// Forwarded address and joins the stream to the pod's app, a real server
// on loopback.
type fakePod struct {
	ip   netip.Addr
	id   spiffeid.ID
	addr string // the fake ztunnel's loopback address
	apps map[uint16]string

	mu   sync.Mutex
	seen []seenTunnel
}

func (fp *fakePod) tunnels() []seenTunnel {
	fp.mu.Lock()
	defer fp.mu.Unlock()
	return append([]seenTunnel(nil), fp.seen...)
}

type mesh struct {
	t     testing.TB
	src   *identity.StaticSource
	proxy *Proxy
	addr  string // the waypoint's HBONE listener
	pods  map[netip.Addr]*fakePod
	obs   *recorder
	// release, closed, lets the backends' /wait handler answer.
	release chan struct{}
	// waiting receives a value each time /wait starts waiting;
	// cancelled each time a waiting request's context ended first.
	waiting, cancelled chan string
	// requests receives every request an HTTP app served.
	requests chan appRequest
	// workloads is the proxy's workload index, empty until a test fills
	// it.
	workloads *telemetry.Workloads
	// gather, when set, holds requests for /app/fwd/gather until as many
	// as it waits for are in the app at once.
	gather atomic.Pointer[gathering]
}

// gathering answers its requests once n of them have arrived.
type gathering struct {
	mu      sync.Mutex
	n       int
	arrived int
	all     chan struct{}
}

func newGathering(n int) *gathering { return &gathering{n: n, all: make(chan struct{})} }

// arrive waits until the gathering is complete or ctx ends.
func (g *gathering) arrive(ctx context.Context) {
	g.mu.Lock()
	if g.arrived++; g.arrived == g.n {
		close(g.all)
	}
	g.mu.Unlock()
	select {
	case <-g.all:
	case <-ctx.Done():
	}
}

// appRequest is a request as an app saw it.
type appRequest struct {
	pod, host, path string
	header          http.Header
}

// newMesh starts the fake pods with their apps and a waypoint proxy
// serving on loopback, with opts' bounds.
func newMesh(t testing.TB, b bounds) *mesh {
	t.Helper()
	m := &mesh{
		t: t, src: testCerts(t), pods: map[netip.Addr]*fakePod{}, obs: newRecorder(),
		release: make(chan struct{}), waiting: make(chan string, 16), cancelled: make(chan string, 16),
		requests: make(chan appRequest, 4096), workloads: telemetry.NewWorkloads(0),
	}
	for _, pd := range []struct {
		ip   netip.Addr
		id   spiffeid.ID
		name string
	}{{podV1, v1ID, "v1"}, {podV2, v2ID, "v2"}, {podEvil, evilID, "evil"}} {
		m.startPod(pd.ip, pd.id, pd.name)
	}
	p, err := New(Options{
		Certs:    m.src,
		Identity: waypointID,
		Observer: m.obs,
		DialUpstream: func(ctx context.Context, addr netip.AddrPort) (net.Conn, error) {
			fp := m.pods[addr.Addr()]
			if fp == nil || addr.Port() != DefaultUpstreamHBONEPort {
				return nil, fmt.Errorf("no pod at %s", addr)
			}
			var d net.Dialer
			return d.DialContext(ctx, "tcp", fp.addr)
		},
		bounds:    b,
		Workloads: m.workloads,
	})
	if err != nil {
		t.Fatal(err)
	}
	m.proxy = p
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	m.addr = ln.Addr().String()
	go p.Serve(ln)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		p.Shutdown(ctx)
	})
	p.Update(m.snapshot(t, "v1"))
	return m
}

func (m *mesh) startPod(ip netip.Addr, id spiffeid.ID, name string) {
	t := m.t
	fp := &fakePod{ip: ip, id: id, apps: map[uint16]string{}}
	fp.apps[8080] = m.startHTTPApp(name)
	fp.apps[8081] = m.startGRPCApp(name)
	fp.apps[9000] = m.startTCPApp(name)
	srv, err := hbone.NewServer(func(ctx context.Context, req *hbone.Request, s *hbone.Stream) {
		fp.mu.Lock()
		fp.seen = append(fp.seen, seenTunnel{peer: req.Peer, source: req.Source, target: req.Target})
		fp.mu.Unlock()
		if req.Peer != waypointID {
			s.RespondError(http.StatusForbidden, "only the waypoint may connect")
			return
		}
		app, ok := fp.apps[req.Target.Port()]
		if !ok || req.Target.Addr() != ip {
			s.RespondError(http.StatusBadRequest, "no such app")
			return
		}
		c, err := net.Dial("tcp", app)
		if err != nil {
			s.RespondError(http.StatusServiceUnavailable, err.Error())
			return
		}
		defer c.Close()
		if s.Respond(http.StatusOK) != nil {
			return
		}
		stop := context.AfterFunc(ctx, func() { c.Close(); s.Close() })
		defer stop()
		join(s, c)
	}, hbone.ServerOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	fp.addr = ln.Addr().String()
	cfg := identity.ServerTLS(m.src, id, nil)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go srv.ServeConn(context.Background(), tls.Server(c, cfg))
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		srv.Shutdown(ctx)
	})
	m.pods[ip] = fp
}

// startHTTPApp serves HTTP/1.1 and h2c: it echoes what it received in
// response headers and the body, upgrades /ws to a WebSocket echo, and
// holds /wait until m.release is closed.
func (m *mesh) startHTTPApp(name string) string {
	ws := websocket.Server{Handler: func(c *websocket.Conn) { io.Copy(c, c) }}
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/ws" {
			ws.ServeHTTP(w, r)
			return
		}
		if serveForwardCase(m, w, r) {
			return
		}
		select {
		case m.requests <- appRequest{pod: name, host: r.Host, path: r.RequestURI, header: r.Header.Clone()}:
		default:
		}
		hd := w.Header()
		hd.Set("X-Pod", name)
		hd.Set("X-Proto", r.Proto)
		hd.Set("X-Host", r.Host)
		hd.Set("X-Path", r.RequestURI)
		hd.Set("X-Seen-Request-Id", r.Header.Get("X-Request-Id"))
		hd.Set("X-Seen-Traceparent", r.Header.Get("Traceparent"))
		hd.Set("X-Seen-Added", r.Header.Get("X-Added"))
		if strings.Contains(r.URL.Path, "/fail-on-"+name) || strings.Contains(r.URL.Path, "/fail-on-all") {
			io.Copy(io.Discard, r.Body)
			w.WriteHeader(http.StatusServiceUnavailable)
			io.WriteString(w, "failed on "+name)
			return
		}
		if strings.Contains(r.URL.Path, "/wait") {
			m.waiting <- name
			select {
			case <-m.release:
			case <-r.Context().Done():
				m.cancelled <- name
				return
			}
		}
		if r.ContentLength != 0 {
			// An HTTP/2 request's body is never http.NoBody: copying
			// an empty one would cost a 32 KiB buffer per request
			// that HTTP/1.1 requests do not pay.
			io.Copy(w, r.Body)
		}
		io.WriteString(w, name)
	})
	srv := &http.Server{Handler: h}
	srv.Protocols = new(http.Protocols)
	srv.Protocols.SetHTTP1(true)
	srv.Protocols.SetUnencryptedHTTP2(true)
	return m.serve(func(ln net.Listener) { srv.Serve(ln) }, func() { srv.Close() })
}

// testService streams n replies then ends with trailers; its unary call
// fails with UNAVAILABLE when the request's "fail-on" metadata names the
// pod or "all".
type testService struct {
	grpc_testing.UnimplementedTestServiceServer
	name string
	seen chan<- appRequest
}

func (s *testService) UnaryCall(ctx context.Context, _ *grpc_testing.SimpleRequest) (*grpc_testing.SimpleResponse, error) {
	select {
	case s.seen <- appRequest{pod: s.name, path: "/grpc.testing.TestService/UnaryCall"}:
	default:
	}
	md, _ := metadata.FromIncomingContext(ctx)
	if f := md.Get("fail-on"); len(f) > 0 && (f[0] == s.name || f[0] == "all") {
		return nil, status.Error(codes.Unavailable, "unavailable on "+s.name)
	}
	grpc.SetHeader(ctx, metadata.Pairs("x-pod", s.name))
	return &grpc_testing.SimpleResponse{}, nil
}

func (s *testService) StreamingOutputCall(req *grpc_testing.StreamingOutputCallRequest, stream grpc_testing.TestService_StreamingOutputCallServer) error {
	stream.SetHeader(metadata.Pairs("x-pod", s.name))
	for _, p := range req.ResponseParameters {
		if err := stream.Send(&grpc_testing.StreamingOutputCallResponse{Payload: &grpc_testing.Payload{Body: make([]byte, p.Size)}}); err != nil {
			return err
		}
	}
	stream.SetTrailer(metadata.Pairs("x-trailer", "done-"+s.name))
	return nil
}

func (m *mesh) startGRPCApp(name string) string {
	srv := grpc.NewServer()
	grpc_testing.RegisterTestServiceServer(srv, &testService{name: name, seen: m.requests})
	return m.serve(func(ln net.Listener) { srv.Serve(ln) }, srv.Stop)
}

// startTCPApp writes its name, then echoes.
func (m *mesh) startTCPApp(name string) string {
	var ln net.Listener
	return m.serve(func(l net.Listener) {
		ln = l
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				io.WriteString(c, name+":")
				io.Copy(c, c)
			}()
		}
	}, func() {})
}

func (m *mesh) serve(run func(net.Listener), stop func()) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		m.t.Fatal(err)
	}
	go run(ln)
	m.t.Cleanup(func() { stop(); ln.Close() })
	return ln.Addr().String()
}

// routesYAML is the test service's route configuration.
const routesYAML = `
name: inbound-vip|80|http|reviews.default.svc.cluster.local
virtual_hosts:
- name: reviews.default.svc.cluster.local:80
  domains: ["*"]
  response_headers_to_add:
  - header: {key: x-vhost, value: reviews}
  routes:
  - name: v2
    match: {prefix: /v2}
    route: {cluster: "inbound-vip|80|http/v2|reviews.default.svc.cluster.local"}
  - name: split
    match: {prefix: /split}
    route:
      weighted_clusters:
        clusters:
        - {name: "inbound-vip|80|http/v1|reviews.default.svc.cluster.local", weight: 50}
        - {name: "inbound-vip|80|http/v2|reviews.default.svc.cluster.local", weight: 50}
  - name: empty
    match: {prefix: /empty}
    route: {cluster: "inbound-vip|80|http/empty|reviews.default.svc.cluster.local"}
  - name: impostor
    match: {prefix: /impostor}
    route: {cluster: "inbound-vip|80|http/impostor|reviews.default.svc.cluster.local"}
  - name: timeout
    match: {prefix: /wait-timeout}
    route: {cluster: "inbound-vip|80|http|reviews.default.svc.cluster.local", timeout: 0.3s}
  - name: rewrite
    match: {prefix: /old}
    route: {cluster: "inbound-vip|80|http|reviews.default.svc.cluster.local", prefix_rewrite: /new, host_rewrite_literal: rewritten.example}
    request_headers_to_add:
    - header: {key: x-added, value: "yes"}
  - name: redirect
    match: {prefix: /moved}
    redirect: {path_redirect: /elsewhere, response_code: FOUND}
  - name: direct
    match: {prefix: /direct}
    direct_response: {status: 418, body: {inline_string: "short and stout"}}
  - name: grpc-retry
    match: {prefix: /grpc.testing.TestService/UnaryCall}
    route:
      cluster: "inbound-vip|8081|http/both|reviews.default.svc.cluster.local"
      retry_policy:
        retry_on: unavailable
        num_retries: 2
        retry_back_off: {base_interval: 0.001s}
        retry_host_predicate:
        - name: envoy.retry_host_predicates.previous_hosts
          typed_config: {"@type": type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate}
  - name: grpc
    match: {prefix: /grpc.testing.TestService/}
    route: {cluster: "inbound-vip|8081|http|reviews.default.svc.cluster.local"}
  - name: default
    match: {prefix: /app}
    route: {cluster: "inbound-vip|80|http|reviews.default.svc.cluster.local", timeout: 0s}
  - name: ws
    match: {path: /ws}
    route: {cluster: "inbound-vip|80|http|reviews.default.svc.cluster.local"}
  - name: cors
    match: {prefix: /cors}
    route: {cluster: "inbound-vip|80|http|reviews.default.svc.cluster.local"}
    typed_per_filter_config:
      envoy.filters.http.cors:
        "@type": type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy
        allow_origin_string_match: [{exact: "https://ok.example"}]
        allow_methods: "GET,POST"
        allow_headers: "x-custom"
        expose_headers: "x-pod"
        max_age: "600"
  - name: both
    match: {prefix: /both}
    route: {cluster: "inbound-vip|80|http/both|reviews.default.svc.cluster.local"}
  - name: sticky
    match: {prefix: /sticky}
    route:
      cluster: "inbound-vip|80|http/sticky|reviews.default.svc.cluster.local"
      hash_policy:
      - header: {header_name: end-user}
      - cookie: {name: session, ttl: 60s}
  - name: retry
    match: {prefix: /retry}
    route:
      cluster: "inbound-vip|80|http/both|reviews.default.svc.cluster.local"
      retry_policy:
        retry_on: 5xx
        num_retries: 3
        retry_back_off: {base_interval: 0.001s}
        retry_host_predicate:
        - name: envoy.retry_host_predicates.previous_hosts
          typed_config: {"@type": type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate}
        host_selection_retry_max_attempts: 5
  - name: mirror
    match: {prefix: /mirror}
    route:
      cluster: "inbound-vip|80|http/v1|reviews.default.svc.cluster.local"
      request_mirror_policies:
      - cluster: "inbound-vip|80|http/v2|reviews.default.svc.cluster.local"
        runtime_fraction: {default_value: {numerator: 100}}
`

func compileRoutes(t testing.TB, y string) *route.Table {
	t.Helper()
	j, err := yaml.YAMLToJSON([]byte(y))
	if err != nil {
		t.Fatal(err)
	}
	rc := &routev3.RouteConfiguration{}
	if err := protojson.Unmarshal(j, rc); err != nil {
		t.Fatal(err)
	}
	tbl, err := config.CompileRoutes(rc)
	if err != nil {
		t.Fatal(err)
	}
	return tbl
}

func cluster(name string, proto upstream.Protocol, eps ...upstream.Endpoint) (*upstream.Cluster, *upstream.Assignment) {
	c := &upstream.Cluster{
		Name: name, EDSServiceName: name, ConnectTimeout: 5 * time.Second,
		LB:       upstream.LoadBalancing{Kind: upstream.RoundRobin, HealthyPanicThreshold: 50},
		Limits:   upstream.Limits{MaxConnections: 1024, MaxPendingRequests: 1024, MaxRequests: 1024, MaxRetries: 3},
		HTTP:     upstream.HTTPOptions{Protocol: proto, IdleTimeout: time.Hour},
		Services: []upstream.ServiceRef{{Host: "reviews.default.svc.cluster.local", Name: "reviews", Namespace: "default"}},
	}
	a := &upstream.Assignment{ClusterName: name, OverprovisioningFactor: 140, Priorities: [][]upstream.Locality{{{Endpoints: eps}}}}
	return c, a
}

func ep(ip netip.Addr, port uint16, id spiffeid.ID, version string) upstream.Endpoint {
	return upstream.Endpoint{Addr: netip.AddrPortFrom(ip, port), Weight: 1, Identity: id.String(), Labels: map[string]string{"app": "reviews", "version": version}}
}

// snapshot builds the test mesh's configuration; the default cluster's
// only endpoint is the pod named by deflt ("v1" or "v2").
func (m *mesh) snapshot(t testing.TB, deflt string) *config.Snapshot {
	const rc = "inbound-vip|80|http|reviews.default.svc.cluster.local"
	s := &config.Snapshot{
		Version: deflt,
		Chains: map[netip.AddrPort]*config.Chain{
			vipHTTP:  {Name: rc, Protocol: config.ChainHTTP, RouteConfig: rc, StatPrefix: rc},
			vipTCP:   {Name: "inbound-vip|9000|tcp|reviews.default.svc.cluster.local", Protocol: config.ChainTCP, TCPCluster: "inbound-vip|9000|tcp|reviews.default.svc.cluster.local"},
			vipSniff: {Name: rc, Protocol: config.ChainSniff, RouteConfig: rc, TCPCluster: "inbound-vip|9000|tcp|reviews.default.svc.cluster.local"},
		},
		Routes:      map[string]*route.Table{rc: compileRoutes(t, routesYAML)},
		Clusters:    map[string]*upstream.Cluster{},
		Assignments: map[string]*upstream.Assignment{},
	}
	deflt1 := ep(podV1, 8080, v1ID, "v1")
	if deflt == "v2" {
		deflt1 = ep(podV2, 8080, v2ID, "v2")
	}
	add := func(c *upstream.Cluster, a *upstream.Assignment) {
		s.Clusters[c.Name] = c
		s.Assignments[a.ClusterName] = a
	}
	add(cluster(rc, upstream.Downstream, deflt1))
	add(cluster("inbound-vip|80|http/v1|reviews.default.svc.cluster.local", upstream.Downstream, ep(podV1, 8080, v1ID, "v1")))
	add(cluster("inbound-vip|80|http/v2|reviews.default.svc.cluster.local", upstream.Downstream, ep(podV2, 8080, v2ID, "v2")))
	add(cluster("inbound-vip|80|http/empty|reviews.default.svc.cluster.local", upstream.Downstream))
	add(cluster("inbound-vip|80|http/both|reviews.default.svc.cluster.local", upstream.Downstream, ep(podV1, 8080, v1ID, "v1"), ep(podV2, 8080, v2ID, "v2")))
	sc, sa := cluster("inbound-vip|80|http/sticky|reviews.default.svc.cluster.local", upstream.Downstream, ep(podV1, 8080, v1ID, "v1"), ep(podV2, 8080, v2ID, "v2"))
	sc.LB = upstream.LoadBalancing{Kind: upstream.RingHash, MinimumRingSize: 1024, MaximumRingSize: 8 << 20, HealthyPanicThreshold: 50}
	add(sc, sa)
	// The impostor's endpoint says reviews-v1, but the pod's ztunnel
	// presents evil's certificate.
	add(cluster("inbound-vip|80|http/impostor|reviews.default.svc.cluster.local", upstream.Downstream, ep(podEvil, 8080, v1ID, "v1")))
	add(cluster("inbound-vip|8081|http|reviews.default.svc.cluster.local", upstream.HTTP2, ep(podV1, 8081, v1ID, "v1")))
	add(cluster("inbound-vip|8081|http/both|reviews.default.svc.cluster.local", upstream.HTTP2, ep(podV1, 8081, v1ID, "v1"), ep(podV2, 8081, v2ID, "v2")))
	add(cluster("inbound-vip|9000|tcp|reviews.default.svc.cluster.local", upstream.HTTP1, ep(podV1, 9000, v1ID, "v1")))
	return s
}

// tunnel opens an HBONE tunnel to target through the waypoint as sleep,
// from clientIP.
func (m *mesh) tunnel(ctx context.Context, target netip.AddrPort) (net.Conn, error) {
	d := net.Dialer{LocalAddr: net.TCPAddrFromAddrPort(netip.AddrPortFrom(clientIP, 0))}
	nc, err := d.DialContext(ctx, "tcp", m.addr)
	if err != nil {
		return nil, err
	}
	cc, err := hbone.NewClientConn(ctx, nc, identity.ClientTLS(m.src, sleepID, []spiffeid.ID{waypointID}), hbone.ClientOptions{})
	if err != nil {
		nc.Close()
		return nil, err
	}
	s, err := cc.Connect(ctx, &hbone.ConnectRequest{Target: target})
	if err != nil {
		cc.Close()
		return nil, err
	}
	return &clientTunnel{Stream: s, cc: cc}, nil
}

// clientTunnel closes its HBONE connection with the stream.
type clientTunnel struct {
	*hbone.Stream
	cc *hbone.ClientConn
}

func (c *clientTunnel) Close() error {
	c.Stream.Close()
	return c.cc.Close()
}

// h1Client speaks HTTP/1.1 over tunnels to target, keeping connections
// alive.
func (m *mesh) h1Client(target netip.AddrPort) *http.Client {
	tr := &http.Transport{
		DialContext:        func(ctx context.Context, _, _ string) (net.Conn, error) { return m.tunnel(ctx, target) },
		DisableCompression: true,
	}
	m.t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 20 * time.Second, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
}

// h2Client speaks HTTP/2 (prior knowledge) over tunnels to target.
func (m *mesh) h2Client(target netip.AddrPort) *http.Client {
	tr := &http2.Transport{
		AllowHTTP: true,
		DialTLSContext: func(ctx context.Context, _, _ string, _ *tls.Config) (net.Conn, error) {
			return m.tunnel(ctx, target)
		},
	}
	m.t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 20 * time.Second}
}

// get does a GET and returns the response with its body read.
func get(t *testing.T, c *http.Client, url string, hdr ...string) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	res, err := c.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatalf("GET %s: body: %v", url, err)
	}
	return res, string(b)
}

var pkiDir string

func osMkdirTemp() (string, error) {
	d, err := os.MkdirTemp("", "waypoint-proxy-pki-")
	pkiDir = d
	return d, err
}
