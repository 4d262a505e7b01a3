package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/anypb"

	pb "istio.io/api/security/v1alpha1"

	"github.com/zmesh/zmesh/identity"
	"github.com/zmesh/zmesh/internal/hbone"
	"github.com/zmesh/zmesh/internal/testutil"
	"github.com/zmesh/zmesh/waypoint/config"
	"github.com/zmesh/zmesh/waypoint/xds"
)

const timeout = 30 * time.Second

var (
	waypointID = identity.MustWorkloadID("cluster.local", "bookinfo", "waypoint")
	clientID   = identity.MustWorkloadID("cluster.local", "bookinfo", "productpage")
	reviewsID  = identity.MustWorkloadID("cluster.local", "bookinfo", "reviews")
)

const (
	httpChain = "inbound-vip|9080|http|reviews.bookinfo.svc.cluster.local"
	cluster   = "inbound-vip|9080|http|reviews.bookinfo.svc.cluster.local"
	listener  = `name: main_internal
address: {socketAddress: {address: 0.0.0.0, portValue: 15008}}
filterChains:
- name: "` + httpChain + `"
  filterChainMatch: {destinationPort: 9080, prefixRanges: [{addressPrefix: 10.96.0.10, prefixLen: 32}]}
  filters:
  - name: envoy.filters.network.http_connection_manager
    typedConfig:
      "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
      statPrefix: "` + httpChain + `"
      rds: {routeConfigName: "` + httpChain + `", configSource: {ads: {}, resourceApiVersion: V3}}
      httpFilters: [{name: envoy.filters.http.router, typedConfig: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}]
`
)

// ads is a control plane that answers each subscription with what it
// holds and reports the waypoint's ACKs and NACKs.
type ads struct {
	discoveryv3.UnimplementedAggregatedDiscoveryServiceServer
	mu      sync.Mutex
	res     map[string]map[string]*anypb.Any
	stream  discoveryv3.AggregatedDiscoveryService_DeltaAggregatedResourcesServer
	sendMu  sync.Mutex
	answers chan *discoveryv3.DeltaDiscoveryRequest
	nonce   int
}

func (a *ads) DeltaAggregatedResources(st discoveryv3.AggregatedDiscoveryService_DeltaAggregatedResourcesServer) error {
	a.mu.Lock()
	a.stream = st
	a.mu.Unlock()
	for {
		req, err := st.Recv()
		if err != nil {
			return nil
		}
		if req.GetResponseNonce() != "" {
			a.answers <- req
			continue
		}
		a.mu.Lock()
		res := a.res[req.GetTypeUrl()]
		a.mu.Unlock()
		a.send(req.GetTypeUrl(), res)
	}
}

func (a *ads) send(typeURL string, res map[string]*anypb.Any) error {
	a.sendMu.Lock()
	defer a.sendMu.Unlock()
	a.mu.Lock()
	a.nonce++
	resp := &discoveryv3.DeltaDiscoveryResponse{TypeUrl: typeURL, Nonce: typeURL + string(rune('a'+a.nonce))}
	st := a.stream
	a.mu.Unlock()
	for name, body := range res {
		resp.Resources = append(resp.Resources, &discoveryv3.Resource{Name: name, Version: resp.Nonce, Resource: body})
	}
	return st.Send(resp)
}

