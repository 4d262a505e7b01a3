package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"golang.org/x/net/http2"

	"github.com/zmesh/zmesh/identity"
	"github.com/zmesh/zmesh/internal/hbone"
	"github.com/zmesh/zmesh/waypoint/config"
	"github.com/zmesh/zmesh/waypoint/telemetry"
)

// DefaultUpstreamHBONEPort is where endpoints' ztunnels terminate HBONE.
const DefaultUpstreamHBONEPort = 15008

// Options wire a Proxy to the world.
type Options struct {
	// Certs hands out the waypoint's certificate and the mesh's trust
	// bundle: the certificate manager (identity.Manager) in the binary,
	// identity.StaticSource in tests. Both sides of the waypoint present
	// Identity's certificate from it, and every peer is verified against
	// its bundle.
	Certs identity.Source
	// Identity is the waypoint's own SPIFFE ID.
	Identity spiffeid.ID
	Observer telemetry.Observer // nil = telemetry.Discard{}
	Logger   *slog.Logger
	Limits   hbone.Limits // zero = hbone defaults
	// DialUpstream opens the TCP connection to an endpoint's HBONE address
	// (pod IP:15008), or to a plaintext endpoint's own address. nil =
	// net.Dialer.
	DialUpstream func(ctx context.Context, addr netip.AddrPort) (net.Conn, error)
	// UpstreamHBONEPort is the endpoints' HBONE port; 0 = 15008.
	UpstreamHBONEPort uint16
	// Workloads, when set, names a client's workload by its address for
	// telemetry (only when the workload's identity is the one the client
	// proved); nil labels clients by their identity alone.
	Workloads *telemetry.Workloads

	// bounds are the HTTP and sniffing limits; zero = defaultBounds (tests
	// shorten them).
	bounds bounds
}

// bounds are what a downstream peer can make the waypoint hold on the
// HTTP side, beyond the HBONE limits.
type bounds struct {
	// SniffTimeout bounds the wait for a sniffed port's first bytes; on
	// expiry the tunnel is forwarded as TCP (a server-first protocol sends
	// nothing until the server speaks).
	SniffTimeout time.Duration
	// SniffBytes bounds the bytes read to decide; an HTTP/1 request line
	// longer than this is forwarded as TCP.
	SniffBytes int
	// ReadHeaderTimeout bounds the time to receive an HTTP/1 request's
	// headers (the slowloris case), and a tunnel's first bytes on an HTTP
	// port.
	ReadHeaderTimeout time.Duration
	// IdleTimeout closes an HTTP/1 keep-alive or HTTP/2 connection with no
	// request for this long.
	IdleTimeout time.Duration
	// MaxHeaderBytes bounds a request's header block (HTTP/1 and HTTP/2).
	MaxHeaderBytes int
	// MaxConcurrentStreams bounds a downstream HTTP/2 connection's
	// streams.
	MaxConcurrentStreams uint32
	// MaxMirrors bounds mirrored requests in flight; beyond it mirrors are
	// dropped (a mirror never delays or fails the request it copies).
	MaxMirrors int
	// MaxMirrorBody is the largest request body copied to a mirror; a
	// request with a longer or unknown-length body is not mirrored.
	MaxMirrorBody int64
	// MaxUpstreamPools bounds the (endpoint, client IP) connection pools
	// held; the least recently used idle pool is closed to make room.
	MaxUpstreamPools int
	// MaxIdleConnsPerPool bounds the idle HTTP/1.1 connections kept per
	// pool. A pool's connections, idle or busy, each hold one of their
	// cluster's max_connections, which bounds them all; this bound is
	// only a pool's share, and must stay above the concurrency a busy
	// (endpoint, client) pair sees: a pool that keeps fewer connections
	// than its requests in flight closes the surplus as each finishes
	// and opens a new HBONE stream (and the endpoint's ztunnel a new
	// connection to its pod) for the next, most of a request's cost.
	MaxIdleConnsPerPool int
	// PoolSweep is how often idle upstream pools are looked for.
	PoolSweep time.Duration
}

func defaultBounds() bounds {
	return bounds{
		SniffTimeout:         5 * time.Second,
		SniffBytes:           4096,
		ReadHeaderTimeout:    10 * time.Second,
		IdleTimeout:          5 * time.Minute,
		MaxHeaderBytes:       60 << 10, // Envoy's max_request_headers_kb default
		MaxConcurrentStreams: 250,
		MaxMirrors:           128,
		MaxMirrorBody:        64 << 10,
		MaxUpstreamPools:     4096,
		MaxIdleConnsPerPool:  256,
		PoolSweep:            30 * time.Second,
	}
}

