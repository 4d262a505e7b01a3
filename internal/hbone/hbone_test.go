package hbone

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/zmesh/zmesh/identity"
)

func TestConnectCarriesIdentityAndMetadata(t *testing.T) {
	got := make(chan *Request, 1)
	ts := startServer(t, func(ctx context.Context, r *Request, s *Stream) {
		got <- r
		echoHandler(ctx, r, s)
	}, bob, nil)
	cc, err := dialClient(t, ts.addr, alice, bob)
	if err != nil {
		t.Fatal(err)
	}
	st, err := cc.Connect(context.Background(), &ConnectRequest{
		Target:      mustAddrPort("10.1.2.3:8080"),
		Source:      mustAddrPort("10.9.9.9:40000"),
		Host:        "echo.ns-b.svc.cluster.local",
		Baggage:     "k8s.namespace.name=ns-a",
		TraceParent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
	})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	r := <-got
	if r.Peer != alice {
		t.Errorf("server saw peer %s, want %s", r.Peer, alice)
	}
	if r.Target.String() != "10.1.2.3:8080" || r.Source.String() != "10.9.9.9:40000" || r.Host != "echo.ns-b.svc.cluster.local" {
		t.Errorf("request = %+v", r)
	}
	if r.Baggage != "k8s.namespace.name=ns-a" || r.TraceParent == "" {
		t.Errorf("baggage/traceparent lost: %+v", r)
	}
	if _, err := st.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	st.CloseWrite()
	b, err := readAllTimeout(t, st, 5*time.Second)
	if err != nil || string(b) != "ping" {
		t.Fatalf("echo = %q, %v", b, err)
	}
}

// The server ends its direction first and keeps reading: the case net/http's
// HTTP/2 server cannot express (it resets the stream when the handler
// returns).
func TestHalfCloseBothWays(t *testing.T) {
	gotAfter := make(chan string, 1)
	ts := startServer(t, func(ctx context.Context, r *Request, s *Stream) {
		s.Respond(200)
		s.Write([]byte("banner"))
		s.CloseWrite()
		b, err := io.ReadAll(s)
		if err != nil {
			gotAfter <- "error: " + err.Error()
			return
		}
		gotAfter <- string(b)
	}, bob, nil)
	st := openStream(t, ts.addr)
	b, err := readAllTimeout(t, st, 5*time.Second)
	if err != nil || string(b) != "banner" {
		t.Fatalf("read until server FIN = %q, %v", b, err)
	}
	// Our direction is still open after the server's END_STREAM.
	if _, err := st.Write([]byte("after server FIN")); err != nil {
		t.Fatalf("write after server half-close: %v", err)
	}
	st.CloseWrite()
	select {
	case s := <-gotAfter:
		if s != "after server FIN" {
			t.Fatalf("server read %q", s)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("server never saw client's END_STREAM")
	}
}

func TestClientRejectsWrongServerIdentity(t *testing.T) {
	ts := startServer(t, echoHandler, bob, nil)
	_, err := dialClient(t, ts.addr, alice, carol)
	var mismatch *identity.PeerMismatchError
	if !errors.As(err, &mismatch) {
		t.Fatalf("dial expecting carol at bob's server: err = %v, want PeerMismatchError", err)
	}
	if mismatch.Got != bob {
		t.Errorf("mismatch reports %s, want %s", mismatch.Got, bob)
	}
}

func TestServerRejectsUnauthorizedClient(t *testing.T) {
	var called bool
	var mu sync.Mutex
	ts := startServer(t, func(ctx context.Context, r *Request, s *Stream) {
		mu.Lock()
		called = true
		mu.Unlock()
		s.Respond(200)
	}, bob, func(peer spiffeid.ID) error {
		if peer == alice {
			return errors.New("alice is not welcome")
		}
		return nil
	})
	cc, err := dialClient(t, ts.addr, alice, bob)
	if err == nil {
		// TLS 1.3: the client may finish its handshake before the server
		// has judged its certificate; the refusal then arrives as an alert.
		_, err = cc.Connect(context.Background(), target("10.0.0.1:80"))
	}
	if err == nil {
		t.Fatal("unauthorized client got a tunnel")
	}
	mu.Lock()
	wasCalled := called
	mu.Unlock()
	if wasCalled {
		t.Fatal("handler ran for a rejected client")
	}
	// carol is allowed through the same server.
	cc2, err := dialClient(t, ts.addr, carol, bob)
	if err != nil {
		t.Fatal(err)
	}
	st, err := cc2.Connect(context.Background(), target("10.0.0.1:80"))
	if err != nil {
		t.Fatal(err)
	}
	st.Close()
}

func TestTLS12Rejected(t *testing.T) {
	p := testPKI(t)
	ts := startServer(t, echoHandler, bob, nil)

	// A client capped at TLS 1.2 cannot reach an HBONE server.
	cfg := identity.ClientTLS(p.src, alice, []spiffeid.ID{bob})
	cfg.MinVersion, cfg.MaxVersion = tls.VersionTLS12, tls.VersionTLS12
	nc, err := net.Dial("tcp", ts.addr)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := NewClientConn(ctx, nc, cfg, ClientOptions{}); err == nil {
		t.Fatal("TLS 1.2 client connected")
	}

	// And an HBONE client refuses a TLS 1.2 server.
	scfg := identity.ServerTLS(p.src, bob, nil)
	scfg.MinVersion, scfg.MaxVersion = tls.VersionTLS12, tls.VersionTLS12
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		tc := tls.Server(c, scfg)
		tc.Handshake()
		tc.Close()
	}()
	nc2, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	_, err = NewClientConn(ctx, nc2, identity.ClientTLS(p.src, alice, []spiffeid.ID{bob}), ClientOptions{})
	if err == nil {
		t.Fatal("HBONE client accepted a TLS 1.2 server")
	}
}

