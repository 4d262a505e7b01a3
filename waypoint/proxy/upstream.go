package proxy

import (
	"container/list"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"golang.org/x/net/http2"

	"github.com/zmesh/zmesh/identity"
	"github.com/zmesh/zmesh/internal/hbone"
	"github.com/zmesh/zmesh/waypoint/upstream"
)

// upstreams holds the waypoint's HTTP connections to endpoints. Each is
// an HBONE stream whose CONNECT carries Forwarded: for=<client IP>, so a
// connection serves one (cluster, endpoint, client address) pair; the
// HBONE connections under the streams are shared per endpoint by
// hbone.Pool. Every stream counts against its cluster's max_connections
// while it is open.
type upstreams struct {
	p    *Proxy
	hb   *hbone.Pool
	port uint16

	mu     sync.Mutex
	pools  map[poolKey]*list.Element // of *connPool, most recently used first
	lru    *list.List
	closed bool
	stop   chan struct{}
	done   chan struct{}
}

type poolKey struct {
	// cluster keeps the pools of clusters apart, as Envoy's are: each
	// connection counts against one cluster's circuit breakers and
	// follows its protocol options.
	cluster  string
	endpoint netip.AddrPort
	identity string
	client   netip.Addr
	h2       bool
}

// connPool is the HTTP connections of one poolKey.
type connPool struct {
	key    poolKey
	host   string // key.endpoint as a request URL's host
	rt     http.RoundTripper
	idle   func()       // closes the idle connections
	active atomic.Int64 // requests whose response is not finished
	used   atomic.Int64 // unix nanoseconds of the last request
}

// errOverflow is a request refused because every pool slot is busy, a
// circuit breaker is open, or a request waited for a connection longer
// than the cluster's connect timeout (Envoy's "overflow", flag UO).
var errOverflow = errors.New("upstream connection pools are full")

// errNotNeeded ends a dial that waited for a connection slot on behalf of
// a request that has since been served by another connection.
var errNotNeeded = errors.New("connection no longer needed")

// connectError is a failure to open the tunnel to an endpoint: nothing
// of the request was sent (Envoy's "connection failure", flag UF).
type connectError struct{ err error }

func (e *connectError) Error() string { return "connect to endpoint: " + e.err.Error() }
func (e *connectError) Unwrap() error { return e.err }

func newUpstreams(p *Proxy) (*upstreams, error) {
	u := &upstreams{
		p:     p,
		port:  p.opts.UpstreamHBONEPort,
		pools: map[poolKey]*list.Element{},
		lru:   list.New(),
		stop:  make(chan struct{}),
		done:  make(chan struct{}),
	}
	hb, err := hbone.NewPool(hbone.PoolConfig{
		Dial: func(ctx context.Context, k hbone.Key) (net.Conn, error) { return p.opts.DialUpstream(ctx, k.Dst) },
		// The endpoint must prove the identity zmeshd gave it; anything
		// else fails the handshake before a byte of the request is sent.
		TLS: func(k hbone.Key) (*tls.Config, error) {
			return identity.ClientTLS(p.opts.Certs, k.SrcID, []spiffeid.ID{k.DstID}), nil
		},
	})
	if err != nil {
		return nil, err
	}
	u.hb = hb
	go u.sweep(p.bounds.PoolSweep, p.bounds.IdleTimeout)
	return u, nil
}

// dial opens an HBONE stream to ep for client (a plain TCP connection
// for an endpoint outside the mesh).
func (u *upstreams) dial(ctx context.Context, ep upstream.Endpoint, client netip.Addr, timeout time.Duration) (net.Conn, error) {
	if ep.Plaintext {
		return u.dialPlaintext(ctx, ep, timeout)
	}
	id, err := spiffeid.FromString(ep.Identity)
	if err != nil {
		return nil, &connectError{fmt.Errorf("endpoint %s identity %q: %w", ep.Addr, ep.Identity, err)}
	}
	if timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}
	k := hbone.Key{SrcID: u.p.opts.Identity, DstID: id, Dst: netip.AddrPortFrom(ep.Addr.Addr(), u.port)}
	var src netip.AddrPort
	if client.IsValid() {
		src = netip.AddrPortFrom(client, 0)
	}
	s, err := u.hb.Connect(ctx, k, &hbone.ConnectRequest{Target: ep.Addr, Source: src})
	if err != nil {
		return nil, &connectError{err}
	}
	return s, nil
}

