package proxy

import (
	"context"
	"errors"
	"io"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	faultv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/fault/v3"
	rbacv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/rbac/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"sigs.k8s.io/yaml"

	"github.com/zmesh/zmesh/waypoint/config"
)

// TestSlowlorisHeaders: a client trickling header lines is cut off after
// ReadHeaderTimeout, however steadily it sends.
func TestSlowlorisHeaders(t *testing.T) {
	m := newMesh(t, bounds{ReadHeaderTimeout: 500 * time.Millisecond})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	conn, err := m.tunnel(ctx, vipHTTP)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	closed := make(chan struct{})
	go func() {
		io.Copy(io.Discard, conn)
		close(closed)
	}()
	io.WriteString(conn, "GET /app HTTP/1.1\r\nHost: reviews\r\n")
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	deadline := time.After(8 * time.Second)
	for {
		select {
		case <-closed:
			return
		case <-tick.C:
			io.WriteString(conn, "X-Slow: 1\r\n")
		case <-deadline:
			t.Fatal("a connection trickling headers was held for 8s (ReadHeaderTimeout 500ms)")
		}
	}
}

// TestSilentTunnelOnHTTPPort: a tunnel that sends nothing on an HTTP port
// is closed after ReadHeaderTimeout.
func TestSilentTunnelOnHTTPPort(t *testing.T) {
	m := newMesh(t, bounds{ReadHeaderTimeout: 500 * time.Millisecond})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	conn, err := m.tunnel(ctx, vipHTTP)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetReadDeadline(time.Now().Add(8 * time.Second))
	// The waypoint ends the tunnel (end of stream or reset); only our
	// own deadline firing means it held it.
	if _, err := io.ReadAll(conn); errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("a silent tunnel was held for 8s (ReadHeaderTimeout 500ms): %v", err)
	}
}

// TestOversizedHeaders: a header block above MaxHeaderBytes is refused
// with 431, not buffered.
func TestOversizedHeaders(t *testing.T) {
	m := newMesh(t, bounds{MaxHeaderBytes: 8 << 10})
	res, _ := get(t, m.h1Client(vipHTTP), "http://reviews/app", "X-Big", strings.Repeat("a", 64<<10))
	if res.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
		t.Errorf("got %d, want 431", res.StatusCode)
	}
}

// TestSniffTimeoutFallsBackToTCP: a client that waits for the server to
// speak first (a server-first protocol) on a sniffed port is forwarded as
// TCP once the sniff timeout passes.
func TestSniffTimeoutFallsBackToTCP(t *testing.T) {
	m := newMesh(t, bounds{SniffTimeout: 300 * time.Millisecond})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	conn, err := m.tunnel(ctx, vipSniff)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	b := make([]byte, 3)
	if _, err := io.ReadFull(conn, b); err != nil || string(b) != "v1:" {
		t.Fatalf("read %q, %v; want the TCP app's greeting", b, err)
	}
}

// TestClassify: the sniffer's decision on first bytes.
func TestClassify(t *testing.T) {
	for _, tc := range []struct {
		in   string
		kind sniffKind
		done bool
	}{
		{"", sniffTCP, false},
		{"PRI * HTTP/2.0\r\n", sniffTCP, false},
		{h2Preface, sniffH2, true},
		{"GET / HTTP/1.1\r\n", sniffHTTP1, true},
		{"POST /x?y HTTP/1.0", sniffHTTP1, true},
		{"GET / HTTP/1.", sniffTCP, false},
		{"GET / HTTP/2.0\r\n", sniffTCP, true},
		{"GET /", sniffTCP, false},
		{"\x16\x03\x01\x02", sniffTCP, true},
		{"GET  / HTTP/1.1", sniffTCP, true},
		{"SSH-2.0-OpenSSH\r\n", sniffTCP, true},
		{strings.Repeat("A", 40), sniffTCP, true},
	} {
		k, done := classify([]byte(tc.in))
		if k != tc.kind || done != tc.done {
			t.Errorf("classify(%q) = %v, %v; want %v, %v", tc.in, k, done, tc.kind, tc.done)
		}
	}
}

func unmarshalYAML(t *testing.T, y string, m proto.Message) {
	t.Helper()
	j, err := yaml.YAMLToJSON([]byte(y))
	if err != nil {
		t.Fatal(err)
	}
	if err := protojson.Unmarshal(j, m); err != nil {
		t.Fatal(err)
	}
}

