package proxy

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/zmesh/zmesh/identity"
	"github.com/zmesh/zmesh/internal/hbone"
	"github.com/zmesh/zmesh/waypoint/upstream"
)

// bigPort is the port of podV1's app that streams responses without end.
const bigPort = 8090

// An HTTP/2 upstream connection carries every request of one client to
// an endpoint, and the waypoint reads it eagerly. A client that asks for
// large responses and does not read them must pin at most a MiB of the
// waypoint's memory for each (the transport's default window would let
// the app send 4 MiB per stream), and must not hold up its own other
// requests on the connection nor another client's.
//
// The app counts what it managed to write while 16 requests stall: the
// waypoint's buffers plus a few MiB in sockets and the pod's side.
func TestH2UpstreamBufferBounded(t *testing.T) {
	m := newMesh(t, bounds{})
	var written atomic.Int64
	m.startStreamingApp(&written, 0)
	s := m.snapshot(t, "v1")
	s.Clusters[defaultCluster].HTTP.Protocol = upstream.HTTP2
	_, a := cluster(defaultCluster, upstream.HTTP2, ep(podV1, bigPort, v1ID, "v1"))
	s.Assignments[defaultCluster] = a
	m.proxy.Update(s)

	const stalled = 16
	for i := range stalled {
		c := m.stingyClientFrom(t, clientIP)
		res, err := c.Get(fmt.Sprintf("http://reviews/app/big/%d", i))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { res.Body.Close() })
		if res.StatusCode != http.StatusOK {
			t.Fatalf("GET /app/big: %s", res.Status)
		}
		// Headers came; the body is never read.
	}
	// Wait for the app's writes to stop: every buffer on the way full.
	var last int64 = -1
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); {
		time.Sleep(time.Second)
		n := written.Load()
		if n == last {
			break
		}
		last = n
	}
	const limit = 40 << 20
	n := written.Load()
	t.Logf("app wrote %.1f MiB for %d stalled responses", float64(n)/(1<<20), stalled)
	if n > limit {
		t.Errorf("app wrote %.1f MiB into %d unread responses, want at most %d MiB: the waypoint buffers for a client that does not read", float64(n)/(1<<20), stalled, limit>>20)
	}
	// The stalled responses hold up neither the client's other requests
	// on the same connection nor another client's.
	for _, from := range []netip.Addr{clientIP, otherClientIP} {
		c := m.stingyClientFrom(t, from)
		c.Timeout = 20 * time.Second
		res, err := c.Get("http://reviews/app/big/reader")
		if err != nil {
			t.Fatalf("client %s: %v", from, err)
		}
		n, err := io.CopyN(io.Discard, res.Body, 4<<20)
		res.Body.Close()
		if err != nil {
			t.Errorf("client %s read %d bytes of its response beside the stalled ones: %v", from, n, err)
		}
	}
}

// otherClientIP is a second client's address, on loopback.
var otherClientIP = netip.MustParseAddr("127.0.0.8")