// dialAdmitted opens a connection of pool k for a request: it takes one
// of the cluster's max_connections first, and when none is free the
// request is pending (max_pending_requests) until a connection closes, a
// request ends (its connection may serve this one), the request is served
// by another connection, or the connect timeout passes (overflow). The
// connection gives its slot back when it closes.
func (u *upstreams) dialAdmitted(ctx context.Context, k poolKey, ep upstream.Endpoint, timeout time.Duration) (net.Conn, error) {
	st := u.p.state.Load()
	if c := st.snap.Clusters[k.cluster]; c != nil {
		// The cluster's connect timeout as it is now: a pool outlives
		// configuration updates.
		timeout = c.ConnectTimeout
	}
	adm := st.admissions[k.cluster]
	if adm == nil {
		// The cluster left the configuration while the request was on
		// its way: it has no limits left to count against.
		return u.dial(ctx, ep, k.client, timeout)
	}
	if err := u.admitConnection(ctx, k.cluster, adm); err != nil {
		return nil, err
	}
	c, err := u.dial(ctx, ep, k.client, timeout)
	if err != nil {
		adm.ConnectionDone()
		return nil, err
	}
	return &admittedConn{Conn: c, done: adm.ConnectionDone}, nil
}

// admitConnection takes a connection slot of the cluster, waiting as a
// pending request when there is none.
func (u *upstreams) admitConnection(ctx context.Context, cluster string, adm *upstream.Admission) error {
	if adm.TakeConnection() {
		return nil
	}
	// Idle connections of the cluster hold slots no request uses: close
	// them rather than keep a request waiting behind them.
	u.closeIdle(cluster)
	if adm.TakeConnection() {
		return nil
	}
	adm.CountConnectionOverflow()
	if !adm.TryPending() {
		return errOverflow
	}
	defer adm.PendingDone()
	// The dial runs detached from the request's cancellation (the
	// transport's); the attempt it dials for is in its values, and ends
	// the wait when it ends or got a connection another way.
	var served, gone <-chan struct{}
	if a, ok := ctx.Value(attemptKey{}).(*attempt); ok {
		served, gone = a.servedChan(), a.Done()
	}
	t := time.NewTimer(adm.ConnectTimeout())
	defer t.Stop()
	for {
		released := adm.Released()
		if adm.TakeConnection() {
			return nil
		}
		select {
		case <-released:
		case <-served:
			return errNotNeeded
		case <-gone:
			return errNotNeeded
		case <-ctx.Done():
			return context.Cause(ctx)
		case <-t.C:
			return errOverflow
		}
	}
}

// closeIdle closes the idle connections of cluster's pools.
func (u *upstreams) closeIdle(cluster string) {
	u.mu.Lock()
	defer u.mu.Unlock()
	for _, e := range u.pools {
		if cp := e.Value.(*connPool); cp.key.cluster == cluster {
			cp.idle()
		}
	}
}

// admittedConn gives its connection slot back once, when it closes.
type admittedConn struct {
	net.Conn
	once sync.Once
	done func()
	// requests counts the requests sent on it, for
	// max_requests_per_connection.
	requests atomic.Uint64
}

func (c *admittedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.done)
	return err
}

// CloseWrite passes a half-close on to the HBONE stream.
func (c *admittedConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return c.Conn.Close()
}

// attemptKey is the context key of the attempt a dial is made for.
type attemptKey struct{}

// get returns the pool for k, making it (and room for it) if needed.
func (u *upstreams) get(k poolKey, ep upstream.Endpoint, c *upstream.Cluster) (*connPool, error) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.closed {
		return nil, errOverflow
	}
	if e, ok := u.pools[k]; ok {
		u.lru.MoveToFront(e)
		cp := e.Value.(*connPool)
		// Marked used under the lock the sweeper holds, so a pool handed
		// out is never swept before its request begins.
		cp.used.Store(time.Now().UnixNano())
		return cp, nil
	}
	if len(u.pools) >= u.p.bounds.MaxUpstreamPools {
		// Make room by closing the least recently used idle pool; when
		// every pool is busy the request overflows instead of growing
		// the waypoint's state without bound.
		var victim *list.Element
		for e := u.lru.Back(); e != nil; e = e.Prev() {
			if e.Value.(*connPool).active.Load() == 0 {
				victim = e
				break
			}
		}
		if victim == nil {
			return nil, errOverflow
		}
		u.removeLocked(victim)
	}
	cp := u.newPool(k, ep, c)
	u.pools[k] = u.lru.PushFront(cp)
	return cp, nil
}