// TestFilters: an RBAC DENY and a fault abort answer as Envoy does.
func TestFilters(t *testing.T) {
	m := newMesh(t, bounds{})
	rb := &rbacv3.RBAC{}
	unmarshalYAML(t, `
rules:
  action: DENY
  policies:
    deny-evil:
      permissions: [{header: {name: x-evil, present_match: true}}]
      principals: [{authenticated: {principal_name: {exact: "spiffe://cluster.local/ns/default/sa/sleep"}}}]
`, rb)
	set, err := config.CompileRBAC("rbac", rb)
	if err != nil {
		t.Fatal(err)
	}
	fl := &faultv3.HTTPFault{}
	unmarshalYAML(t, `
abort: {http_status: 503, percentage: {numerator: 100}}
headers: [{name: x-fault, present_match: true}]
`, fl)
	f, err := config.CompileFault("fault", fl)
	if err != nil {
		t.Fatal(err)
	}
	s := m.snapshot(t, "v1")
	ch := *s.Chains[vipHTTP]
	dl := &faultv3.HTTPFault{}
	unmarshalYAML(t, `
delay: {fixed_delay: 0.05s, percentage: {numerator: 100}}
headers: [{name: x-delay, present_match: true}]
`, dl)
	delay, err := config.CompileFault("fault", dl)
	if err != nil {
		t.Fatal(err)
	}
	ch.HTTPFilters = []config.HTTPFilter{
		{Name: "envoy.filters.http.rbac", RBAC: set},
		{Name: "envoy.filters.http.fault", Fault: f},
		{Name: "envoy.filters.http.fault", Fault: delay},
	}
	s.Chains[vipHTTP] = &ch
	m.proxy.Update(s)
	c := m.h1Client(vipHTTP)
	res, body := get(t, c, "http://reviews/app", "X-Evil", "1")
	if res.StatusCode != 403 || body != "RBAC: access denied" {
		t.Errorf("denied: %d %q", res.StatusCode, body)
	}
	if rec := m.obs.next(t); rec.ResponseFlags != "RBAC" || rec.PolicyName != "deny-evil" {
		t.Errorf("denied: flags %q policy %q", rec.ResponseFlags, rec.PolicyName)
	}
	res, body = get(t, c, "http://reviews/app", "X-Fault", "1")
	if res.StatusCode != 503 || body != "fault filter abort" {
		t.Errorf("fault: %d %q", res.StatusCode, body)
	}
	if rec := m.obs.next(t); rec.ResponseFlags != "FI" {
		t.Errorf("fault: flags %q", rec.ResponseFlags)
	}
	if res, body = get(t, c, "http://reviews/app"); res.StatusCode != 200 || body != "v1" {
		t.Errorf("plain request: %d %q", res.StatusCode, body)
	}
	if rec := m.obs.next(t); rec.ResponseFlags != "-" {
		t.Errorf("plain request: flags %q", rec.ResponseFlags)
	}
	if res, body = get(t, c, "http://reviews/app", "X-Delay", "1"); res.StatusCode != 200 || body != "v1" {
		t.Errorf("delayed request: %d %q", res.StatusCode, body)
	}
	if rec := m.obs.next(t); rec.ResponseFlags != "DI" || rec.Duration < 50*time.Millisecond {
		t.Errorf("delayed request: flags %q after %v, want DI after at least 50ms", rec.ResponseFlags, rec.Duration)
	}
}

// TestCORS: a preflight from an allowed origin is answered by the
// waypoint; responses to it carry the allow and expose headers; another
// origin gets none.
func TestCORS(t *testing.T) {
	m := newMesh(t, bounds{})
	c := m.h1Client(vipHTTP)
	req, _ := http.NewRequest(http.MethodOptions, "http://reviews/cors", nil)
	req.Header.Set("Origin", "https://ok.example")
	req.Header.Set("Access-Control-Request-Method", "POST")
	res, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != 200 || res.Header.Get("Access-Control-Allow-Origin") != "https://ok.example" ||
		res.Header.Get("Access-Control-Allow-Methods") != "GET,POST" || res.Header.Get("Access-Control-Max-Age") != "600" ||
		res.Header.Get("X-Pod") != "" {
		t.Errorf("preflight: %d %v", res.StatusCode, res.Header)
	}
	res, _ = get(t, c, "http://reviews/cors", "Origin", "https://ok.example")
	if res.Header.Get("Access-Control-Allow-Origin") != "https://ok.example" || res.Header.Get("Access-Control-Expose-Headers") != "x-pod" || res.Header.Get("X-Pod") != "v1" {
		t.Errorf("simple request: %v", res.Header)
	}
	res, _ = get(t, c, "http://reviews/cors", "Origin", "https://evil.example")
	if v := res.Header.Get("Access-Control-Allow-Origin"); v != "" {
		t.Errorf("other origin got Access-Control-Allow-Origin %q", v)
	}
}

func TestShadowHost(t *testing.T) {
	for in, want := range map[string]string{
		"reviews":               "reviews-shadow",
		"reviews:80":            "reviews-shadow:80",
		"10.0.0.1:8080":         "10.0.0.1-shadow:8080",
		"[fd00::1]:80":          "[fd00::1]:80",
		"a.b.svc.cluster.local": "a.b.svc.cluster.local-shadow",
	} {
		if got := shadowHost(in); got != want {
			t.Errorf("shadowHost(%q) = %q, want %q", in, got, want)
		}
	}
}