// controlPlane serves a CA (the waypoint's token yields its own identity)
// and ads on one loopback gRPC server.
func controlPlane(t *testing.T, dir string, a *ads) (addr, rootCert, tokFile string, fetch func(spiffeid.ID) *x509svid.SVID, _ *identity.CA) {
	t.Helper()
	ca, err := identity.LoadOrCreateCA(filepath.Join(dir, "ca"), identity.CAOptions{})
	if err != nil {
		t.Fatal(err)
	}
	authn, err := identity.NewStaticTokenAuthenticator(map[string]identity.Caller{"tok-waypoint": {ID: waypointID}, "tok-client": {ID: clientID}, "tok-reviews": {ID: reviewsID}})
	if err != nil {
		t.Fatal(err)
	}
	certSrv, err := identity.NewCertServer(ca, authn, nil)
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer()
	pb.RegisterIstioCertificateServiceServer(gs, certSrv)
	discoveryv3.RegisterAggregatedDiscoveryServiceServer(gs, a)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go gs.Serve(ln)
	t.Cleanup(gs.Stop)
	rootCert, tokFile = filepath.Join(dir, "root.pem"), filepath.Join(dir, "token")
	if err := os.WriteFile(rootCert, ca.RootsPEM(), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(tokFile, []byte("tok-waypoint\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient(ln.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	fetch = func(id spiffeid.ID) *x509svid.SVID {
		tok := map[spiffeid.ID]string{clientID: "tok-client", reviewsID: "tok-reviews"}[id]
		cc, err := identity.NewCertClient(conn, func(context.Context) (string, error) { return tok, nil }, 0)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		s, err := cc.Fetch(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	return ln.Addr().String(), rootCert, tokFile, fetch, ca
}

// freeAddr is a loopback address nothing listens on.
func freeAddr(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

func httpGet(url string) (int, string, error) {
	c := &http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// waypoint is one run of the binary under test.
type waypoint struct {
	a                                        *ads
	hboneAddr, adminAddr, metricsAddr, ready string
	rootCert                                 string
	fetch                                    func(spiffeid.ID) *x509svid.SVID
	ca                                       *identity.CA
	stdout                                   *testutil.SyncBuffer
	cancel                                   context.CancelFunc
	done                                     chan error
}

// bookinfo is the control plane's configuration: reviews on VIP
// 10.96.0.10:9080 (HTTP), one endpoint 127.0.0.1:9080 with reviews'
// identity.
func bookinfo(t *testing.T) map[string]map[string]*anypb.Any {
	return map[string]map[string]*anypb.Any{
		config.TypeListener: {"main_internal": testutil.AnyYAML(t, config.TypeListener, listener)},
		config.TypeRoute: {httpChain: testutil.AnyYAML(t, config.TypeRoute, "name: \""+httpChain+"\"\nvirtualHosts: [{name: 'reviews.bookinfo.svc.cluster.local:9080', domains: ['*'], "+
			"routes: [{name: default, match: {prefix: /}, route: {cluster: \""+cluster+"\"}}]}]\n")},
		config.TypeCluster: {cluster: testutil.AnyYAML(t, config.TypeCluster, "name: \""+cluster+"\"\ntype: EDS\nedsClusterConfig: {edsConfig: {ads: {}, resourceApiVersion: V3}}\n"+
			"metadata: {filterMetadata: {istio: {services: [{host: reviews.bookinfo.svc.cluster.local, name: reviews, namespace: bookinfo}]}}}\n")},
		config.TypeAssignment: {cluster: testutil.AnyYAML(t, config.TypeAssignment, "clusterName: \""+cluster+"\"\nendpoints: [{lbEndpoints: [{endpoint: {address: {socketAddress: {address: 127.0.0.1, portValue: 9080}}}, "+
			"metadata: {filterMetadata: {zmesh: {identity: '"+reviewsID.String()+"', labels: {app: reviews, version: v2}}}}}]}]\n")},
	}
}

// startWaypoint runs the binary as the deployer starts it, against an
// in-process CA and ADS server, with the flags extra returns once the CA
// exists, and waits until it has answered its five subscriptions and is
// ready.
func startWaypoint(t *testing.T, extra func(*waypoint) []string) *waypoint {
	t.Helper()
	dir := t.TempDir()
	w := &waypoint{a: &ads{answers: make(chan *discoveryv3.DeltaDiscoveryRequest, 64), res: bookinfo(t)}, stdout: &testutil.SyncBuffer{}}
	var addr, tokFile string
	addr, w.rootCert, tokFile, w.fetch, w.ca = controlPlane(t, dir, w.a)
	w.hboneAddr, w.adminAddr, w.metricsAddr, w.ready = freeAddr(t), freeAddr(t), freeAddr(t), freeAddr(t)
	t.Setenv("POD_NAME", "waypoint-7d9f-abcde")
	t.Setenv("POD_NAMESPACE", "bookinfo")
	t.Setenv("SERVICE_ACCOUNT", "waypoint")
	t.Setenv("INSTANCE_IP", "127.0.0.1")
	f, err := parseFlags(append([]string{"--root-cert=" + w.rootCert, "--token-file=" + tokFile, "--xds-address=" + addr, "--plaintext-control-plane",
		"--hbone-address=" + w.hboneAddr, "--admin-address=" + w.adminAddr, "--metrics-address=" + w.metricsAddr, "--readiness-address=" + w.ready,
		"--drain-timeout=20s"}, extra(w)...))
	if err != nil {
		t.Fatal(err)
	}
	if n, _ := xdsNode(f); n.GetId() != "router~127.0.0.1~waypoint-7d9f-abcde.bookinfo~bookinfo.svc.cluster.local" {
		t.Errorf("node id %q", n.GetId())
	}
	ctx, cancel := context.WithCancel(context.Background())
	w.cancel, w.done = cancel, make(chan error, 1)
	go func() { w.done <- run(ctx, f, w.stdout) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-w.done:
		case <-time.After(timeout):
			t.Error("run did not return")
		}
	})
	// The Envoy types, and workload discovery (TypeAddress), which names
	// clients in telemetry.
	for range len(xds.Types) + 1 {
		select {
		case r := <-w.a.answers:
			if r.GetErrorDetail() != nil {
				t.Fatalf("the waypoint NACKed %s: %s", r.GetTypeUrl(), r.GetErrorDetail().GetMessage())
			}
		case <-time.After(timeout):
			t.Fatal("the waypoint did not answer its subscriptions")
		}
	}
	waitFor(t, "readiness", func() bool {
		code, _, _ := httpGet("http://" + w.ready + "/healthz/ready")
		return code == 200
	})
	return w
}

// stop signals the binary and checks that it returns cleanly.
func (w *waypoint) stop(t *testing.T) {
	t.Helper()
	w.cancel()
	select {
	case err := <-w.done:
		w.done <- err // for the cleanup
		if err != nil {
			t.Fatalf("run: %v", err)
		}
	case <-time.After(timeout):
		t.Fatal("run did not return after the signal")
	}
}

// TestStartup: the binary becomes ready once configured, serves HBONE
// with its own SVID, shows the listener in /config_dump, NACKs a bad
// listener and stays on the last good one, and stops cleanly.
func TestStartup(t *testing.T) {
	w := startWaypoint(t, func(*waypoint) []string { return nil })
	a, readyAddr, adminAddr, metricsAddr, hboneAddr, rootCert, fetch := w.a, w.ready, w.adminAddr, w.metricsAddr, w.hboneAddr, w.rootCert, w.fetch
	_, dump, err := httpGet("http://" + adminAddr + "/config_dump")
	if err != nil || !strings.Contains(dump, `"main_internal"`) || !strings.Contains(dump, httpChain) ||
		!strings.Contains(dump, "type.googleapis.com/envoy.admin.v3.ListenersConfigDump") {
		t.Fatalf("/config_dump (%v):\n%s", err, dump)
	}

	// The HBONE port presents the waypoint's own SVID and takes a mesh
	// client's certificate.
	client := fetch(clientID)
	roots := x509.NewCertPool()
	pem, _ := os.ReadFile(rootCert)
	roots.AppendCertsFromPEM(pem)
	var leaf tls.Certificate
	for _, c := range client.Certificates {
		leaf.Certificate = append(leaf.Certificate, c.Raw)
	}
	leaf.PrivateKey = client.PrivateKey
	var conn *tls.Conn
	waitFor(t, "the HBONE handshake", func() bool {
		conn, err = tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", hboneAddr, &tls.Config{
			RootCAs: roots, Certificates: []tls.Certificate{leaf}, NextProtos: []string{"h2"},
			ServerName: "waypoint", InsecureSkipVerify: true, // the SAN is checked below; SPIFFE SVIDs carry no DNS name
		})
		return err == nil
	})
	peer := conn.ConnectionState().PeerCertificates[0]
	conn.Close()
	if _, err := peer.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil || len(peer.URIs) != 1 || peer.URIs[0].String() != waypointID.String() {
		t.Errorf("the waypoint presented %v (%v), want an SVID for %s", peer.URIs, err, waypointID)
	}

	// A bad listener: NACKed with its field path, the last good one stays.
	bad := strings.Replace(listener, "name: main_internal", "name: main_internal\nuseOriginalDst: true", 1)
	if err := a.send(config.TypeListener, map[string]*anypb.Any{"main_internal": testutil.AnyYAML(t, config.TypeListener, bad)}); err != nil {
		t.Fatal(err)
	}
	select {
	case r := <-a.answers:
		if want := `main_internal: listeners "main_internal": use_original_dst: not supported`; r.GetErrorDetail().GetMessage() != want {
			t.Fatalf("answer to a bad listener: %q, want NACK %q", r.GetErrorDetail().GetMessage(), want)
		}
	case <-time.After(timeout):
		t.Fatal("no answer to the bad listener")
	}
	_, after, _ := httpGet("http://" + adminAddr + "/config_dump")
	if after == "" || (strings.Contains(after, "useOriginalDst") || !strings.Contains(after, httpChain)) {
		t.Errorf("/config_dump after a NACK:\n%s", after)
	}
	if code, _, _ := httpGet("http://" + readyAddr + "/healthz/ready"); code != 200 {
		t.Errorf("not ready after a NACK: %d", code)
	}
	if code, body, _ := httpGet("http://" + metricsAddr + "/stats/prometheus"); code != 200 || !strings.Contains(body, "zmesh_waypoint_access_log_dropped_total 0") {
		t.Errorf("metrics: %d\n%s", code, body)
	}

	w.stop(t)
	if _, _, err := httpGet("http://" + readyAddr + "/healthz/ready"); err == nil {
		t.Error("readiness still served after shutdown")
	}
}

func TestParseFlagsRequiresThePod(t *testing.T) {
	t.Setenv("POD_NAME", "p")
	t.Setenv("POD_NAMESPACE", "ns")
	t.Setenv("SERVICE_ACCOUNT", "")
	if _, err := parseFlags([]string{"--xds-address=x:1"}); err == nil || !strings.Contains(err.Error(), "--service-account") {
		t.Errorf("no service account: %v", err)
	}
	t.Setenv("SERVICE_ACCOUNT", "sa")
	if _, err := parseFlags(nil); err == nil || !strings.Contains(err.Error(), "--xds-address") {
		t.Errorf("no xDS address: %v", err)
	}
	f, err := parseFlags([]string{"--xds-address=x:1"})
	if err != nil || f.caAddr != "x:1" || f.adminAddr != "127.0.0.1:15000" || f.readyAddr != ":15021" || f.metricsAddr != ":15020" || f.hboneAddr != ":15008" {
		t.Errorf("defaults: %+v %v", f, err)
	}
}

// oneConn is a net.Listener that hands out one connection.
type oneConn struct {
	c    chan net.Conn
	done chan struct{}
	once sync.Once
}

func (l *oneConn) Accept() (net.Conn, error) {
	select {
	case c := <-l.c:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}
func (l *oneConn) Close() error   { l.once.Do(func() { close(l.done) }); return nil }
func (l *oneConn) Addr() net.Addr { return &net.TCPAddr{} }

// upstream is the reviews pod's side: an HBONE server with reviews' SVID
// that serves HTTP/1.1 on each tunnel. A request to /slow waits for
// release.
func upstream(t *testing.T, w *waypoint, release chan struct{}, arrived chan string) (port string) {
	t.Helper()
	src := identity.NewStaticSource(w.ca.Bundle())
	src.Put(w.fetch(reviewsID))
	h := func(tunnel *hbone.Request) http.Handler {
		return http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
			arrived <- fmt.Sprintf("%s for=%s peer=%s target=%s", r.URL.Path, tunnel.Source.Addr(), tunnel.Peer, tunnel.Target)
			if r.URL.Path == "/slow" {
				<-release
			}
			rw.Header().Set("Content-Type", "text/plain")
			io.WriteString(rw, "reviews v2\n")
		})
	}
	srv, err := hbone.NewServer(func(ctx context.Context, req *hbone.Request, s *hbone.Stream) {
		if err := s.Respond(200); err != nil {
			return
		}
		l := &oneConn{c: make(chan net.Conn, 1), done: make(chan struct{})}
		l.c <- s
		hs := &http.Server{Handler: h(req), ConnState: func(_ net.Conn, st http.ConnState) {
			if st == http.StateClosed || st == http.StateHijacked {
				l.Close()
			}
		}}
		go func() { <-ctx.Done(); hs.Close() }()
		hs.Serve(l)
		<-l.done
	}, hbone.ServerOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	t.Cleanup(func() { cancel(); ln.Close(); wg.Wait() })
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				srv.ServeConn(ctx, tls.Server(c, identity.ServerTLS(src, reviewsID, nil)))
			})
		}
	})
	_, port, _ = net.SplitHostPort(ln.Addr().String())
	return port
}