func (u *upstreams) removeLocked(e *list.Element) {
	cp := e.Value.(*connPool)
	u.lru.Remove(e)
	delete(u.pools, cp.key)
	cp.idle()
}

func (u *upstreams) newPool(k poolKey, ep upstream.Endpoint, c *upstream.Cluster) *connPool {
	timeout := c.ConnectTimeout
	idle := c.HTTP.IdleTimeout
	dial := func(ctx context.Context) (net.Conn, error) { return u.dialAdmitted(ctx, k, ep, timeout) }
	cp := &connPool{key: k, host: k.endpoint.String()}
	// Fresh, not idle: the sweeper must not close it before its first
	// request.
	cp.used.Store(time.Now().UnixNano())
	if k.h2 {
		t := newH2Transport()
		t.AllowHTTP = true
		t.DialTLSContext = func(ctx context.Context, _, _ string, _ *tls.Config) (net.Conn, error) {
			return dial(ctx)
		}
		t.DisableCompression = true
		t.IdleConnTimeout = idle
		t.MaxHeaderListSize = uint32(u.p.bounds.MaxHeaderBytes)
		t.ReadIdleTimeout = 30 * time.Second
		t.PingTimeout = 15 * time.Second
		cp.rt, cp.idle = t, t.CloseIdleConnections
	} else {
		t := &http.Transport{
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				return dial(ctx)
			},
			// The proxy forwards what it received: no transparent gzip.
			DisableCompression:  true,
			MaxIdleConns:        u.p.bounds.MaxIdleConnsPerPool,
			MaxIdleConnsPerHost: u.p.bounds.MaxIdleConnsPerPool,
			// max_connections is the cluster's, counted across its
			// pools as connections are dialled (dialAdmitted).
			IdleConnTimeout:        idle,
			MaxResponseHeaderBytes: int64(u.p.bounds.MaxHeaderBytes),
		}
		cp.rt, cp.idle = t, t.CloseIdleConnections
	}
	return cp
}

// h2StreamWindow is the receive window of a stream of an upstream
// HTTP/2 connection. The transport reads the connection (one HBONE
// stream) eagerly, so what the app sends for a response the client does
// not read waits in the waypoint's memory, up to the stream's window:
// the transport's own 4 MiB would let a client pin 4 MiB for each
// response it leaves unread, as much as an HTTP/1.1 upstream's HBONE
// stream holds. A MiB per round trip still moves gigabytes a second
// between nodes. The connection's window stays the transport's (1 GiB):
// it is shared by all the client's requests to the endpoint, and a
// smaller one would let a few stalled responses hold up the client's
// others (behind an ingress gateway, other users' requests).
const h2StreamWindow = 1 << 20

// newH2Transport returns an HTTP/2 transport granting h2StreamWindow.
// The receive windows are only settable through an http.Transport's
// HTTP2 configuration, which ConfigureTransports links; the transport it
// returns dials nothing itself (its pool leaves dialling to the HTTP/1
// transport), so it gets a pool of its own back.
func newH2Transport() *http2.Transport {
	t1 := &http.Transport{HTTP2: &http.HTTP2Config{MaxReceiveBufferPerStream: h2StreamWindow}}
	t, err := http2.ConfigureTransports(t1)
	if err != nil {
		// Only when t1 already speaks HTTP/2, which a fresh one does
		// not.
		panic(err)
	}
	t.ConnPool = nil
	return t
}