// BenchmarkHTTP1Request: one HTTP/1.1 request through the waypoint on a
// kept-alive tunnel (client, waypoint and app on loopback).
func BenchmarkHTTP1Request(b *testing.B) {
	m := newMesh(b, bounds{})
	benchGets(b, m.h1Client(vipHTTP), "http://reviews/app")
}

// BenchmarkHTTP1Direct is the baseline of BenchmarkHTTP1Request: the same
// client and app over plain loopback TCP, without the waypoint, its two
// HBONE hops and the fake ztunnel; the difference is the waypoint's cost.
func BenchmarkHTTP1Direct(b *testing.B) {
	m := newMesh(b, bounds{})
	app := m.pods[podV1].apps[8080]
	tr := &http.Transport{DisableCompression: true}
	b.Cleanup(tr.CloseIdleConnections)
	benchGets(b, &http.Client{Transport: tr}, "http://"+app+"/app")
}

// benchGets times GETs of url with c, each read to the end and required to
// answer 200.
func benchGets(b *testing.B, c *http.Client, url string) {
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		res, err := c.Get(url)
		if err != nil {
			b.Fatal(err)
		}
		io.Copy(io.Discard, res.Body)
		res.Body.Close()
		if res.StatusCode != 200 {
			b.Fatal(res.Status)
		}
	}
}

// TestPathNormalizedBeforeRBAC: dot segments, also percent-encoded, are
// resolved before RBAC and routing, so a DENY on /admin sees every
// spelling the app would resolve to /admin, and the app gets the
// normalized path.
func TestPathNormalizedBeforeRBAC(t *testing.T) {
	m := newMesh(t, bounds{})
	rb := &rbacv3.RBAC{}
	unmarshalYAML(t, `
rules:
  action: DENY
  policies:
    deny-admin:
      permissions: [{url_path: {path: {prefix: /app/admin}}}]
      principals: [{any: true}]
`, rb)
	set, err := config.CompileRBAC("rbac", rb)
	if err != nil {
		t.Fatal(err)
	}
	s := m.snapshot(t, "v1")
	ch := *s.Chains[vipHTTP]
	ch.HTTPFilters = []config.HTTPFilter{{Name: "envoy.filters.http.rbac", RBAC: set}}
	s.Chains[vipHTTP] = &ch
	m.proxy.Update(s)
	c := m.h1Client(vipHTTP)
	for _, p := range []string{"/app/admin", "/app/public/../admin", "/app/%2e%2e/app/admin", "/app/./admin/x"} {
		req, _ := http.NewRequest(http.MethodGet, "http://reviews/", nil)
		req.URL.Opaque = p // sent as written, not cleaned by the client
		res, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, res.Body)
		res.Body.Close()
		if res.StatusCode != 403 {
			t.Errorf("%s: %d, want 403", p, res.StatusCode)
		}
	}
	req, _ := http.NewRequest(http.MethodGet, "http://reviews/", nil)
	req.URL.Opaque = "/app/x/../%7Euser"
	res, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if got := res.Header.Get("X-Path"); res.StatusCode != 200 || got != "/app/~user" {
		t.Errorf("allowed request: %d, app saw %q, want 200 /app/~user", res.StatusCode, got)
	}
}

// TestMaxActiveFaults: with max_active_faults 1, a request arriving while
// another is being delayed goes through unharmed.
func TestMaxActiveFaults(t *testing.T) {
	m := newMesh(t, bounds{})
	fl := &faultv3.HTTPFault{}
	unmarshalYAML(t, `
delay: {fixed_delay: 3s, percentage: {numerator: 100}}
max_active_faults: 1
`, fl)
	f, err := config.CompileFault("fault", fl)
	if err != nil {
		t.Fatal(err)
	}
	s := m.snapshot(t, "v1")
	ch := *s.Chains[vipHTTP]
	ch.HTTPFilters = []config.HTTPFilter{{Name: "envoy.filters.http.fault", Fault: f}}
	s.Chains[vipHTTP] = &ch
	m.proxy.Update(s)
	first := make(chan struct{})
	c1 := m.h1Client(vipHTTP)
	go func() {
		defer close(first)
		if res, err := c1.Get("http://reviews/app"); err == nil {
			io.Copy(io.Discard, res.Body)
			res.Body.Close()
		}
	}()
	// Wait until the first request holds the fault.
	deadline := time.Now().Add(10 * time.Second)
	for m.proxy.state.Load().activeFaults[f].Load() != 1 {
		if time.Now().After(deadline) {
			t.Fatal("the first request was not delayed")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if res, body := get(t, m.h1Client(vipHTTP), "http://reviews/app"); res.StatusCode != 200 || body != "v1" {
		t.Errorf("second request: %d %q", res.StatusCode, body)
	}
	if rec := m.obs.next(t); rec.ResponseFlags != "-" {
		t.Errorf("second request: flags %q, want none (the one active fault is taken)", rec.ResponseFlags)
	}
	<-first
	if rec := m.obs.next(t); rec.ResponseFlags != "DI" {
		t.Errorf("first request: flags %q, want DI", rec.ResponseFlags)
	}
}