func (b bounds) withDefaults() bounds {
	d := defaultBounds()
	set := func(v *time.Duration, def time.Duration) {
		if *v <= 0 {
			*v = def
		}
	}
	seti := func(v *int, def int) {
		if *v <= 0 {
			*v = def
		}
	}
	set(&b.SniffTimeout, d.SniffTimeout)
	set(&b.ReadHeaderTimeout, d.ReadHeaderTimeout)
	set(&b.IdleTimeout, d.IdleTimeout)
	set(&b.PoolSweep, d.PoolSweep)
	seti(&b.SniffBytes, d.SniffBytes)
	seti(&b.MaxHeaderBytes, d.MaxHeaderBytes)
	seti(&b.MaxMirrors, d.MaxMirrors)
	seti(&b.MaxUpstreamPools, d.MaxUpstreamPools)
	seti(&b.MaxIdleConnsPerPool, d.MaxIdleConnsPerPool)
	if b.MaxConcurrentStreams == 0 {
		b.MaxConcurrentStreams = d.MaxConcurrentStreams
	}
	if b.MaxMirrorBody <= 0 {
		b.MaxMirrorBody = d.MaxMirrorBody
	}
	return b
}

// Proxy is the waypoint's data plane: it terminates HBONE, serves HTTP or
// forwards TCP on each tunnel per the current snapshot, and sends requests
// to endpoints over HBONE.
type Proxy struct {
	opts   Options
	bounds bounds
	log    *slog.Logger
	obs    telemetry.Observer

	state    atomic.Pointer[state]
	updateMu sync.Mutex // serializes Update, which builds on the previous state
	live     liveTunnels

	hb      *hbone.Server
	h1      *http.Server
	h2      *http2.Server
	h1conns *connListener
	up      *upstreams
	mirrors chan struct{} // a slot per mirrored request in flight
	rp      *httputil.ReverseProxy

	ctx    context.Context // ends when Shutdown gave up waiting
	cancel context.CancelFunc

	mu        sync.Mutex
	listeners map[net.Listener]struct{}
	draining  bool
	closeOnce sync.Once
	wg        sync.WaitGroup // Serve loops and the HTTP/1 server
}

// ErrClosed is returned by Serve after Shutdown.
var ErrClosed = errors.New("waypoint proxy: shut down")

// New checks opts and returns a proxy with no snapshot: until Update, every
// tunnel is refused.
func New(opts Options) (*Proxy, error) {
	if opts.Certs == nil {
		return nil, errors.New("waypoint proxy: Options.Certs is nil")
	}
	if opts.Identity.IsZero() {
		return nil, errors.New("waypoint proxy: Options.Identity is empty")
	}
	if opts.Observer == nil {
		opts.Observer = telemetry.Discard{}
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.UpstreamHBONEPort == 0 {
		opts.UpstreamHBONEPort = DefaultUpstreamHBONEPort
	}
	if opts.DialUpstream == nil {
		var d net.Dialer
		opts.DialUpstream = func(ctx context.Context, addr netip.AddrPort) (net.Conn, error) {
			return d.DialContext(ctx, "tcp", addr.String())
		}
	}
	p := &Proxy{
		opts:      opts,
		bounds:    opts.bounds.withDefaults(),
		log:       opts.Logger,
		obs:       opts.Observer,
		listeners: map[net.Listener]struct{}{},
	}
	p.ctx, p.cancel = context.WithCancel(context.Background())
	p.mirrors = make(chan struct{}, p.bounds.MaxMirrors)
	p.rp = newReverseProxy(p)
	var err error
	p.hb, err = hbone.NewServer(p.serveTunnel, hbone.ServerOptions{Logger: p.log, Limits: opts.Limits})
	if err != nil {
		return nil, fmt.Errorf("waypoint proxy: %w", err)
	}
	p.h1 = &http.Server{
		Handler:           p,
		ReadHeaderTimeout: p.bounds.ReadHeaderTimeout,
		IdleTimeout:       p.bounds.IdleTimeout,
		MaxHeaderBytes:    p.bounds.MaxHeaderBytes,
		ErrorLog:          slog.NewLogLogger(p.log.Handler(), slog.LevelDebug),
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			if tc, ok := c.(*tunnelConn); ok {
				return withTunnel(ctx, tc.t)
			}
			return ctx
		},
	}
	p.h2 = &http2.Server{
		MaxConcurrentStreams: p.bounds.MaxConcurrentStreams,
		IdleTimeout:          p.bounds.IdleTimeout,
		// A peer that stops answering is found by a PING after a
		// minute without frames, also while its streams are open.
		ReadIdleTimeout: time.Minute,
		PingTimeout:     15 * time.Second,
	}
	// Registers the HTTP/2 server's graceful shutdown (GOAWAY to every
	// connection) with the HTTP/1 server's Shutdown.
	if err := http2.ConfigureServer(p.h1, p.h2); err != nil {
		return nil, fmt.Errorf("waypoint proxy: %w", err)
	}
	// Last: the upstreams start a goroutine, which nothing may leak.
	if p.up, err = newUpstreams(p); err != nil {
		return nil, fmt.Errorf("waypoint proxy: %w", err)
	}
	p.h1conns = newConnListener()
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		p.h1.Serve(p.h1conns)
	}()
	return p, nil
}

