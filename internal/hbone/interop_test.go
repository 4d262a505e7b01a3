package hbone

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"net/url"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/zmesh/zmesh/identity"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// rawConnect speaks HTTP/2 by hand: preface, empty SETTINGS, and one HEADERS
// frame holding exactly the given fields. It returns the response :status.
func rawConnect(t *testing.T, addr string, fields []hpack.HeaderField) string {
	t.Helper()
	fr, bw := rawClient(t, addr)
	fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	var hb bytes.Buffer
	enc := hpack.NewEncoder(&hb)
	for _, f := range fields {
		enc.WriteField(f)
	}
	fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: hb.Bytes(), EndHeaders: true})
	bw.Flush()
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			t.Fatalf("reading response: %v", err)
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if !f.IsAck() {
				fr.WriteSettingsAck()
				bw.Flush()
			}
		case *http2.MetaHeadersFrame:
			return f.PseudoValue("status")
		case *http2.RSTStreamFrame:
			return "RST_STREAM " + f.ErrCode.String()
		}
	}
}

// rawClient opens a TLS connection as alice and writes the client preface
// and an empty SETTINGS (unflushed), for tests that speak HTTP/2 by hand.
func rawClient(t *testing.T, addr string) (*http2.Framer, *bufio.Writer) {
	t.Helper()
	tc, err := tls.Dial("tcp", addr, identity.ClientTLS(testPKI(t).src, alice, []spiffeid.ID{bob}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tc.Close() })
	tc.SetDeadline(time.Now().Add(5 * time.Second))
	bw := bufio.NewWriter(tc)
	bw.WriteString(http2.ClientPreface)
	fr := http2.NewFramer(bw, tc)
	fr.WriteSettings()
	return fr, bw
}

// Istio's Go HBONE client sends only :method and :authority: no :scheme,
// :path, Forwarded, baggage or traceparent. That request must be served.
func TestMinimalIstioRequestAccepted(t *testing.T) {
	ts := startServer(t, echoHandler, bob, nil)
	got := rawConnect(t, ts.addr, []hpack.HeaderField{
		{Name: ":method", Value: "CONNECT"},
		{Name: ":authority", Value: "10.0.0.7:8080"},
	})
	if got != "200" {
		t.Fatalf("minimal CONNECT answered %s, want 200", got)
	}
}

func TestMalformedRequestsGet400(t *testing.T) {
	ts := startServer(t, echoHandler, bob, nil)
	for name, fields := range map[string][]hpack.HeaderField{
		"GET":               {{Name: ":method", Value: "GET"}, {Name: ":authority", Value: "10.0.0.7:80"}, {Name: ":scheme", Value: "https"}, {Name: ":path", Value: "/"}},
		"hostname":          {{Name: ":method", Value: "CONNECT"}, {Name: ":authority", Value: "example.com:80"}},
		"extended CONNECT":  {{Name: ":method", Value: "CONNECT"}, {Name: ":protocol", Value: "websocket"}, {Name: ":authority", Value: "10.0.0.7:80"}, {Name: ":scheme", Value: "https"}, {Name: ":path", Value: "/"}},
		"bad forwarded":     {{Name: ":method", Value: "CONNECT"}, {Name: ":authority", Value: "10.0.0.7:80"}, {Name: "forwarded", Value: `for="oops`}},
		"missing authority": {{Name: ":method", Value: "CONNECT"}},
	} {
		if got := rawConnect(t, ts.addr, fields); got != "400" {
			t.Errorf("%s: answered %s, want 400", name, got)
		}
	}
}

// x/net's HTTP/2 transport (what Istio's Go HBONE client is built on)
// tunnels through our server.
func TestXNetClientThroughOurServer(t *testing.T) {
	p := testPKI(t)
	ts := startServer(t, echoHandler, bob, nil)
	tr := &http2.Transport{TLSClientConfig: identity.ClientTLS(p.src, alice, []spiffeid.ID{bob})}
	defer tr.CloseIdleConnections()
	pr, pw := io.Pipe()
	req := &http.Request{
		Method: http.MethodConnect,
		URL:    &url.URL{Scheme: "https", Host: ts.addr},
		Host:   "10.0.0.7:8080",
		Header: http.Header{},
		Body:   pr,
	}
	// The dial goes to the server; :authority is the tunnel target.
	tr.DialTLSContext = func(ctx context.Context, network, _ string, cfg *tls.Config) (net.Conn, error) {
		return tls.Dial(network, ts.addr, cfg)
	}
	resp, err := tr.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	pw.Write([]byte("through x/net"))
	pw.Close()
	b, err := readAllTimeout(t, resp.Body, 5*time.Second)
	if err != nil || string(b) != "through x/net" {
		t.Fatalf("echo = %q, %v", b, err)
	}
}

// Our client tunnels through x/net's HTTP/2 server (as a stand-in for other
// HBONE servers built on standard HTTP/2 stacks).
func TestOurClientThroughXNetServer(t *testing.T) {
	p := testPKI(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	h2 := &http2.Server{}
	cfg := identity.ServerTLS(p.src, bob, nil)
	gotAuthority := make(chan string, 1)
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		gotAuthority <- r.Host
		w.WriteHeader(200)
		w.(http.Flusher).Flush()
		b, _ := io.ReadAll(r.Body)
		w.Write(b)
	})
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				tc := tls.Server(c, cfg)
				if tc.Handshake() != nil {
					tc.Close()
					return
				}
				h2.ServeConn(tc, &http2.ServeConnOpts{Handler: handler})
			}()
		}
	}()
	cc, err := dialClient(t, ln.Addr().String(), alice, bob)
	if err != nil {
		t.Fatal(err)
	}
	st, err := cc.Connect(context.Background(), target("10.0.0.7:8080"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if a := <-gotAuthority; a != "10.0.0.7:8080" {
		t.Errorf("x/net server saw authority %q", a)
	}
	if got := exchange(t, st, "through ours"); got != "through ours" {
		t.Fatalf("echo = %q", got)
	}
	// Early data (DATA before the answer) is an ordinary request body to
	// a standard HTTP/2 server.
	req := target("10.0.0.7:8080")
	req.EarlyData = []byte("early, ")
	st2, err := cc.Connect(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	defer st2.Close()
	<-gotAuthority
	if got := exchange(t, st2, "then the rest"); got != "early, then the rest" {
		t.Fatalf("echo with early data = %q", got)
	}
}

// Both ends advertise ztunnel's windows: 4 MiB per stream in SETTINGS and a
// connection window grown to 16 MiB by WINDOW_UPDATE on stream 0.
func TestAdvertisedWindows(t *testing.T) {
	ts := startServer(t, echoHandler, bob, nil)
	fr, bw := rawClient(t, ts.addr)
	bw.Flush()
	var streamWin, connInc uint32
	for streamWin == 0 || connInc == 0 {
		f, err := fr.ReadFrame()
		if err != nil {
			t.Fatalf("read: %v (stream window %d, conn increment %d)", err, streamWin, connInc)
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if v, ok := f.Value(http2.SettingInitialWindowSize); ok {
				streamWin = v
			}
		case *http2.WindowUpdateFrame:
			if f.StreamID == 0 {
				connInc = f.Increment
			}
		}
	}
	if streamWin != DefaultStreamWindow {
		t.Errorf("SETTINGS_INITIAL_WINDOW_SIZE = %d, want %d", streamWin, DefaultStreamWindow)
	}
	if connInc+initialWindow != DefaultConnWindow {
		t.Errorf("connection window = %d, want %d", connInc+initialWindow, DefaultConnWindow)
	}
}
