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
// connection serves one (endpoint, client address) pair; the HBONE
// connections under the streams are shared per endpoint by hbone.Pool.
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
	endpoint netip.AddrPort
	identity string
	client   netip.Addr
	h2       bool
}

// connPool is the HTTP connections of one poolKey.
type connPool struct {
	key    poolKey
	rt     http.RoundTripper
	idle   func()       // closes the idle connections
	active atomic.Int64 // requests whose response is not finished
	used   atomic.Int64 // unix nanoseconds of the last request
}

// errOverflow is a request refused because every pool slot is busy.
var errOverflow = errors.New("upstream connection pools are full")

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
	dial := func(ctx context.Context) (net.Conn, error) { return u.dial(ctx, ep, k.client, timeout) }
	cp := &connPool{key: k}
	// Fresh, not idle: the sweeper must not close it before its first
	// request.
	cp.used.Store(time.Now().UnixNano())
	if k.h2 {
		t := &http2.Transport{
			AllowHTTP: true,
			DialTLSContext: func(ctx context.Context, _, _ string, _ *tls.Config) (net.Conn, error) {
				return dial(ctx)
			},
			DisableCompression: true,
			IdleConnTimeout:    idle,
			MaxHeaderListSize:  uint32(u.p.bounds.MaxHeaderBytes),
			ReadIdleTimeout:    30 * time.Second,
			PingTimeout:        15 * time.Second,
		}
		cp.rt, cp.idle = t, t.CloseIdleConnections
	} else {
		t := &http.Transport{
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				return dial(ctx)
			},
			// The proxy forwards what it received: no transparent gzip.
			DisableCompression:     true,
			MaxIdleConns:           u.p.bounds.MaxIdleConnsPerPool,
			MaxIdleConnsPerHost:    u.p.bounds.MaxIdleConnsPerPool,
			MaxConnsPerHost:        int(c.Limits.MaxConnections),
			IdleConnTimeout:        idle,
			MaxResponseHeaderBytes: int64(u.p.bounds.MaxHeaderBytes),
		}
		cp.rt, cp.idle = t, t.CloseIdleConnections
	}
	return cp
}

// roundTrip sends req on cp, counting it active until its body is closed.
func (cp *connPool) roundTrip(req *http.Request) (*http.Response, error) {
	cp.active.Add(1)
	cp.used.Store(time.Now().UnixNano())
	res, err := cp.rt.RoundTrip(req)
	if err != nil {
		cp.active.Add(-1)
		return nil, err
	}
	res.Body = &doneBody{ReadCloser: res.Body, done: func() { cp.active.Add(-1) }}
	return res, nil
}

// doneBody calls done once when the body is closed. It keeps the
// io.Writer of a 101 response's body (the upgraded connection).
type doneBody struct {
	io.ReadCloser
	once sync.Once
	done func()
}

func (b *doneBody) Close() error {
	err := b.ReadCloser.Close()
	b.once.Do(b.done)
	return err
}

func (b *doneBody) Write(p []byte) (int, error) {
	if w, ok := b.ReadCloser.(io.Writer); ok {
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
