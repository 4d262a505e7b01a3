package podapp

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"golang.org/x/net/websocket"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	grpcecho "sigs.k8s.io/gateway-api/conformance/echo-basic/grpcechoserver"
)

var testPod = Pod{
	Namespace: "default", Name: "echo-v2-7d9f",
	Labels:  map[string]string{"app": "echo", "version": "v2"},
	Service: "echo",
}

// startApp serves port p of pod on a loopback port and returns its address.
func startApp(t *testing.T, pod Pod, p Port) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- New(pod).Serve(ctx, ln, p) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Serve: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Error("Serve did not return after cancel")
		}
	})
	return ln.Addr().String()
}

func get(t *testing.T, c *http.Client, url string, hdr http.Header) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, vs := range hdr {
		req.Header[k] = vs
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: read body: %v", url, err)
	}
	return resp, body
}

func TestHTTPEcho(t *testing.T) {
	addr := startApp(t, testPod, Port{Name: "http", Port: 80})
	resp, body := get(t, http.DefaultClient, "http://"+addr+"/some/path?x=1", http.Header{"End-User": {"jason"}})
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "application/json" {
		t.Fatalf("status %d, content-type %q", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	e, err := ParseEcho(body)
	if err != nil {
		t.Fatal(err)
	}
	want := Echo{Path: "/some/path?x=1", Host: addr, Method: "GET", Proto: "HTTP/1.1",
		Namespace: "default", Service: "echo", Pod: "echo-v2-7d9f", Version: "v2"}
	got := e
	got.Headers, got.From = nil, ""
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("echo\n%+v\nwant\n%+v", got, want)
	}
	if h := e.Headers["End-User"]; len(h) != 1 || h[0] != "jason" {
		t.Errorf("headers[End-User] = %q, want [jason]; all %v", h, e.Headers)
	}
	if !strings.HasPrefix(e.From, "127.0.0.1:") {
		t.Errorf("from %q, want the client's 127.0.0.1:port", e.From)
	}
	// The field names are echo-basic's.
	for _, f := range []string{`"path"`, `"host"`, `"method"`, `"proto"`, `"headers"`, `"namespace"`, `"ingress"`, `"service"`, `"pod"`, `"version"`} {
		if !bytes.Contains(body, []byte(f)) {
			t.Errorf("body lacks field %s: %s", f, body)
		}
	}
}

func TestHTTPStatus(t *testing.T) {
	addr := startApp(t, testPod, Port{Port: 80})
	for path, want := range map[string]int{
		"/status/418":         418,
		"/status/503?delay=0": 503,
		"/status/200":         200,
		"/status/abc":         400,
		"/status/99":          400,
		"/status/600":         400,
		"/status/2000":        400,
	} {
		if resp, _ := get(t, http.DefaultClient, "http://"+addr+path, nil); resp.StatusCode != want {
			t.Errorf("GET %s: %d, want %d", path, resp.StatusCode, want)
		}
	}
	if resp, body := get(t, http.DefaultClient, "http://"+addr+"/health", nil); resp.StatusCode != 200 || string(body) != "OK" {
		t.Errorf("GET /health: %d %q", resp.StatusCode, body)
	}
}

func TestHTTPDelay(t *testing.T) {
	addr := startApp(t, testPod, Port{Port: 80})
	const delay = 300 * time.Millisecond
	start := time.Now()
	resp, _ := get(t, http.DefaultClient, "http://"+addr+"/?delay=300ms", nil)
	if took := time.Since(start); resp.StatusCode != 200 || took < delay {
		t.Errorf("?delay=300ms: %d after %s, want 200 after at least %s", resp.StatusCode, took, delay)
	}
	for _, bad := range []string{"soon", "-1s", "1h"} {
		resp, body := get(t, http.DefaultClient, "http://"+addr+"/?delay="+bad, nil)
		if resp.StatusCode != 500 || !strings.Contains(string(body), `"message"`) {
			t.Errorf("?delay=%s: %d %s, want 500 with a message", bad, resp.StatusCode, body)
		}
	}
	// A client that gives up frees the handler (a proxy's timeout cancels
	// the upstream request): the server answers the next request at once.
	ctx, cancel := context.WithTimeout(t.Context(), 200*time.Millisecond)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/?delay=4m", nil)
	if _, err := http.DefaultClient.Do(req); err == nil {
		t.Fatal("a 4m delay answered within 200ms")
	}
}

func TestHTTPSetHeader(t *testing.T) {
	addr := startApp(t, testPod, Port{Port: 80})
	resp, _ := get(t, http.DefaultClient, "http://"+addr+"/", http.Header{
		"X-Echo-Set-Header": {"X-Foo: a, x-Bar: b", "X-Foo: c"},
	})
	if got := resp.Header.Values("X-Foo"); len(got) != 1 || got[0] != "a,c" {
		t.Errorf("X-Foo = %q, want [a,c]", got)
	}
	if got := resp.Header.Values("X-Bar"); len(got) != 1 || got[0] != "b" {
		t.Errorf("X-Bar = %q, want [b]; headers %v", got, resp.Header)
	}
	resp, _ = get(t, http.DefaultClient, "http://"+addr+"/status/404", http.Header{"X-Echo-Set-Header": {"Cache-Control: no-store"}})
	if resp.StatusCode != 404 || resp.Header.Get("Cache-Control") != "no-store" {
		t.Errorf("/status/404 with a set header: %d %v", resp.StatusCode, resp.Header)
	}
}

func TestH2CPriorKnowledge(t *testing.T) {
	addr := startApp(t, testPod, Port{Name: "http2-web", Port: 80})
	tr := &http.Transport{Protocols: new(http.Protocols)}
	tr.Protocols.SetUnencryptedHTTP2(true)
	defer tr.CloseIdleConnections()
	resp, body := get(t, &http.Client{Transport: tr}, "http://"+addr+"/h2", nil)
	e, err := ParseEcho(body)
	if err != nil || resp.ProtoMajor != 2 || e.Proto != "HTTP/2.0" || e.Path != "/h2" || e.Version != "v2" {
		t.Errorf("h2c: response %s, echo %+v, %v; want HTTP/2.0 both ways", resp.Proto, e, err)
	}
}

func TestH2CUpgrade(t *testing.T) {
	addr := startApp(t, testPod, Port{Port: 80})
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	var settings bytes.Buffer
	http2.NewFramer(&settings, nil).WriteSettings()
	fmt.Fprintf(c, "GET /up HTTP/1.1\r\nHost: %s\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: %s\r\n\r\n",
		addr, base64.RawURLEncoding.EncodeToString(settings.Bytes()[9:]))
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != http.StatusSwitchingProtocols || resp.Header.Get("Upgrade") != "h2c" {
		t.Fatalf("upgrade: %v %v", resp, err)
	}
	// Now HTTP/2: our preface and SETTINGS, then the answer to the
	// upgrading request on stream 1.
	io.WriteString(c, h2Preface)
	fr := http2.NewFramer(c, br)
	fr.WriteSettings()
	var status string
	var body []byte
	dec := hpack.NewDecoder(4096, func(f hpack.HeaderField) {
		if f.Name == ":status" {
			status = f.Value
		}
	})
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			t.Fatalf("read frame: %v (status %q, body %q)", err, status, body)
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if !f.IsAck() {
				fr.WriteSettingsAck()
			}
		case *http2.HeadersFrame:
			if f.StreamID != 1 {
				t.Fatalf("headers on stream %d, want 1", f.StreamID)
			}
			dec.Write(f.HeaderBlockFragment())
		case *http2.DataFrame:
			body = append(body, f.Data()...)
			if f.StreamEnded() {
				e, err := ParseEcho(body)
				if status != "200" || err != nil || e.Proto != "HTTP/2.0" || e.Path != "/up" {
					t.Errorf("upgraded stream 1: status %q, echo %+v, %v", status, e, err)
				}
				if _, ok := e.Headers["Upgrade"]; ok {
					t.Errorf("the upgraded request still carries its hop-by-hop headers: %v", e.Headers)
				}
				return
			}
		}
	}
}