// roundTrip sends a.req on cp, counting it active until its body is
// closed (a.finish). It tells a dial waiting for a connection slot on the
// attempt's behalf when the attempt got a connection otherwise, and marks
// the last request a connection may carry (a.maxPerConn, the cluster's
// max_requests_per_connection; 0: no limit) as closing it: HTTP/1.1 sends
// it with "Connection: close", HTTP/2 opens no more streams on the
// connection and closes it once its streams are done.
func (cp *connPool) roundTrip(a *attempt) (*http.Response, error) {
	cp.active.Add(1)
	cp.used.Store(time.Now().UnixNano())
	a.pool = cp
	a.trace.GotConn = a.gotConn
	if a.x != nil && a.x.lean {
		a.trace.Got1xxResponse = a.got1xx
	}
	a.Context = a.req.Context()
	a.req = a.req.WithContext(httptrace.WithClientTrace(a, &a.trace))
	res, err := cp.rt.RoundTrip(a.req)
	a.mu.Lock()
	a.returned = true
	a.mu.Unlock()
	if err != nil {
		cp.active.Add(-1)
		return nil, err
	}
	a.body = res.Body
	res.Body = a
	return res, nil
}

// attempt is one try of a request on a connection pool: what a dial made
// for it and the transport's trace need, and the response body, which
// ends the attempt when closed. It is one allocation per attempt.
type attempt struct {
	x     *exchange
	host  *upstream.Host
	pool  *connPool
	retry bool // the attempt holds a retry slot, given back at its end
	// cancel ends the per-try timeout's context; nil without one.
	cancel context.CancelFunc
	// grpcTrailers: the response's grpc-status is awaited in its
	// trailers, reported to outlier detection when the body ends.
	grpcTrailers bool
	res          *http.Response

	req        *http.Request
	maxPerConn uint32
	trace      httptrace.ClientTrace

	// The attempt is its request's context, which carries it to a dial
	// made for it (Value(attemptKey{})): a dial waiting on its behalf
	// gives up when the context ends, or once the attempt got a
	// connection (served, made only when a dial waits for it).
	context.Context
	mu     sync.Mutex
	got    bool
	served chan struct{}
	// returned: RoundTrip returned, no more 1xx responses are passed on.
	returned bool

	body io.ReadCloser
	once sync.Once
}

// Value returns the attempt for attemptKey, else its request context's
// value.
func (a *attempt) Value(key any) any {
	if key == (attemptKey{}) {
		return a
	}
	return a.Context.Value(key)
}

// servedChan returns a channel closed once the attempt has a connection.
func (a *attempt) servedChan() <-chan struct{} {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.served == nil {
		a.served = make(chan struct{})
		if a.got {
			close(a.served)
		}
	}
	return a.served
}

func (a *attempt) gotConn(info httptrace.GotConnInfo) {
	a.mu.Lock()
	if !a.got {
		a.got = true
		if a.served != nil {
			close(a.served)
		}
	}
	a.mu.Unlock()
	if c, ok := info.Conn.(*admittedConn); ok && a.maxPerConn > 0 {
		if c.requests.Add(1) >= uint64(a.maxPerConn) {
			// Both transports read it after GotConn, on the request
			// this goroutine sends.
			a.req.Close = true
		}
	}
}

func (a *attempt) Read(p []byte) (int, error) { return a.body.Read(p) }

// Close closes the response body and ends the attempt, once.
func (a *attempt) Close() error {
	err := a.body.Close()
	a.once.Do(a.finish)
	return err
}

// Write writes to the body of a 101 response (the upgraded connection).
func (a *attempt) Write(p []byte) (int, error) {
	if w, ok := a.body.(io.Writer); ok {
		return w.Write(p)
	}
	return 0, errors.New("response body is not writable")
}

// sweep closes pools unused for idle.
func (u *upstreams) sweep(every, idle time.Duration) {
	defer close(u.done)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-u.stop:
			return
		case now := <-t.C:
			u.mu.Lock()
			for e := u.lru.Back(); e != nil; {
				prev := e.Prev()
				cp := e.Value.(*connPool)
				if cp.active.Load() == 0 && now.Sub(time.Unix(0, cp.used.Load())) > idle {
					u.removeLocked(e)
				}
				e = prev
			}
			u.mu.Unlock()
		}
	}
}

func (u *upstreams) close() {
	u.mu.Lock()
	if u.closed {
		u.mu.Unlock()
		return
	}
	u.closed = true
	for e := u.lru.Front(); e != nil; e = e.Next() {
		e.Value.(*connPool).idle()
	}
	u.pools = map[poolKey]*list.Element{}
	u.lru.Init()
	u.mu.Unlock()
	close(u.stop)
	<-u.done
	u.hb.Close()
}
