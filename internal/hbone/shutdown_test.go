package hbone

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"net"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/zmesh/zmesh/identity"
)

// A connection the listener accepted but whose TLS handshake was still
// running when Shutdown began is served, not dropped: during a ztunnel
// restart the old process must not refuse what it accepted.
func TestShutdownServesConnectionStillOpening(t *testing.T) {
	p := testPKI(t)
	srv, err := NewServer(echoHandler, ServerOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan struct{})
	served := make(chan error, 1)
	go func() {
		nc, err := ln.Accept()
		if err != nil {
			served <- err
			return
		}
		close(accepted)
		served <- srv.ServeConn(context.Background(), tls.Server(nc, identity.ServerTLS(p.src, bob, nil)))
	}()
	nc, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	<-accepted
	// Wait until the server is in its handshake, waiting for our
	// ClientHello: a Shutdown that ended before ServeConn began would
	// rightly refuse the connection.
	waitUntil(t, func() bool { srv.mu.Lock(); defer srv.mu.Unlock(); return srv.opening == 1 })
	shutdown := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		shutdown <- srv.Shutdown(ctx)
	}()
	waitUntil(t, func() bool { srv.mu.Lock(); defer srv.mu.Unlock(); return srv.shutdown })

	// The CONNECT goes out in the same flight as the preface: a client
	// that waited would rightly keep off a connection whose GOAWAY it had
	// read, and the test would race that GOAWAY.
	tc := tls.Client(nc, identity.ClientTLS(p.src, alice, []spiffeid.ID{bob}))
	defer tc.Close()
	tc.SetDeadline(time.Now().Add(5 * time.Second))
	if err := tc.Handshake(); err != nil {
		t.Fatalf("a connection accepted before Shutdown was refused: %v", err)
	}
	bw := bufio.NewWriter(tc)
	bw.WriteString(http2.ClientPreface)
	fr := http2.NewFramer(bw, tc)
	fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	fr.WriteSettings()
	var hb bytes.Buffer
	enc := hpack.NewEncoder(&hb)
	enc.WriteField(hpack.HeaderField{Name: ":method", Value: "CONNECT"})
	enc.WriteField(hpack.HeaderField{Name: ":authority", Value: "10.0.0.1:80"})
	fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: hb.Bytes(), EndHeaders: true})
	fr.WriteData(1, true, []byte("late"))
	if err := bw.Flush(); err != nil {
		t.Fatal(err)
	}
	var status, echoed string
	for done := false; !done; {
		f, err := fr.ReadFrame()
		if err != nil {
			t.Fatalf("reading the reply (status %q, echo %q): %v", status, echoed, err)
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if !f.IsAck() {
				fr.WriteSettingsAck()
				bw.Flush()
			}
		case *http2.MetaHeadersFrame:
			status = f.PseudoValue("status")
		case *http2.DataFrame:
			echoed += string(f.Data())
			done = f.StreamEnded()
		case *http2.RSTStreamFrame:
			t.Fatalf("its first CONNECT was reset: %v", f.ErrCode)
		}
	}
	if status != "200" || echoed != "late" {
		t.Fatalf("its first CONNECT: status %q, echo %q; want 200 and the echo", status, echoed)
	}
	tc.Close() // as a client does once the GOAWAY left it nothing to send
	if err := <-shutdown; err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	if err := <-served; err != nil {
		t.Fatalf("ServeConn: %v", err)
	}
}

// A CONNECT the client sends before it has read the server's GOAWAY is
// served: the first GOAWAY advertises every stream id, and Shutdown waits
// for the PING behind it before it treats the connection as idle.
func TestShutdownServesStreamRacingGoAway(t *testing.T) {
	ts := startServer(t, echoHandler, bob, nil)
	fr, bw := rawClient(t, ts.addr)
	fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	bw.Flush()
	waitUntil(t, func() bool { ts.srv.mu.Lock(); defer ts.srv.mu.Unlock(); return len(ts.srv.conns) == 1 })
	shutdown := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		shutdown <- ts.srv.Shutdown(ctx)
	}()
	var ping *http2.PingFrame
	for ping == nil {
		f, err := fr.ReadFrame()
		if err != nil {
			t.Fatalf("waiting for GOAWAY and PING: %v", err)
		}
		switch f := f.(type) {
		case *http2.GoAwayFrame:
			if f.LastStreamID != 1<<31-1 {
				t.Fatalf("first GOAWAY names stream %d, want the highest id", f.LastStreamID)
			}
		case *http2.PingFrame:
			if !f.IsAck() {
				ping = f
			}
		}
	}
	// As a client that has not read those yet: open a stream, then ack.
	var hb bytes.Buffer
	enc := hpack.NewEncoder(&hb)
	enc.WriteField(hpack.HeaderField{Name: ":method", Value: "CONNECT"})
	enc.WriteField(hpack.HeaderField{Name: ":authority", Value: "10.0.0.1:80"})
	fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: hb.Bytes(), EndHeaders: true})
	fr.WritePing(true, ping.Data)
	bw.Flush()
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			t.Fatalf("reading the answer: %v", err)
		}
		if h, ok := f.(*http2.MetaHeadersFrame); ok {
			if got := h.PseudoValue("status"); got != "200" {
				t.Fatalf("a stream racing the GOAWAY got %s, want 200", got)
			}
			break
		}
		if r, ok := f.(*http2.RSTStreamFrame); ok {
			t.Fatalf("a stream racing the GOAWAY was reset: %v", r.ErrCode)
		}
	}
	select {
	case err := <-shutdown:
		t.Fatalf("Shutdown returned (%v) with a stream open", err)
	default:
	}
	fr.WriteData(1, true, nil)
	bw.Flush()
	if err := <-shutdown; err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
}

func waitUntil(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met in 5 s")
		}
		time.Sleep(time.Millisecond)
	}
}