// Update makes s the snapshot new requests and tunnels use; requests
// already routed keep theirs.
func (p *Proxy) Update(s *config.Snapshot) {
	if s == nil {
		return
	}
	p.updateMu.Lock()
	defer p.updateMu.Unlock()
	p.state.Store(newState(p.state.Load(), s, p.log))
	p.recheck(s)
}

// ClusterStats calls f with every statistic of every cluster of the
// current snapshot, under Envoy's names without the "cluster.<name>."
// prefix: the circuit breakers' counts and overflows, and outlier
// detection's ejections for the clusters that have it. Counters carry over
// across snapshots. Metrics export reads it at each scrape.
func (p *Proxy) ClusterStats(f func(cluster, stat string, value uint64, gauge bool)) {
	st := p.state.Load()
	if st == nil {
		return
	}
	for name, a := range st.admissions {
		a.Stats().Each(func(stat string, v uint64, gauge bool) { f(name, stat, v, gauge) })
		if d := st.detectors[name]; d != nil {
			d.Stats().Each(func(stat string, v uint64, gauge bool) { f(name, stat, v, gauge) })
		}
	}
}

// Ready reports whether a snapshot was applied.
func (p *Proxy) Ready() bool { return p.state.Load() != nil }

// Serve accepts connections on ln and serves HBONE on each: TLS 1.3 with
// the waypoint's certificate, client certificates required and verified
// against the mesh's roots. It returns ErrClosed after Shutdown.
func (p *Proxy) Serve(ln net.Listener) error {
	p.mu.Lock()
	if p.draining {
		p.mu.Unlock()
		ln.Close()
		return ErrClosed
	}
	p.listeners[ln] = struct{}{}
	p.wg.Add(1)
	p.mu.Unlock()
	defer p.wg.Done()
	defer func() {
		p.mu.Lock()
		delete(p.listeners, ln)
		p.mu.Unlock()
	}()
	var delay time.Duration
	for {
		c, err := ln.Accept()
		if err != nil {
			p.mu.Lock()
			draining := p.draining
			p.mu.Unlock()
			if draining {
				return ErrClosed
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				delay = min(max(2*delay, 5*time.Millisecond), time.Second)
				time.Sleep(delay)
				continue
			}
			return err
		}
		delay = 0
		go func() {
			tc := tls.Server(hbone.BatchWrites(c), identity.ServerTLS(p.opts.Certs, p.opts.Identity, nil))
			if err := p.hb.ServeConn(p.ctx, tc); err != nil {
				p.log.Debug("hbone connection ended", "src.addr", c.RemoteAddr().String(), "error", err.Error())
			}
		}()
	}
}

// Shutdown drains: listeners close, HBONE and HTTP/2 peers get GOAWAY,
// idle HTTP/1.1 connections close, and requests in flight finish. When ctx
// ends first, what is left is closed and ctx's error returned.
func (p *Proxy) Shutdown(ctx context.Context) error {
	p.mu.Lock()
	p.draining = true
	for ln := range p.listeners {
		ln.Close()
	}
	p.mu.Unlock()

	var wg sync.WaitGroup
	var h1err, hberr error
	wg.Add(2)
	go func() { defer wg.Done(); h1err = p.h1.Shutdown(ctx) }()
	go func() { defer wg.Done(); hberr = p.hb.Shutdown(ctx) }()
	wg.Wait()
	p.cancel()
	p.closeOnce.Do(func() {
		// Taking every mirror slot waits for the mirrors in flight
		// (cancelled above) and drops any a late request would start.
		for range cap(p.mirrors) {
			p.mirrors <- struct{}{}
		}
		p.h1conns.Close()
		p.up.close()
	})
	p.wg.Wait()
	return errors.Join(h1err, hberr)
}

// connListener hands tunnels to the HTTP/1 server.
type connListener struct {
	ch     chan net.Conn
	done   chan struct{}
	closer sync.Once
}

func newConnListener() *connListener {
	return &connListener{ch: make(chan net.Conn), done: make(chan struct{})}
}

func (l *connListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.ch:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

// hand gives c to the server; false when the listener is closed.
func (l *connListener) hand(c net.Conn) bool {
	select {
	case l.ch <- c:
		return true
	case <-l.done:
		return false
	}
}

func (l *connListener) Close() error {
	l.closer.Do(func() { close(l.done) })
	return nil
}

func (l *connListener) Addr() net.Addr { return &net.TCPAddr{} }
