package hbone

import (
	"bufio"
	"context"
	"crypto/tls"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/zmesh/zmesh/identity"
)

// hostileServer accepts one connection as bob, reads the client preface,
// sends its SETTINGS, and runs serve on it; it returns the listener's
// address and how the connection ended from the server's side.
func hostileServer(t *testing.T, ln net.Listener, serve func(a *attacker) ending) (string, <-chan ending) {
	t.Helper()
	t.Cleanup(func() { ln.Close() })
	ended := make(chan ending, 1)
	cfg := identity.ServerTLS(testPKI(t).src, bob, nil)
	var wg sync.WaitGroup
	t.Cleanup(wg.Wait)
	wg.Add(1)
	go func() {
		defer wg.Done()
		nc, err := ln.Accept()
		if err != nil {
			return
		}
		switch nc := nc.(type) {
		case *net.TCPConn:
			nc.SetReadBuffer(16 << 10) // see attack
		case *net.UnixConn:
			nc.SetWriteBuffer(floodBuffer) // see listenUnix
		}
		tc := tls.Server(nc, cfg)
		defer tc.Close()
		if _, err := io.ReadFull(tc, make([]byte, len(http2.ClientPreface))); err != nil {
			t.Errorf("hostile server: read preface: %v", err)
			return
		}
		a := &attacker{tc: tc, bw: bufio.NewWriterSize(tc, 64<<10)}
		a.fr = http2.NewFramer(a.bw, tc)
		a.fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
		a.fr.WriteSettings()
		a.bw.Flush()
		ended <- serve(a)
	}()
	return ln.Addr().String(), ended
}

// A server that floods PINGs and reads no ACK is cut off by the client as
// a client would be by the server: GOAWAY(ENHANCE_YOUR_CALM), heap bounded.
func TestClientCutsOffPingFlood(t *testing.T) {
	var sent int
	var limit string
	var grown int64
	limits := make(chan string, 16)
	addr, ended := hostileServer(t, listenUnix(t), func(a *attacker) ending {
		heap0 := heapInUse()
		sent, limit = floodUntilCut(a, limits, func(fr *http2.Framer) { fr.WritePing(false, [8]byte{2}) })
		grown = heapInUse() - heap0
		return readToEnd(a.tc, a.fr, 20*time.Second)
	})
	mark := markGoroutines()
	nc := dialFlood(t, addr)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	cc, err := NewClientConn(ctx, nc, identity.ClientTLS(testPKI(t).src, alice, []spiffeid.ID{bob}), ClientOptions{OnLimit: reportLimit(limits)})
	if err != nil {
		t.Fatal(err)
	}
	e := <-ended
	t.Logf("PING flood against a client: %d sent until it reported %q; heap grew %.1f MB; GOAWAY %v %v, then %v", sent, limit, float64(grown)/1e6, e.goAway, e.code, e.readErr)
	if limit != LimitControlFrames {
		t.Errorf("client reported limit %q after %d PINGs, want %q", limit, sent, LimitControlFrames)
	}
	if grown > 8<<20 {
		t.Errorf("heap grew %.1f MB, want < 8 MB", float64(grown)/1e6)
	}
	if !e.closedCalm() {
		t.Errorf("client did not end the connection with GOAWAY(ENHANCE_YOUR_CALM): GOAWAY %v %v, then %v", e.goAway, e.code, e.readErr)
	}
	cc.Close()
	waitGoroutines(t, mark)
}

// A server that answers a CONNECT with a header block that never ends is
// cut off by the client (here a pool's, which reports the limit).
func TestClientCutsOffContinuationFlood(t *testing.T) {
	n := floodSize(200_000)
	addr, ended := hostileServer(t, listenLoopback(t), func(a *attacker) ending {
		a.tc.SetReadDeadline(time.Now().Add(10 * time.Second))
		for {
			f, err := a.fr.ReadFrame()
			if err != nil {
				return ending{readErr: err}
			}
			if h, ok := f.(*http2.MetaHeadersFrame); ok {
				a.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: h.StreamID, BlockFragment: nil})
				flood(a, n, func(fr *http2.Framer) { fr.WriteContinuation(h.StreamID, false, nil) })
				return readToEnd(a.tc, a.fr, 20*time.Second)
			}
		}
	})
	limits := make(chan string, 10)
	pool, key := newTestPool(t, addr, PoolConfig{Options: ClientOptions{OnLimit: reportLimit(limits)}})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := pool.Connect(ctx, key, target("10.0.0.1:80")); err == nil {
		t.Error("CONNECT answered by an endless header block succeeded")
	}
	e := <-ended
	if !e.closedCalm() {
		t.Errorf("client did not end the connection with GOAWAY(ENHANCE_YOUR_CALM): GOAWAY %v %v, then %v", e.goAway, e.code, e.readErr)
	}
	select {
	case l := <-limits:
		if l != LimitHeaderBlock {
			t.Errorf("OnLimit(%q), want %q", l, LimitHeaderBlock)
		}
	default:
		t.Error("OnLimit not called")
	}
	if n := len(pool.Conns()); n != 0 {
		t.Errorf("pool keeps %d keys after the connection was cut off", n)
	}
}

// A server that accepts the TCP connection and never answers the
// ClientHello does not hold the client past HandshakeTimeout, even when
// the caller's context has no deadline.
func TestClientHandshakeTimeout(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	held := make(chan net.Conn, 1)
	go func() {
		if nc, err := ln.Accept(); err == nil {
			held <- nc
		}
	}()
	defer func() {
		if nc := <-held; nc != nil {
			nc.Close()
		}
	}()
	nc, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		_, err := NewClientConn(context.Background(), nc, identity.ClientTLS(testPKI(t).src, alice, nil), ClientOptions{HandshakeTimeout: 50 * time.Millisecond})
		done <- err
	}()
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("handshake with a silent server succeeded")
		}
	case <-time.After(10 * time.Second):
		nc.Close()
		<-done
		t.Fatal("client still in its handshake with a silent server")
	}
}