func TestRefusalCarriesStatus(t *testing.T) {
	ts := startServer(t, func(ctx context.Context, r *Request, s *Stream) {
		switch r.Target.Port() {
		case 401:
			s.RespondError(401, "denied by policy ns-b/deny-all")
		case 503:
			// Return without answering: the server answers 503.
		}
	}, bob, nil)
	cc, err := dialClient(t, ts.addr, alice, bob)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		target string
		status int
		reason string
	}{
		{"10.0.0.1:401", 401, "denied by policy ns-b/deny-all"},
		{"10.0.0.1:503", 503, ""},
	} {
		_, err := cc.Connect(context.Background(), target(tc.target))
		var se *StatusError
		if !errors.As(err, &se) || se.Status != tc.status || se.Reason != tc.reason {
			t.Errorf("connect %s: err = %v, want status %d reason %q", tc.target, err, tc.status, tc.reason)
		}
	}
	// The connection survives refusals.
	if _, err := cc.Connect(context.Background(), target("10.0.0.1:401")); err == nil {
		t.Fatal("want refusal")
	}
}

func TestLargeTransferIntegrity(t *testing.T) {
	ts := startServer(t, echoHandler, bob, nil)
	cc, err := dialClient(t, ts.addr, alice, bob)
	if err != nil {
		t.Fatal(err)
	}
	// Several streams at once, each moving more than the connection
	// window, so flow control is exercised per stream and per connection.
	const streams, size = 4, 24 << 20
	var wg sync.WaitGroup
	errs := make(chan error, streams)
	for i := range streams {
		wg.Add(1)
		go func() {
			defer wg.Done()
			st, err := cc.Connect(context.Background(), target("10.0.0.1:80"))
			if err != nil {
				errs <- err
				return
			}
			defer st.Close()
			data, want := randomData(uint64(i), size)
			go writeInPieces(st, data, uint64(i), 200<<10)
			h := sha256.New()
			n, err := io.Copy(h, st)
			if err != nil {
				errs <- err
				return
			}
			if n != size || !bytes.Equal(h.Sum(nil), want[:]) {
				errs <- errors.New("echoed data differs")
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func TestCloseResetsPeer(t *testing.T) {
	serverErr := make(chan error, 1)
	ts := startServer(t, func(ctx context.Context, r *Request, s *Stream) {
		s.Respond(200)
		_, err := io.Copy(io.Discard, s)
		serverErr <- err
	}, bob, nil)
	cc, err := dialClient(t, ts.addr, alice, bob)
	if err != nil {
		t.Fatal(err)
	}
	st, err := cc.Connect(context.Background(), target("10.0.0.1:80"))
	if err != nil {
		t.Fatal(err)
	}
	st.Write([]byte("partial"))
	st.Close()
	select {
	case err := <-serverErr:
		var re *ResetError
		if !errors.As(err, &re) {
			t.Fatalf("server read err = %v, want ResetError", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("server did not see the reset")
	}
	if _, err := st.Write([]byte("x")); err == nil {
		t.Fatal("write on a closed stream succeeded")
	}
}

func TestReadDeadline(t *testing.T) {
	ts := startServer(t, func(ctx context.Context, r *Request, s *Stream) {
		s.Respond(200)
		io.Copy(io.Discard, s)
	}, bob, nil)
	st := openStream(t, ts.addr)
	st.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	var ne net.Error
	if _, err := st.Read(make([]byte, 1)); !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("read err = %v, want timeout", err)
	}
}

func TestJoinCarriesHalfClose(t *testing.T) {
	// app: a TCP server that reads the request to EOF, then answers.
	app := listenApp(t, func(c net.Conn) {
		b, _ := io.ReadAll(c)
		c.Write(append([]byte("got "), b...))
		c.(*net.TCPConn).CloseWrite()
	})
	// The HBONE server joins each stream to the app, as ztunnel's inbound does.
	ts, _ := joinedServer(t, app, 0)
	st := openStream(t, ts.addr)
	if got := exchange(t, st, "request"); got != "got request" {
		t.Fatalf("answer = %q", got)
	}
}

// Data a client never reads before closing its streams must not eat the
// connection's flow-control window: far more than 16 MiB is abandoned
// here, and the connection still carries a new stream afterwards.
func TestUnreadDataReturnsConnectionWindow(t *testing.T) {
	const perStream = 2 << 20
	ts := startServer(t, func(ctx context.Context, r *Request, s *Stream) {
		if r.Target.Port() == 1 {
			s.Respond(200)
			s.Write(make([]byte, perStream))
			io.Copy(io.Discard, s)
			return
		}
		echoHandler(ctx, r, s)
	}, bob, nil)
	cc, err := dialClient(t, ts.addr, alice, bob)
	if err != nil {
		t.Fatal(err)
	}
	for range 3 * DefaultConnWindow / perStream {
		st, err := cc.Connect(context.Background(), target("10.0.0.1:1"))
		if err != nil {
			t.Fatal(err)
		}
		// Wait until the whole blob has arrived (unread), then drop it.
		deadline := time.Now().Add(5 * time.Second)
		for {
			st.c.mu.Lock()
			n := st.rbuf.len()
			st.c.mu.Unlock()
			if n == perStream {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("only %d of %d bytes arrived: connection window starved", n, perStream)
			}
			time.Sleep(time.Millisecond)
		}
		st.Close()
	}
	st, err := cc.Connect(context.Background(), target("10.0.0.1:2"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if got := exchange(t, st, "still flowing"); got != "still flowing" {
		t.Fatalf("after abandoning data: %q", got)
	}
}

// randomData returns size bytes from a seeded generator, and their hash.
func randomData(seed uint64, size int) ([]byte, [sha256.Size]byte) {
	data := make([]byte, size)
	r := rand.New(rand.NewPCG(seed, 7))
	for j := range data {
		data[j] = byte(r.Uint32())
	}
	return data, sha256.Sum256(data)
}

// writeInPieces writes data to st in writes of random sizes up to max
// (odd sizes cross frame and window boundaries), then ends st's direction.
func writeInPieces(st *Stream, data []byte, seed uint64, max int) {
	r := rand.New(rand.NewPCG(seed, 8))
	for off := 0; off < len(data); {
		n := min(len(data)-off, 1+r.IntN(max))
		if _, err := st.Write(data[off : off+n]); err != nil {
			return
		}
		off += n
	}
	st.CloseWrite()
}
