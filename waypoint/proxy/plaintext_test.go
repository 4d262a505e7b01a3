package proxy

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/zmesh/zmesh/waypoint/config"
	"github.com/zmesh/zmesh/waypoint/route"
	"github.com/zmesh/zmesh/waypoint/upstream"
)

// A ServiceEntry's addresses and its endpoint outside the mesh. The
// endpoint's address is never dialled as such: the proxy's DialUpstream
// maps it to a real server on loopback.
var (
	vipExtHTTP = netip.MustParseAddrPort("10.96.5.1:80")
	vipExtH2C  = netip.MustParseAddrPort("10.96.5.1:81")
	vipExtTCP  = netip.MustParseAddrPort("10.96.5.1:9000")
	vipExtDead = netip.MustParseAddrPort("10.96.5.1:82")
	extHTTP    = netip.MustParseAddrPort("192.0.2.10:80")
	extTCP     = netip.MustParseAddrPort("192.0.2.10:9000")
	extDead    = netip.MustParseAddrPort("192.0.2.11:80")
)

// plainBackend is a server outside the mesh: what it saw of each request.
type plainBackend struct {
	mu   sync.Mutex
	seen []*http.Request
}

func (b *plainBackend) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	b.mu.Lock()
	b.seen = append(b.seen, r)
	b.mu.Unlock()
	fmt.Fprintf(w, "external %s", r.Proto)
}

func (b *plainBackend) last(t *testing.T) *http.Request {
	t.Helper()
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.seen) == 0 {
		t.Fatal("the external server saw no request")
	}
	return b.seen[len(b.seen)-1]
}

