package hbone

import (
	"context"
	"crypto/tls"
	"io"
	"net"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/zmesh/zmesh/identity"
)

// The benchmarks compare one HBONE hop with plain TCP and plain TLS 1.3 on
// the same loopback, in the same run; `make bench` prints the ratios.
// Each path serves the same two apps: a sink that reads to EOF and answers
// one byte (bulk), and an echo of 1 kB messages (request/response).

type benchPath struct {
	name string
	dial func(b *testing.B) net.Conn // connected to the app
}

func benchPaths(b *testing.B, app func(net.Conn)) []benchPath {
	p := testPKI(b)
	tcpLn := listenApp(b, app)
	tlsLn := listenApp(b, func(c net.Conn) {
		tc := tls.Server(c, identity.ServerTLS(p.src, bob, nil))
		defer tc.Close()
		app(tc)
	})

	ts := startServer(b, func(ctx context.Context, r *Request, s *Stream) {
		s.Respond(200)
		app(s)
	}, bob, nil)
	pool, key := newTestPool(b, ts.addr, PoolConfig{})

	return []benchPath{
		{"tcp", func(b *testing.B) net.Conn {
			c, err := net.Dial("tcp", tcpLn.Addr().String())
			if err != nil {
				b.Fatal(err)
			}
			return c
		}},
		{"tls", func(b *testing.B) net.Conn {
			c, err := tls.Dial("tcp", tlsLn.Addr().String(), identity.ClientTLS(p.src, alice, []spiffeid.ID{bob}))
			if err != nil {
				b.Fatal(err)
			}
			return c
		}},
		{"hbone", func(b *testing.B) net.Conn {
			st, err := pool.Connect(context.Background(), key, target("10.0.0.1:80"))
			if err != nil {
				b.Fatal(err)
			}
			return st
		}},
	}
}

func closeWrite(c net.Conn) {
	if cw, ok := c.(closeWriter); ok {
		cw.CloseWrite()
	}
}

// BenchmarkBulk moves data one way through one connection.
func BenchmarkBulk(b *testing.B) {
	sink := func(c net.Conn) {
		io.Copy(io.Discard, readerOnly{c})
		c.Write([]byte{1})
		closeWrite(c)
	}
	const chunk = 128 << 10
	buf := make([]byte, chunk)
	for _, path := range benchPaths(b, sink) {
		b.Run(path.name, func(b *testing.B) {
			c := path.dial(b)
			defer c.Close()
			b.SetBytes(chunk)
			b.ReportAllocs()
			for b.Loop() {
				if _, err := c.Write(buf); err != nil {
					b.Fatal(err)
				}
			}
			closeWrite(c)
			if _, err := io.ReadFull(c, buf[:1]); err != nil {
				b.Fatal(err)
			}
		})
	}
}

// BenchmarkRequestResponse1K is the latency of a 1 kB exchange on an open
// connection.
func BenchmarkRequestResponse1K(b *testing.B) {
	echo := func(c net.Conn) {
		buf := make([]byte, 1024)
		for {
			if _, err := io.ReadFull(c, buf); err != nil {
				return
			}
			if _, err := c.Write(buf); err != nil {
				return
			}
		}
	}
	msg := make([]byte, 1024)
	resp := make([]byte, 1024)
	for _, path := range benchPaths(b, echo) {
		b.Run(path.name, func(b *testing.B) {
			c := path.dial(b)
			defer c.Close()
			b.ReportAllocs()
			for b.Loop() {
				if _, err := c.Write(msg); err != nil {
					b.Fatal(err)
				}
				if _, err := io.ReadFull(c, resp); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkConnectPerRequest opens a tunnel (or, for the baselines, a
// connection), exchanges 1 kB and closes it: the cost a short-lived
// connection pays, and the allocations per proxied request. HBONE reuses its
// pooled connection; TCP and TLS pay a handshake each time.
func BenchmarkConnectPerRequest(b *testing.B) {
	echoOnce := func(c net.Conn) {
		buf := make([]byte, 1024)
		if _, err := io.ReadFull(c, buf); err != nil {
			return
		}
		c.Write(buf)
		closeWrite(c)
	}
	msg := make([]byte, 1024)
	resp := make([]byte, 1024)
	for _, path := range benchPaths(b, echoOnce) {
		b.Run(path.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				c := path.dial(b)
				if _, err := c.Write(msg); err != nil {
					b.Fatal(err)
				}
				if _, err := io.ReadFull(c, resp); err != nil {
					b.Fatal(err)
				}
				c.Close()
			}
		})
	}
}
