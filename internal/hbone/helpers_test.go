package hbone

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/zmesh/zmesh/identity"
)

var (
	alice = identity.MustWorkloadID("cluster.local", "ns-a", "alice")
	bob   = identity.MustWorkloadID("cluster.local", "ns-b", "bob")
	carol = identity.MustWorkloadID("cluster.local", "ns-c", "carol")
)

type pki struct {
	ca  *identity.CA
	src *identity.StaticSource
}

var (
	pkiOnce   sync.Once
	sharedPKI *pki
)

// testPKI returns a CA and a source holding certificates for alice, bob and
// carol. One per test binary: key generation is the slow part.
func testPKI(t testing.TB) *pki {
	pkiOnce.Do(func() {
		dir, err := osMkdirTemp()
		if err != nil {
			t.Fatal(err)
		}
		ca, err := identity.LoadOrCreateCA(dir, identity.CAOptions{TrustDomain: spiffeid.RequireTrustDomainFromString("cluster.local")})
		if err != nil {
			t.Fatal(err)
		}
		src := identity.NewStaticSource(ca.Bundle())
		for _, id := range []spiffeid.ID{alice, bob, carol} {
			svid, err := ca.Issue(id, time.Hour)
			if err != nil {
				t.Fatal(err)
			}
			src.Put(svid)
		}
		sharedPKI = &pki{ca: ca, src: src}
	})
	if sharedPKI == nil {
		t.Fatal("test PKI failed to initialise")
	}
	return sharedPKI
}

type testServer struct {
	srv  *Server
	addr string
	ln   net.Listener
}

// startServer serves HBONE as `as` on a loopback port.
func startServer(t testing.TB, h Handler, as spiffeid.ID, authorize func(spiffeid.ID) error) *testServer {
	t.Helper()
	return serveHBONE(t, h, ServerOptions{}, listenLoopback(t), identity.ServerTLS(testPKI(t).src, as, authorize))
}

// serveHBONE serves HBONE with opts on ln until the test ends, then shuts
// the server down.
func serveHBONE(t testing.TB, h Handler, opts ServerOptions, ln net.Listener, cfg *tls.Config) *testServer {
	t.Helper()
	srv, err := NewServer(h, opts)
	if err != nil {
		t.Fatal(err)
	}
	ts := &testServer{srv: srv, addr: ln.Addr().String(), ln: ln}
	serveOn(srv, ln, cfg)
	t.Cleanup(func() {
		ln.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
	})
	return ts
}

// listenLoopback listens on a free loopback port.
func listenLoopback(t testing.TB) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return ln
}

func serveOn(srv *Server, ln net.Listener, cfg *tls.Config) {
	go func() {
		for {
			nc, err := ln.Accept()
			if err != nil {
				return
			}
			go srv.ServeConn(context.Background(), tls.Server(BatchWrites(nc), cfg))
		}
	}()
}

// newTestPool returns a pool with cfg's settings that dials addr (unless
// cfg has a Dial of its own) and presents the key's source identity
// expecting its destination's, closed with the test, and the key of a
// tunnel from alice to bob at addr.
func newTestPool(t testing.TB, addr string, cfg PoolConfig) (*Pool, Key) {
	t.Helper()
	p := testPKI(t)
	if cfg.Dial == nil {
		cfg.Dial = func(ctx context.Context, k Key) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "tcp", addr)
		}
	}
	cfg.TLS = func(k Key) (*tls.Config, error) {
		return identity.ClientTLS(p.src, k.SrcID, []spiffeid.ID{k.DstID}), nil
	}
	pool, err := NewPool(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	return pool, Key{SrcWorkload: "pod-a", SrcID: alice, DstID: bob, Dst: mustAddrPort(addr)}
}

// dialClient opens one client connection as `as` expecting `expect`.
func dialClient(t testing.TB, addr string, as spiffeid.ID, expect ...spiffeid.ID) (*ClientConn, error) {
	t.Helper()
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	cc, err := NewClientConn(ctx, nc, identity.ClientTLS(testPKI(t).src, as, expect), ClientOptions{})
	if err == nil {
		t.Cleanup(func() { cc.Close() })
	}
	return cc, err
}

// echoHandler answers 200 and echoes until the client ends its side.
func echoHandler(ctx context.Context, r *Request, s *Stream) {
	if err := s.Respond(200); err != nil {
		return
	}
	io.Copy(writerOnly{s}, s)
	s.CloseWrite()
}

func target(s string) *ConnectRequest {
	return &ConnectRequest{Target: mustAddrPort(s)}
}

func readAllTimeout(t testing.TB, r io.Reader, d time.Duration) ([]byte, error) {
	t.Helper()
	type res struct {
		b   []byte
		err error
	}
	ch := make(chan res, 1)
	go func() { b, err := io.ReadAll(r); ch <- res{b, err} }()
	select {
	case x := <-ch:
		return x.b, x.err
	case <-time.After(d):
		return nil, errors.New("read timed out")
	}
}

// openStream connects alice to bob's server at addr and opens one tunnel,
// closed when the test ends.
func openStream(t testing.TB, addr string) *Stream {
	t.Helper()
	cc, err := dialClient(t, addr, alice, bob)
	if err != nil {
		t.Fatal(err)
	}
	st, err := cc.Connect(context.Background(), target("10.0.0.1:80"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

// exchange sends msg, ends our direction and returns all the peer sends
// until it ends its own.
func exchange(t testing.TB, st net.Conn, msg string) string {
	t.Helper()
	if _, err := st.Write([]byte(msg)); err != nil {
		t.Fatalf("write: %v", err)
	}
	if cw, ok := st.(closeWriter); ok {
		cw.CloseWrite()
	}
	b, err := readAllTimeout(t, st, 5*time.Second)
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	return string(b)
}
