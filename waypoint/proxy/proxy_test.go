package proxy

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/websocket"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"

	"github.com/zmesh/zmesh/internal/hbone"
)

func TestMain(m *testing.M) {
	code := m.Run()
	if pkiDir != "" {
		os.RemoveAll(pkiDir)
	}
	os.Exit(code)
}

var uuidV4 = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`)

// TestHTTP1KeepAlive: three requests on one kept-alive tunnel reach the
// default endpoint over one upstream tunnel that presents the endpoint's
// identity and carries the client's address in Forwarded.
func TestHTTP1KeepAlive(t *testing.T) {
	m := newMesh(t, bounds{})
	c := m.h1Client(vipHTTP)
	for i := range 3 {
		res, body := get(t, c, "http://reviews/app/x?i=1")
		if res.StatusCode != 200 || body != "v1" {
			t.Fatalf("request %d: %d %q, want 200 \"v1\"", i, res.StatusCode, body)
		}
		if got := res.Header.Get("X-Proto"); got != "HTTP/1.1" {
			t.Errorf("app saw %s, want HTTP/1.1", got)
		}
		if got := res.Header.Get("X-Path"); got != "/app/x?i=1" {
			t.Errorf("app saw path %q", got)
		}
		if got := res.Header.Get("X-Vhost"); got != "reviews" {
			t.Errorf("response header mutation: x-vhost %q, want reviews", got)
		}
		rec := m.obs.next(t)
		if rec.ResponseCode != 200 || rec.ResponseFlags != "-" || rec.RouteName != "default" || rec.Protocol != "HTTP/1.1" ||
			rec.UpstreamHost != netip.AddrPortFrom(podV1, 8080) || rec.Source.Principal != sleepID.String() ||
			rec.Source.Addr.Addr() != clientIP || rec.Destination.Principal != v1ID.String() || rec.Destination.Version != "v1" ||
			rec.Source.Namespace != "default" || rec.Destination.Namespace != "default" || rec.Destination.App != "reviews" ||
			rec.UpstreamCluster != "inbound-vip|80|http|reviews.default.svc.cluster.local" || rec.BytesSent != 2 ||
			rec.DestinationService != "reviews.default.svc.cluster.local" || rec.Method != "GET" || rec.Path != "/app/x?i=1" {
			t.Errorf("record %d: %+v", i, rec)
		}
	}
	tun := m.pods[podV1].tunnels()
	if len(tun) != 1 {
		t.Fatalf("v1's ztunnel saw %d tunnels, want 1 (upstream keep-alive)", len(tun))
	}
	want := seenTunnel{peer: waypointID, source: netip.AddrPortFrom(clientIP, 0), target: netip.AddrPortFrom(podV1, 8080)}
	if tun[0] != want {
		t.Errorf("v1's ztunnel saw %+v, want %+v", tun[0], want)
	}
}

// TestRequestID: x-request-id is generated (UUIDv4) when absent and kept
// when present; trace headers pass untouched.
func TestRequestID(t *testing.T) {
	m := newMesh(t, bounds{})
	c := m.h1Client(vipHTTP)
	res, _ := get(t, c, "http://reviews/app")
	id := res.Header.Get("X-Seen-Request-Id")
	if !uuidV4.MatchString(id) {
		t.Errorf("generated x-request-id %q is not a UUIDv4", id)
	}
	if rec := m.obs.next(t); rec.RequestID != id {
		t.Errorf("record's request id %q, app saw %q", rec.RequestID, id)
	}
	trace := []string{
		"Traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
		"Tracestate", "congo=t61rcWkgMzE",
		"B3", "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1",
		"X-B3-Traceid", "80f198ee56343ba864fe8b2a57d3eff7",
		"Baggage", "userId=alice,serverNode=DF%2028",
	}
	for len(m.requests) > 0 {
		<-m.requests
	}
	res, _ = get(t, c, "http://reviews/app", append([]string{"X-Request-Id", "mine"}, trace...)...)
	if got := res.Header.Get("X-Seen-Request-Id"); got != "mine" {
		t.Errorf("x-request-id %q, want the client's", got)
	}
	seen := <-m.requests
	for i := 0; i < len(trace); i += 2 {
		if got := seen.header.Get(trace[i]); got != trace[i+1] {
			t.Errorf("%s: app saw %q, want %q", trace[i], got, trace[i+1])
		}
	}
}

// TestGRPCServerStreaming: HTTP/2 end to end; a server stream's messages,
// headers and trailers reach the client.
func TestGRPCServerStreaming(t *testing.T) {
	m := newMesh(t, bounds{})
	cc, err := grpc.NewClient("passthrough:///reviews",
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return m.tunnel(ctx, vipHTTP) }))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var hdr, trl metadata.MD
	st, err := grpc_testing.NewTestServiceClient(cc).StreamingOutputCall(ctx, &grpc_testing.StreamingOutputCallRequest{
		ResponseParameters: []*grpc_testing.ResponseParameters{{Size: 10}, {Size: 20}, {Size: 30}},
	}, grpc.Header(&hdr), grpc.Trailer(&trl))
	if err != nil {
		t.Fatal(err)
	}
	var sizes []int
	for {
		msg, err := st.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("recv: %v", err)
		}
		sizes = append(sizes, len(msg.Payload.Body))
	}
	if len(sizes) != 3 || sizes[0] != 10 || sizes[2] != 30 {
		t.Errorf("received %v, want [10 20 30]", sizes)
	}
	if got := hdr.Get("x-pod"); len(got) != 1 || got[0] != "v1" {
		t.Errorf("header x-pod %v", got)
	}
	if got := trl.Get("x-trailer"); len(got) != 1 || got[0] != "done-v1" {
		t.Errorf("trailer x-trailer %v, want done-v1", got)
	}
	rec := m.obs.next(t)
	if rec.Protocol != "HTTP/2" || rec.GRPCStatus != "0" || rec.RouteName != "grpc" || rec.ResponseCode != 200 {
		t.Errorf("record %+v", rec)
	}
}

// TestHTTP2StaysHTTP2: a cluster using the downstream protocol gets
// HTTP/2 for an HTTP/2 request.
func TestHTTP2StaysHTTP2(t *testing.T) {
	m := newMesh(t, bounds{})
	res, body := get(t, m.h2Client(vipHTTP), "http://reviews/app")
	if res.StatusCode != 200 || body != "v1" || res.Header.Get("X-Proto") != "HTTP/2.0" {
		t.Errorf("got %d %q, app saw %s; want 200 \"v1\" over HTTP/2.0", res.StatusCode, body, res.Header.Get("X-Proto"))
	}
}

// TestWebSocket: an Upgrade passes through and the upgraded connection
// echoes.
func TestWebSocket(t *testing.T) {
	m := newMesh(t, bounds{})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	conn, err := m.tunnel(ctx, vipHTTP)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	cfg, err := websocket.NewConfig("ws://reviews/ws", "http://reviews/")
	if err != nil {
		t.Fatal(err)
	}
	ws, err := websocket.NewClient(cfg, conn)
	if err != nil {
		t.Fatalf("websocket handshake: %v", err)
	}
	for _, msg := range []string{"hello", "world"} {
		if err := websocket.Message.Send(ws, msg); err != nil {
			t.Fatal(err)
		}
		var got string
		conn.SetReadDeadline(time.Now().Add(10 * time.Second))
		if err := websocket.Message.Receive(ws, &got); err != nil {
			t.Fatal(err)
		}
		if got != msg {
			t.Errorf("echo %q, want %q", got, msg)
		}
	}
}

// TestTCPChain: a TCP port's bytes go to the TCP cluster's endpoint.
func TestTCPChain(t *testing.T) {
	m := newMesh(t, bounds{})
	tcpEcho(t, m, vipTCP, "ping\n")
	rec := m.obs.next(t)
	if rec.Protocol != "TCP" || rec.UpstreamHost != netip.AddrPortFrom(podV1, 9000) || rec.BytesReceived != 5 || rec.BytesSent != 8 {
		t.Errorf("record %+v", rec)
	}
}

func tcpEcho(t *testing.T, m *mesh, vip netip.AddrPort, msg string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	conn, err := m.tunnel(ctx, vip)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(15 * time.Second))
	if _, err := io.WriteString(conn, msg); err != nil {
		t.Fatal(err)
	}
	conn.(*clientTunnel).CloseWrite()
	b, err := io.ReadAll(conn)
	if err != nil {
		t.Fatal(err)
	}
	if want := "v1:" + msg; string(b) != want {
		t.Errorf("got %q, want %q", b, want)
	}
}

// TestSniffedPort: on a port of unknown protocol, HTTP/1, HTTP/2 and
// other bytes each take their path.
func TestSniffedPort(t *testing.T) {
	m := newMesh(t, bounds{})
	res, body := get(t, m.h1Client(vipSniff), "http://reviews/v2")
	if res.StatusCode != 200 || body != "v2" {
		t.Errorf("HTTP/1 on the sniffed port: %d %q, want routed to v2", res.StatusCode, body)
	}
	res, body = get(t, m.h2Client(vipSniff), "http://reviews/v2")
	if res.StatusCode != 200 || body != "v2" || res.Header.Get("X-Proto") != "HTTP/2.0" {
		t.Errorf("HTTP/2 on the sniffed port: %d %q %s, want routed to v2 over HTTP/2", res.StatusCode, body, res.Header.Get("X-Proto"))
	}
	tcpEcho(t, m, vipSniff, "\x16\x03\x01 not http\n")
	tcpEcho(t, m, vipSniff, "GET / HTTP/2.0 is not a request line\n")
}

// TestWeightedRoute: a 50/50 split reaches both subsets, each request
// balanced on its own over one kept-alive client connection.
func TestWeightedRoute(t *testing.T) {
	m := newMesh(t, bounds{})
	c := m.h1Client(vipHTTP)
	n := map[string]int{}
	for range 100 {
		_, body := get(t, c, "http://reviews/split")
		n[body]++
	}
	if n["v1"] < 20 || n["v2"] < 20 || n["v1"]+n["v2"] != 100 {
		t.Errorf("split 50/50 gave %v", n)
	}
}

// TestLocalReplies: Envoy's local replies, word for word, with their
// response flags.
func TestLocalReplies(t *testing.T) {
	m := newMesh(t, bounds{})
	c := m.h1Client(vipHTTP)
	for _, tc := range []struct {
		path, body, flag string
		code             int
	}{
		{"/nothing-routes-this", "", "NR", 404},
		{"/empty", "no healthy upstream", "UH", 503},
		{"/impostor", "upstream connect error or disconnect/reset before headers. reset reason: connection failure", "UF", 503},
		{"/direct", "short and stout", "-", 418},
	} {
		res, body := get(t, c, "http://reviews"+tc.path)
		if res.StatusCode != tc.code || body != tc.body {
			t.Errorf("%s: %d %q, want %d %q", tc.path, res.StatusCode, body, tc.code, tc.body)
		}
		if rec := m.obs.next(t); rec.ResponseFlags != tc.flag || rec.ResponseCode != tc.code {
			t.Errorf("%s: record code %d flags %q, want %d %q", tc.path, rec.ResponseCode, rec.ResponseFlags, tc.code, tc.flag)
		}
	}
	// The impostor's ztunnel never saw a CONNECT: the handshake failed
	// on its identity before any request was sent.
	if tun := m.pods[podEvil].tunnels(); len(tun) != 0 {
		t.Errorf("the impostor received %d tunnels", len(tun))
	}
	res, _ := get(t, c, "http://reviews/moved?q=1")
	if res.StatusCode != 302 || res.Header.Get("Location") != "http://reviews/elsewhere?q=1" {
		t.Errorf("redirect: %d %q", res.StatusCode, res.Header.Get("Location"))
	}
	res, _ = get(t, c, "http://reviews/old/page")
	if res.Header.Get("X-Path") != "/new/page" || res.Header.Get("X-Host") != "rewritten.example" || res.Header.Get("X-Seen-Added") != "yes" {
		t.Errorf("rewrite: app saw path %q host %q x-added %q", res.Header.Get("X-Path"), res.Header.Get("X-Host"), res.Header.Get("X-Seen-Added"))
	}
}

// TestUnknownAuthorityRefused: a CONNECT to a destination without a
// chain is refused with 400.
func TestUnknownAuthorityRefused(t *testing.T) {
	m := newMesh(t, bounds{})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	_, err := m.tunnel(ctx, vipNone)
	var se *hbone.StatusError
	if !errors.As(err, &se) || se.Status != 400 || !strings.Contains(se.Reason, "not served") {
		t.Fatalf("CONNECT to %s: %v, want status 400 naming the destination", vipNone, err)
	}
}

// TestRouteTimeout: the route's timeout answers 504 and cancels the
// upstream request.
func TestRouteTimeout(t *testing.T) {
	m := newMesh(t, bounds{})
	res, body := get(t, m.h1Client(vipHTTP), "http://reviews/wait-timeout")
	if res.StatusCode != 504 || body != "upstream request timeout" {
		t.Errorf("got %d %q", res.StatusCode, body)
	}
	if rec := m.obs.next(t); rec.ResponseFlags != "UT" {
		t.Errorf("flags %q, want UT", rec.ResponseFlags)
	}
	select {
	case <-m.cancelled:
	case <-time.After(10 * time.Second):
		t.Error("the app's request was not cancelled")
	}
}

// TestMirror: a mirrored request reaches the mirror cluster with the
// -shadow authority while the client gets the primary's answer.
func TestMirror(t *testing.T) {
	m := newMesh(t, bounds{})
	res, body := get(t, m.h1Client(vipHTTP), "http://reviews:80/mirror")
	if res.StatusCode != 200 || body != "v1" {
		t.Fatalf("got %d %q", res.StatusCode, body)
	}
	deadline := time.After(10 * time.Second)
	for {
		select {
		case r := <-m.requests:
			if r.pod == "v2" {
				if r.host != "reviews-shadow:80" || r.path != "/mirror" {
					t.Errorf("mirror saw host %q path %q, want reviews-shadow:80 /mirror", r.host, r.path)
				}
				return
			}
		case <-deadline:
			t.Fatal("the mirror cluster got no request")
		}
	}
}

// TestHotSwapKeepsInFlight: a request in flight when a new snapshot
// arrives finishes on its route; the next request takes the new one.
func TestHotSwapKeepsInFlight(t *testing.T) {
	m := newMesh(t, bounds{})
	c := m.h1Client(vipHTTP)
	type result struct {
		code int
		body string
	}
	done := make(chan result, 1)
	go func() {
		req, _ := http.NewRequest(http.MethodGet, "http://reviews/app/wait", nil)
		res, err := c.Do(req)
		if err != nil {
			done <- result{body: err.Error()}
			return
		}
		b, _ := io.ReadAll(res.Body)
		res.Body.Close()
		done <- result{res.StatusCode, string(b)}
	}()
	if pod := <-m.waiting; pod != "v1" {
		t.Fatalf("waiting on %s", pod)
	}
	m.proxy.Update(m.snapshot(t, "v2"))
	if _, body := get(t, m.h1Client(vipHTTP), "http://reviews/app"); body != "v2" {
		t.Errorf("after the swap: %q, want v2", body)
	}
	close(m.release)
	if r := <-done; r.code != 200 || r.body != "v1" {
		t.Errorf("in-flight request: %d %q, want 200 \"v1\"", r.code, r.body)
	}
}

// TestShutdownDrains: Shutdown lets the request in flight finish and
// refuses new tunnels.
func TestShutdownDrains(t *testing.T) {
	m := newMesh(t, bounds{})
	c := m.h2Client(vipHTTP)
	done := make(chan string, 1)
	go func() {
		req, _ := http.NewRequest(http.MethodGet, "http://reviews/app/wait", nil)
		res, err := c.Do(req)
		if err != nil {
			done <- err.Error()
			return
		}
		b, _ := io.ReadAll(res.Body)
		res.Body.Close()
		done <- string(b)
	}()
	<-m.waiting
	shut := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		shut <- m.proxy.Shutdown(ctx)
	}()
	deadline := time.Now().Add(10 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		conn, err := m.tunnel(ctx, vipHTTP)
		cancel()
		if err != nil {
			break
		}
		conn.Close()
		if time.Now().After(deadline) {
			t.Fatal("new tunnels still accepted while draining")
		}
		time.Sleep(20 * time.Millisecond)
	}
	select {
	case err := <-shut:
		t.Fatalf("Shutdown returned (%v) with a request in flight", err)
	default:
	}
	close(m.release)
	if body := <-done; body != "v1" {
		t.Errorf("in-flight request: %q, want v1", body)
	}
	select {
	case err := <-shut:
		if err != nil {
			t.Errorf("Shutdown: %v", err)
		}
	case <-time.After(15 * time.Second):
		t.Error("Shutdown did not return after the last request")
	}
}

// TestEachRequestBalanced: requests multiplexed on one HTTP/2 connection
// are spread over the cluster's endpoints one by one (round robin).
func TestEachRequestBalanced(t *testing.T) {
	m := newMesh(t, bounds{})
	c := m.h2Client(vipHTTP)
	n := map[string]int{}
	for range 10 {
		_, body := get(t, c, "http://reviews/both")
		n[body]++
	}
	if n["v1"] != 5 || n["v2"] != 5 {
		t.Errorf("round robin over two endpoints gave %v, want 5 each", n)
	}
}

// TestConsistentHash: a ring-hash cluster keeps a header's value on one
// endpoint; without the header, the cookie policy generates a cookie.
func TestConsistentHash(t *testing.T) {
	m := newMesh(t, bounds{})
	c := m.h1Client(vipHTTP)
	for _, user := range []string{"jason", "ana", "kim"} {
		pods := map[string]int{}
		for range 10 {
			_, body := get(t, c, "http://reviews/sticky", "End-User", user)
			pods[body]++
		}
		if len(pods) != 1 {
			t.Errorf("user %s went to %v, want one endpoint", user, pods)
		}
	}
	res, _ := get(t, c, "http://reviews/sticky")
	if ck := res.Header.Get("Set-Cookie"); !strings.HasPrefix(ck, "session=") {
		t.Errorf("no generated session cookie: Set-Cookie %q", ck)
	}
}

// TestRetries: a 5xx is retried on another endpoint (previous_hosts);
// when every attempt fails the last answer goes back with flag URX after
// 1 + num_retries attempts.
func TestRetries(t *testing.T) {
	m := newMesh(t, bounds{})
	c := m.h1Client(vipHTTP)
	for range 6 {
		res, body := get(t, c, "http://reviews/retry/fail-on-v1")
		if res.StatusCode != 200 || body != "v2" {
			t.Fatalf("got %d %q, want the retry's 200 from v2", res.StatusCode, body)
		}
		if rec := m.obs.next(t); rec.ResponseFlags != "-" || rec.UpstreamHost != netip.AddrPortFrom(podV2, 8080) {
			t.Errorf("record flags %q host %v", rec.ResponseFlags, rec.UpstreamHost)
		}
	}
	for len(m.requests) > 0 {
		<-m.requests
	}
	res, _ := get(t, c, "http://reviews/retry/fail-on-all")
	if res.StatusCode != 503 {
		t.Errorf("all attempts failed: got %d, want the upstream's 503", res.StatusCode)
	}
	if rec := m.obs.next(t); rec.ResponseFlags != "URX" {
		t.Errorf("flags %q, want URX", rec.ResponseFlags)
	}
	if n := len(m.requests); n != 4 {
		t.Errorf("the apps saw %d attempts, want 4 (1 + num_retries 3)", n)
	}
}

// TestRequestBody: a request body reaches the app and is counted.
func TestRequestBody(t *testing.T) {
	m := newMesh(t, bounds{})
	for _, c := range []*http.Client{m.h1Client(vipHTTP), m.h2Client(vipHTTP)} {
		res, err := c.Post("http://reviews/app", "text/plain", strings.NewReader("hello"))
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(res.Body)
		res.Body.Close()
		if string(b) != "hellov1" {
			t.Errorf("body %q, want the app's echo \"hellov1\"", b)
		}
		if rec := m.obs.next(t); rec.BytesReceived != 5 || rec.BytesSent != 7 || rec.Method != "POST" {
			t.Errorf("record %s: received %d sent %d", rec.Protocol, rec.BytesReceived, rec.BytesSent)
		}
	}
}

// TestH2CUpgradeRefused: an upgrade other than WebSocket (h2c, which would
// make the connection a raw tunnel to the app) is refused with 403 and
// never reaches the app.
func TestH2CUpgradeRefused(t *testing.T) {
	m := newMesh(t, bounds{})
	for len(m.requests) > 0 {
		<-m.requests
	}
	res, _ := get(t, m.h1Client(vipHTTP), "http://reviews/app", "Connection", "Upgrade, HTTP2-Settings", "Upgrade", "h2c", "HTTP2-Settings", "AAMAAABkAARAAAAAAAIAAAAA")
	if res.StatusCode != 403 {
		t.Errorf("h2c upgrade: %d, want 403", res.StatusCode)
	}
	if n := len(m.requests); n != 0 {
		t.Errorf("the app saw %d requests", n)
	}
}

// TestNotReadyRefused: before the first snapshot every CONNECT is refused
// with 503 and Ready is false.
func TestNotReadyRefused(t *testing.T) {
	m := newMesh(t, bounds{})
	p, err := New(Options{Certs: m.src, Identity: waypointID, DialUpstream: m.proxy.opts.DialUpstream})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Shutdown(context.Background()) })
	if p.Ready() {
		t.Error("Ready before any snapshot")
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go p.Serve(ln)
	m.addr = ln.Addr().String()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	_, err = m.tunnel(ctx, vipHTTP)
	var se *hbone.StatusError
	if !errors.As(err, &se) || se.Status != 503 {
		t.Fatalf("CONNECT before the first snapshot: %v, want 503", err)
	}
	p.Update(m.snapshot(t, "v1"))
	if !p.Ready() {
		t.Error("not Ready after Update")
	}
	if _, body := get(t, m.h1Client(vipHTTP), "http://reviews/app"); body != "v1" {
		t.Errorf("after Update: %q, want v1", body)
	}
}

// TestClientGoneCancelsUpstream: a client that gives up mid-request (its
// HTTP/2 stream reset) cancels the upstream request; the record says DC.
func TestClientGoneCancelsUpstream(t *testing.T) {
	m := newMesh(t, bounds{})
	c := m.h2Client(vipHTTP)
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://reviews/app/wait", nil)
		res, err := c.Do(req)
		if err == nil {
			res.Body.Close()
		}
		errc <- err
	}()
	<-m.waiting
	cancel()
	if err := <-errc; err == nil {
		t.Error("the cancelled request succeeded")
	}
	select {
	case <-m.cancelled:
	case <-time.After(10 * time.Second):
		t.Fatal("the app's request was not cancelled")
	}
	if rec := m.obs.next(t); !strings.Contains(rec.ResponseFlags, "DC") {
		t.Errorf("flags %q, want DC", rec.ResponseFlags)
	}
}
