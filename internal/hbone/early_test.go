package hbone

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/zmesh/zmesh/identity"
)

// earlyServer serves as bob with the given windows; h handles each stream.
func earlyServer(t *testing.T, opts ServerOptions, h Handler) string {
	return serveHBONE(t, h, opts, listenLoopback(t), identity.ServerTLS(testPKI(t).src, bob, nil)).addr
}

// readingServer answers 200 and reports everything each stream carried.
func readingServer(t *testing.T, opts ServerOptions) (string, <-chan []byte) {
	got := make(chan []byte, 16)
	addr := earlyServer(t, opts, func(ctx context.Context, r *Request, s *Stream) {
		s.Respond(200)
		b, _ := io.ReadAll(s)
		got <- b
	})
	return addr, got
}

func countedClient(t *testing.T, addr string) (*ClientConn, *countingConn) {
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	cc := &countingConn{Conn: nc}
	c, err := NewClientConn(context.Background(), cc, identity.ClientTLS(testPKI(t).src, alice, []spiffeid.ID{bob}), ClientOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	time.Sleep(50 * time.Millisecond) // let SETTINGS ACKs and window updates settle
	return c, cc
}

// The request and the app's first bytes leave in one socket write, and the
// server's handler reads those bytes first.
func TestEarlyDataGoesWithTheRequest(t *testing.T) {
	addr, got := readingServer(t, ServerOptions{})
	c, cc := countedClient(t, addr)
	req := target("10.0.0.1:80")
	req.EarlyData = []byte("GET / HTTP/1.1\r\nHost: echo\r\n\r\n")
	before := cc.count()
	st, err := c.Connect(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	if n := cc.count() - before; n != 1 {
		t.Errorf("CONNECT with early data took %d socket writes, want 1", n)
	}
	st.Write([]byte("and the rest"))
	st.CloseWrite()
	if b := <-got; string(b) != string(req.EarlyData)+"and the rest" {
		t.Fatalf("server read %q", b)
	}
}

// Early data larger than the stream's window goes out in part with the
// request and the rest once credit comes back, in order.
func TestEarlyDataBeyondTheWindow(t *testing.T) {
	addr, got := readingServer(t, ServerOptions{StreamWindow: 1000})
	c, _ := countedClient(t, addr)
	req := target("10.0.0.1:80")
	req.EarlyData = make([]byte, 10<<10)
	rand.Read(req.EarlyData)
	st, err := c.Connect(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	st.CloseWrite()
	if b := <-got; !bytes.Equal(b, req.EarlyData) {
		t.Fatalf("server read %d bytes, not the %d sent", len(b), len(req.EarlyData))
	}
}

// A refused tunnel delivers nothing, and its early data does not eat the
// connection's window: far more than the window is refused here, and the
// connection still carries a stream afterwards.
func TestEarlyDataOfARefusedTunnel(t *testing.T) {
	const window = 64 << 10
	delivered := make(chan []byte, 1)
	addr := earlyServer(t, ServerOptions{ConnWindow: window}, func(ctx context.Context, r *Request, s *Stream) {
		if r.Target.Port() == 401 {
			s.RespondError(401, "denied")
			return
		}
		s.Respond(200)
		b, _ := io.ReadAll(s)
		delivered <- b
	})
	c, _ := countedClient(t, addr)
	for range 4 * window / (16 << 10) {
		req := target("10.0.0.1:401")
		req.EarlyData = make([]byte, 16<<10)
		var se *StatusError
		if _, err := c.Connect(context.Background(), req); !errors.As(err, &se) || se.Status != 401 {
			t.Fatalf("refused CONNECT: %v, want status 401", err)
		}
	}
	req := target("10.0.0.1:80")
	req.EarlyData = []byte("after the refusals")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	st, err := c.Connect(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	st.CloseWrite()
	select {
	case b := <-delivered:
		if string(b) != "after the refusals" {
			t.Fatalf("delivered %q", b)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the accepted stream's data never arrived: connection window starved")
	}
}