func TestGRPCEcho(t *testing.T) {
	addr := startApp(t, testPod, Port{Name: "grpc", Port: 80})
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	client := grpcecho.NewGrpcEchoClient(conn)
	ctx := metadata.AppendToOutgoingContext(t.Context(), "x-test", "42")
	for method, call := range map[string]func(context.Context, *grpcecho.EchoRequest, ...grpc.CallOption) (*grpcecho.EchoResponse, error){
		"/gateway_api_conformance.echo_basic.grpcecho.GrpcEcho/Echo":    client.Echo,
		"/gateway_api_conformance.echo_basic.grpcecho.GrpcEcho/EchoTwo": client.EchoTwo,
	} {
		resp, err := call(ctx, &grpcecho.EchoRequest{})
		if err != nil {
			t.Fatalf("%s: %v", method, err)
		}
		a := resp.GetAssertions()
		if a.GetFullyQualifiedMethod() != method || a.GetAuthority() != addr {
			t.Errorf("%s: method %q, authority %q (want %q)", method, a.GetFullyQualifiedMethod(), a.GetAuthority(), addr)
		}
		c := a.GetContext()
		if c.GetNamespace() != "default" || c.GetPod() != "echo-v2-7d9f" || c.GetServiceName() != "echo" {
			t.Errorf("%s: context %v", method, c)
		}
		var sawTest bool
		for _, h := range a.GetHeaders() {
			sawTest = sawTest || h.GetKey() == "x-test" && h.GetValue() == "42"
		}
		if !sawTest {
			t.Errorf("%s: headers %v lack x-test: 42", method, a.GetHeaders())
		}
	}
	if _, err := client.EchoThree(ctx, &grpcecho.EchoRequest{}); status.Code(err) != codes.Unimplemented {
		t.Errorf("EchoThree: %v, want Unimplemented", err)
	}
}