// When the endpoint's MAX_CONCURRENT_STREAMS are all taken, the pool
// opens a second HTTP/2 connection (another HBONE stream) for the same
// client, and that connection takes one of the cluster's
// max_connections: with one allowed, the next request waits as pending
// and overflows after the connect timeout; with two, it is served on a
// second tunnel.
func TestH2UpstreamSecondConnection(t *testing.T) {
	for _, maxConns := range []uint32{1, 2} {
		t.Run(fmt.Sprintf("max_connections=%d", maxConns), func(t *testing.T) {
			m := newMesh(t, bounds{})
			var written atomic.Int64
			m.startStreamingApp(&written, 2)
			s := m.snapshot(t, "v1")
			c, a := cluster(defaultCluster, upstream.HTTP2, ep(podV1, bigPort, v1ID, "v1"))
			c.Limits.MaxConnections = maxConns
			c.ConnectTimeout = time.Second
			s.Clusters[defaultCluster], s.Assignments[defaultCluster] = c, a
			m.proxy.Update(s)
			for i := range 2 {
				c := m.stingyClientFrom(t, clientIP)
				c.Timeout = 20 * time.Second
				res, err := c.Get(fmt.Sprintf("http://reviews/app/big/%d", i))
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { res.Body.Close() })
				if res.StatusCode != http.StatusOK {
					t.Fatalf("request %d: %s", i, res.Status)
				}
			}
			cl := m.stingyClientFrom(t, clientIP)
			cl.Timeout = 20 * time.Second
			res, err := cl.Get("http://reviews/app/big/third")
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { res.Body.Close() })
			want, wantTunnels := http.StatusOK, 2
			if maxConns == 1 {
				want, wantTunnels = http.StatusServiceUnavailable, 1
			}
			if res.StatusCode != want {
				t.Errorf("third request beside two streams on a 2-stream connection: %s, want %d", res.Status, want)
			}
			if maxConns == 1 && res.Header.Get("X-Envoy-Overloaded") != "true" {
				t.Errorf("the 503 is not an overflow (x-envoy-overloaded %q)", res.Header.Get("X-Envoy-Overloaded"))
			}
			if got := len(m.pods[podV1].tunnels()); got != wantTunnels {
				t.Errorf("the pod saw %d tunnels, want %d", got, wantTunnels)
			}
		})
	}
}

// startStreamingApp serves HTTP/1.1 and h2c on podV1's bigPort: every
// response is a stream of 16 KiB writes, counted in written, endless but
// for /app/size/<bytes>. maxStreams is the
// HTTP/2 connection's MAX_CONCURRENT_STREAMS (0: net/http's 250).
func (m *mesh) startStreamingApp(written *atomic.Int64, maxStreams int) {
	chunk := make([]byte, 16<<10)
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		size := int64(-1) // endless
		if v, ok := strings.CutPrefix(r.URL.Path, "/app/size/"); ok {
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil {
				http.Error(w, err.Error(), http.StatusBadRequest)
				return
			}
			size = n
			w.Header().Set("Content-Length", v)
		}
		w.WriteHeader(http.StatusOK)
		w.(http.Flusher).Flush()
		for size != 0 {
			c := chunk
			if size > 0 && size < int64(len(c)) {
				c = c[:size]
			}
			n, err := w.Write(c)
			written.Add(int64(n))
			if err != nil {
				return
			}
			if size > 0 {
				size -= int64(n)
			}
		}
	})}
	srv.Protocols = new(http.Protocols)
	srv.Protocols.SetHTTP1(true)
	srv.Protocols.SetUnencryptedHTTP2(true)
	srv.HTTP2 = &http.HTTP2Config{MaxConcurrentStreams: maxStreams}
	addr := m.serve(func(ln net.Listener) { srv.Serve(ln) }, func() { srv.Close() })
	fp := m.pods[podV1]
	// Under the lock the pod's handler takes before it reads apps.
	fp.mu.Lock()
	fp.apps[bigPort] = addr
	fp.mu.Unlock()
}

// stingyClientFrom is an HTTP/1.1 client of the waypoint from address
// from, whose tunnels
// grant the waypoint a 64 KiB window: what it does not read stays in the
// waypoint, not in the client's buffers.
func (m *mesh) stingyClientFrom(t *testing.T, from netip.Addr) *http.Client {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			d := net.Dialer{LocalAddr: net.TCPAddrFromAddrPort(netip.AddrPortFrom(from, 0))}
			nc, err := d.DialContext(ctx, "tcp", m.addr)
			if err != nil {
				return nil, err
			}
			cc, err := hbone.NewClientConn(ctx, nc, identity.ClientTLS(m.src, sleepID, []spiffeid.ID{waypointID}),
				hbone.ClientOptions{StreamWindow: 64 << 10, ConnWindow: 64 << 10})
			if err != nil {
				nc.Close()
				return nil, err
			}
			s, err := cc.Connect(ctx, &hbone.ConnectRequest{Target: vipHTTP})
			if err != nil {
				cc.Close()
				return nil, err
			}
			return &clientTunnel{Stream: s, cc: cc}, nil
		},
		DisableCompression: true,
	}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr}
}