// request sends one HTTP/1.1 request to reviews' VIP through the waypoint
// over its own HBONE tunnel, as productpage's ztunnel would.
func request(t *testing.T, w *waypoint, path string) (*http.Response, error) {
	src := identity.NewStaticSource(w.ca.Bundle())
	src.Put(w.fetch(clientID))
	nc, err := net.DialTimeout("tcp", w.hboneAddr, 5*time.Second)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cc, err := hbone.NewClientConn(ctx, nc, identity.ClientTLS(src, clientID, []spiffeid.ID{waypointID}), hbone.ClientOptions{})
	if err != nil {
		return nil, err
	}
	t.Cleanup(func() { cc.Close() })
	st, err := cc.Connect(ctx, &hbone.ConnectRequest{Target: netip.MustParseAddrPort("10.96.0.10:9080"), Source: netip.MustParseAddrPort("10.1.1.4:43210")})
	if err != nil {
		return nil, err
	}
	st.SetDeadline(time.Now().Add(timeout))
	if _, err := io.WriteString(st, "GET "+path+" HTTP/1.1\r\nHost: reviews:9080\r\nUser-Agent: curl/8\r\nX-Request-Id: req-"+strings.TrimPrefix(path, "/")+"\r\n\r\n"); err != nil {
		return nil, err
	}
	resp, err := http.ReadResponse(bufio.NewReader(st), nil)
	if err != nil {
		return nil, err
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body = io.NopCloser(bytes.NewReader(body))
	return resp, err
}

// TestRequestThroughAndDrain: a request through the binary reaches the
// endpoint with the client's address in Forwarded, is logged as one JSON
// line and counted with Istio's labels; a route update while a request is
// in flight serves new requests and leaves that one alone; on SIGTERM the
// waypoint turns unready at once while the request in flight finishes,
// then it exits.
func TestRequestThroughAndDrain(t *testing.T) {
	release, arrived := make(chan struct{}), make(chan string, 4)
	w := startWaypoint(t, func(w *waypoint) []string {
		return []string{"--upstream-hbone-port=" + upstream(t, w, release, arrived)}
	})

	resp, err := request(t, w, "/fast")
	if err != nil {
		t.Fatal(err)
	}
	if b, _ := io.ReadAll(resp.Body); resp.StatusCode != 200 || string(b) != "reviews v2\n" {
		t.Fatalf("response %d %q", resp.StatusCode, b)
	}
	// The endpoint sees the waypoint's identity, its own address as the
	// tunnel's target, and the client in Forwarded: the address the
	// client's tunnel came from (an in-pod ztunnel dials from the pod's
	// address), not what the client's CONNECT claims.
	if got, want := <-arrived, "/fast for=127.0.0.1 peer="+waypointID.String()+" target=127.0.0.1:9080"; got != want {
		t.Errorf("at the endpoint: %s, want %s", got, want)
	}
	var line string
	waitFor(t, "the access-log line", func() bool { line = w.stdout.String(); return strings.Contains(line, "req-fast") })
	for _, want := range []string{`"method":"GET"`, `"path":"/fast"`, `"protocol":"HTTP/1.1"`, `"response_code":200`, `"request_id":"req-fast"`,
		`"user_agent":"curl/8"`, `"upstream_cluster":"` + cluster + `"`, `"route_name":"default"`, `"downstream_peer_uri_san":"` + clientID.String() + `"`} {
		if !strings.Contains(line, want) {
			t.Errorf("access log lacks %s:\n%s", want, line)
		}
	}
	_, metrics, _ := httpGet("http://" + w.metricsAddr + "/stats/prometheus")
	for _, want := range []string{`reporter="waypoint"`, `source_principal="` + clientID.String() + `"`, `destination_principal="` + reviewsID.String() + `"`,
		`response_code="200"`, `request_protocol="http"`, `connection_security_policy="mutual_tls"`} {
		if !strings.Contains(metrics, want) || !strings.Contains(metrics, "istio_requests_total{") {
			t.Errorf("metrics lack %s", want)
		}
	}

	// A request in flight, then SIGTERM.
	slow := make(chan error, 1)
	go func() {
		resp, err := request(t, w, "/slow")
		if err == nil && resp.StatusCode != 200 {
			err = fmt.Errorf("status %d", resp.StatusCode)
		}
		slow <- err
	}()
	select {
	case <-arrived:
	case <-time.After(timeout):
		t.Fatal("the slow request did not reach the endpoint")
	}
	// A new route configuration while it is in flight: new requests take
	// it, the one in flight is not disturbed.
	if err := w.a.send(config.TypeRoute, map[string]*anypb.Any{httpChain: testutil.AnyYAML(t, config.TypeRoute, "name: \""+httpChain+"\"\n"+
		"virtualHosts: [{name: 'reviews.bookinfo.svc.cluster.local:9080', domains: ['*'], routes: [{name: updated, match: {prefix: /}, route: {cluster: \""+cluster+"\"}}]}]\n")}); err != nil {
		t.Fatal(err)
	}
	select {
	case r := <-w.a.answers:
		if r.GetErrorDetail() != nil {
			t.Fatalf("route update NACKed: %s", r.GetErrorDetail().GetMessage())
		}
	case <-time.After(timeout):
		t.Fatal("no answer to the route update")
	}
	if resp, err := request(t, w, "/after-update"); err != nil || resp.StatusCode != 200 {
		t.Fatalf("request after the update: %v %v", resp, err)
	}
	<-arrived
	waitFor(t, "the updated route in the access log", func() bool {
		for _, l := range strings.Split(w.stdout.String(), "\n") {
			if strings.Contains(l, "req-after-update") {
				return strings.Contains(l, `"route_name":"updated"`)
			}
		}
		return false
	})

	w.cancel()
	waitFor(t, "unready while draining", func() bool {
		code, _, _ := httpGet("http://" + w.ready + "/healthz/ready")
		return code == 503
	})
	select {
	case err := <-w.done:
		t.Fatalf("run returned (%v) with a request in flight", err)
	case err := <-slow:
		t.Fatalf("the request in flight ended (%v) before its response", err)
	default:
	}
	close(release)
	select {
	case err := <-slow:
		if err != nil {
			t.Errorf("the request in flight during the drain: %v", err)
		}
	case <-time.After(timeout):
		t.Fatal("the request in flight did not finish")
	}
	w.stop(t)
}