// TestPlaintextUpstream: a client's HBONE tunnel to a ServiceEntry address
// is served by the waypoint, which sends the requests (HTTP/1.1, and h2c
// for an HTTP/2 cluster) and TCP bytes to an endpoint outside the mesh in
// plaintext, straight to the endpoint's own address: no HBONE to port
// 15008, no TLS, no Forwarded. A dial that does not complete within the
// cluster's connect timeout is a connection failure (503 UF).
func TestPlaintextUpstream(t *testing.T) {
	backend := &plainBackend{}
	srv := &http.Server{Handler: backend}
	srv.Protocols = new(http.Protocols)
	srv.Protocols.SetHTTP1(true)
	srv.Protocols.SetUnencryptedHTTP2(true)
	httpLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(httpLn)
	t.Cleanup(func() { srv.Close() })
	tcpLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tcpLn.Close() })
	go func() {
		for {
			c, err := tcpLn.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				io.WriteString(c, "external:")
				io.Copy(c, c)
			}()
		}
	}()

	var mu sync.Mutex
	var dialled []netip.AddrPort
	deadDialDeadline := make(chan bool, 1)
	m := &mesh{t: t, src: testCerts(t), pods: map[netip.Addr]*fakePod{}, obs: newRecorder()}
	p, err := New(Options{
		Certs: m.src, Identity: waypointID, Observer: m.obs,
		DialUpstream: func(ctx context.Context, addr netip.AddrPort) (net.Conn, error) {
			mu.Lock()
			dialled = append(dialled, addr)
			mu.Unlock()
			var d net.Dialer
			switch addr {
			case extHTTP:
				return d.DialContext(ctx, "tcp", httpLn.Addr().String())
			case extTCP:
				return d.DialContext(ctx, "tcp", tcpLn.Addr().String())
			case extDead:
				// A server that never answers the SYN: only the connect
				// timeout ends the dial.
				_, ok := ctx.Deadline()
				deadDialDeadline <- ok
				<-ctx.Done()
				return nil, ctx.Err()
			}
			return nil, fmt.Errorf("no route to %s", addr)
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	m.proxy = p
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	m.addr = ln.Addr().String()
	go p.Serve(ln)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		p.Shutdown(ctx)
	})

	const host = "api.example.com"
	name := func(port int, proto string) string { return fmt.Sprintf("inbound-vip|%d|%s|%s", port, proto, host) }
	routeTo := func(port int) *route.Table {
		return compileRoutes(t, fmt.Sprintf("name: %q\nvirtual_hosts:\n- name: vh\n  domains: [\"*\"]\n  routes:\n  - match: {prefix: /}\n    route: {cluster: %q}\n",
			name(port, "http"), name(port, "http")))
	}
	s := &config.Snapshot{
		Version: "se",
		Chains: map[netip.AddrPort]*config.Chain{
			vipExtHTTP: {Name: name(80, "http"), Protocol: config.ChainHTTP, RouteConfig: name(80, "http"), StatPrefix: name(80, "http")},
			vipExtH2C:  {Name: name(81, "http"), Protocol: config.ChainHTTP, RouteConfig: name(81, "http"), StatPrefix: name(81, "http")},
			vipExtDead: {Name: name(82, "http"), Protocol: config.ChainHTTP, RouteConfig: name(82, "http"), StatPrefix: name(82, "http")},
			vipExtTCP:  {Name: name(9000, "tcp"), Protocol: config.ChainTCP, TCPCluster: name(9000, "tcp"), StatPrefix: name(9000, "tcp")},
		},
		Routes:      map[string]*route.Table{name(80, "http"): routeTo(80), name(81, "http"): routeTo(81), name(82, "http"): routeTo(82)},
		Clusters:    map[string]*upstream.Cluster{},
		Assignments: map[string]*upstream.Assignment{},
	}
	plain := func(addr netip.AddrPort) upstream.Endpoint {
		return upstream.Endpoint{Addr: addr, Weight: 1, Plaintext: true, Labels: map[string]string{"app": "ext"}}
	}
	for _, c := range []struct {
		name  string
		proto upstream.Protocol
		ep    netip.AddrPort
	}{{name(80, "http"), upstream.HTTP1, extHTTP}, {name(81, "http"), upstream.HTTP2, extHTTP}, {name(82, "http"), upstream.HTTP1, extDead}, {name(9000, "tcp"), upstream.HTTP1, extTCP}} {
		cl, a := cluster(c.name, c.proto, plain(c.ep))
		if c.ep == extDead {
			cl.ConnectTimeout = 200 * time.Millisecond
		}
		s.Clusters[cl.Name], s.Assignments[a.ClusterName] = cl, a
	}
	p.Update(s)

	t.Run("HTTP/1.1", func(t *testing.T) {
		res, body := get(t, m.h1Client(vipExtHTTP), "http://"+host+"/get")
		if res.StatusCode != http.StatusOK || body != "external HTTP/1.1" {
			t.Fatalf("got %d %q, want 200 from the external server over HTTP/1.1", res.StatusCode, body)
		}
		r := backend.last(t)
		if r.TLS != nil || r.Header.Get("Forwarded") != "" || r.Host != host {
			t.Errorf("the external server saw TLS %v, Forwarded %q, Host %q", r.TLS != nil, r.Header.Get("Forwarded"), r.Host)
		}
		if rec := m.obs.next(t); rec.UpstreamHost != extHTTP || rec.ResponseCode != http.StatusOK {
			t.Errorf("record: upstream %s code %d, want %s 200", rec.UpstreamHost, rec.ResponseCode, extHTTP)
		}
	})
	t.Run("h2c", func(t *testing.T) {
		res, body := get(t, m.h1Client(vipExtH2C), "http://"+host+"/get")
		if res.StatusCode != http.StatusOK || body != "external HTTP/2.0" {
			t.Fatalf("got %d %q, want 200 from the external server over h2c", res.StatusCode, body)
		}
		m.obs.next(t)
	})
	t.Run("TCP", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
		defer cancel()
		c, err := m.tunnel(ctx, vipExtTCP)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if _, err := io.WriteString(c, "ping"); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, len("external:ping"))
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "external:ping" {
			t.Fatalf("read %q, %v; want external:ping", buf, err)
		}
	})
	t.Run("connect timeout", func(t *testing.T) {
		res, body := get(t, m.h1Client(vipExtDead), "http://"+host+"/get")
		if res.StatusCode != http.StatusServiceUnavailable {
			t.Fatalf("got %d %q, want 503", res.StatusCode, body)
		}
		select {
		case ok := <-deadDialDeadline:
			if !ok {
				t.Error("the plaintext dial had no deadline")
			}
		default:
			t.Error("the dead endpoint was not dialled")
		}
	})

	mu.Lock()
	defer mu.Unlock()
	for _, a := range dialled {
		if a.Port() == DefaultUpstreamHBONEPort {
			t.Errorf("dialled %s: a plaintext endpoint is not reached over HBONE", a)
		}
	}
}