func TestTCPEcho(t *testing.T) {
	for _, tc := range []struct {
		name  string
		port  Port
		greet bool // the server speaks first
	}{
		{"greeting port", Port{Name: "tcp-echo", Port: 80}, true},
		{"9000 unnamed", Port{Port: EchoPort}, true},
		{"HTTP port, not HTTP", Port{Name: "http", Port: 80}, false},
		{"unnamed port, not HTTP", Port{Port: 7070}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			addr := startApp(t, testPod, tc.port)
			c, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(10 * time.Second))
			r := bufio.NewReader(c)
			if !tc.greet {
				// An HTTP port says nothing until the client speaks.
				c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
				if b, err := r.Peek(1); err == nil {
					t.Fatalf("the server spoke first: %q", b)
				}
				c.SetReadDeadline(time.Now().Add(10 * time.Second))
			}
			io.WriteString(c, "hello\n")
			line, err := r.ReadString('\n')
			if pod, from, ok := ParseGreeting(line); err != nil || !ok || pod != "default/echo-v2-7d9f" || from != c.LocalAddr().String() {
				t.Fatalf("greeting %q, %v", line, err)
			}
			io.WriteString(c, "world\n")
			for _, want := range []string{"hello\n", "world\n"} {
				if got, err := r.ReadString('\n'); got != want {
					t.Fatalf("echo %q, %v; want %q", got, err, want)
				}
			}
		})
	}
}

func TestSniff(t *testing.T) {
	for in, want := range map[string]protocol{
		"GET / HTTP/1.1\r\n":     protoHTTP1,
		"OPTIONS * HTTP/1.1\r\n": protoHTTP1,
		h2Preface:                protoHTTP2,
		"PRI * HTTP/1.1\r\n\r\n": protoRaw,
		"hello\n":                protoRaw,
		" GET /":                 protoRaw,
		"get / HTTP/1.1\r\n":     protoRaw,
		"\x16\x03\x01\x00":       protoRaw, // a TLS ClientHello
		"VERYLONGMETHODNAMEXY /": protoRaw,
		"GE":                     protoRaw, // then EOF
	} {
		if got := sniff(bufio.NewReader(strings.NewReader(in))); got != want {
			t.Errorf("sniff(%q) = %d, want %d", in, got, want)
		}
	}
}

func TestParsePod(t *testing.T) {
	pod, err := ParsePod("shop/reviews-v3-1", `{
	  "metadata": {"name": "reviews-v3-1", "labels": {"app": "reviews", "version": "v3"}},
	  "spec": {"containers": [
	    {"ports": [{"name": "http", "containerPort": 9080}, {"containerPort": 53, "protocol": "UDP"}]},
	    {"ports": [{"name": "tcp-db", "containerPort": 8080}, {"containerPort": 9080}],
	     "env": [{"name": "SERVICE_NAME", "value": "reviews-svc"}]}
	  ]}}`)
	if err != nil {
		t.Fatal(err)
	}
	if pod.ID() != "shop/reviews-v3-1" || pod.Version() != "v3" || pod.Service != "reviews-svc" {
		t.Errorf("pod %+v", pod)
	}
	if got, want := fmt.Sprint(pod.Serves()), "[{http 9080} {tcp-db 8080} { 9000}]"; got != want {
		t.Errorf("serves %s, want %s", got, want)
	}
	if pod, _ := ParsePod("a/b", ""); fmt.Sprint(pod.Serves()) != "[{ 8080} { 9000}]" || pod.Service != "" {
		t.Errorf("no pod JSON: %+v serves %v", pod, pod.Serves())
	}
	for _, tc := range []struct{ id, js, want string }{
		{"nons", "", "want namespace/name"},
		{"a/b", "{", "ZMESH_PODAPP_POD"},
		{"a/b", `{"spec":{"containers":[{"ports":[{"containerPort":70000}]}]}}`, "spec.containers[0].ports[0].containerPort 70000"},
	} {
		if _, err := ParsePod(tc.id, tc.js); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("ParsePod(%q, %q) = %v, want an error with %q", tc.id, tc.js, err, tc.want)
		}
	}
}

func TestPortRoles(t *testing.T) {
	for p, greets := range map[Port]bool{
		{Port: 9000}:                   true,
		{Port: 8080}:                   false,
		{Name: "tcp", Port: 80}:        true,
		{Name: "tcp-echo", Port: 80}:   true,
		{Name: "http", Port: 9000}:     false,
		{Name: "grpc-api", Port: 9000}: false,
		{Name: "echo", Port: 9000}:     true, // not a protocol name: the number decides
		{Name: "tcpx", Port: 80}:       false,
	} {
		if p.Greets() != greets {
			t.Errorf("%+v greets = %v, want %v", p, p.Greets(), greets)
		}
	}
}

func TestWebSocketEcho(t *testing.T) {
	addr := startApp(t, testPod, Port{Port: 80})
	ws, err := websocket.Dial("ws://"+addr+"/ws", "", "http://test/")
	if err != nil {
		t.Fatal(err)
	}
	defer ws.Close()
	ws.SetDeadline(time.Now().Add(10 * time.Second))
	if err := websocket.Message.Send(ws, "hello over ws"); err != nil {
		t.Fatal(err)
	}
	var got string
	if err := websocket.Message.Receive(ws, &got); err != nil || got != "hello over ws" {
		t.Errorf("echo %q, %v", got, err)
	}
}
