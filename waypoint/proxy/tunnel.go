package proxy

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"sync"
	"time"

	"golang.org/x/net/http2"

	"github.com/zmesh/zmesh/identity"
	"github.com/zmesh/zmesh/internal/hbone"
	"github.com/zmesh/zmesh/waypoint/config"
	"github.com/zmesh/zmesh/waypoint/telemetry"
	"github.com/zmesh/zmesh/waypoint/upstream"
)

// tunnel is one accepted HBONE stream: who sent it and where it goes.
type tunnel struct {
	// dst is the CONNECT's :authority, the key into Snapshot.Chains.
	dst netip.AddrPort
	// principal is the peer's SPIFFE ID, proven by its certificate, and
	// namespace the namespace it names.
	principal, namespace string
	// client is the original client's address. The client's ztunnel
	// dials the waypoint from the client pod's network namespace, so the
	// tunnel's TCP peer is the client; a Forwarded header the peer sends
	// is not believed, since any mesh identity could claim any address in
	// it.
	client netip.AddrPort
	// peerAddr is the tunnel's TCP peer, for logs.
	peerAddr string
	start    time.Time
}

type tunnelKey struct{}

func withTunnel(ctx context.Context, t *tunnel) context.Context {
	return context.WithValue(ctx, tunnelKey{}, t)
}

func tunnelFrom(ctx context.Context) *tunnel {
	t, _ := ctx.Value(tunnelKey{}).(*tunnel)
	return t
}

// serveTunnel is the HBONE handler: it finds the destination's chain,
// answers the CONNECT and serves the tunnel's bytes as the chain says.
func (p *Proxy) serveTunnel(ctx context.Context, req *hbone.Request, s *hbone.Stream) {
	t := &tunnel{dst: req.Target, principal: req.Peer.String(), start: time.Now()}
	if w, err := identity.WorkloadOf(req.Peer); err == nil {
		t.namespace = w.Namespace
	}
	if req.RemoteAddr != nil {
		t.peerAddr = req.RemoteAddr.String()
		if ta, ok := req.RemoteAddr.(*net.TCPAddr); ok {
			ap := ta.AddrPort()
			t.client = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
		}
	}
	st := p.state.Load()
	var ch *config.Chain
	if st != nil {
		ch = st.snap.Chains[req.Target]
	}
	if ch == nil {
		// 400, as ztunnel answers a CONNECT to an address that is not
		// its pod's: the client asked for something this waypoint does
		// not serve, and retrying the same tunnel here will not help.
		// Before the first snapshot the refusal is 503: the waypoint is
		// not ready, the client may try again.
		status, reason := http.StatusBadRequest, "destination "+req.Target.String()+" is not served by this waypoint"
		if st == nil {
			status, reason = http.StatusServiceUnavailable, "waypoint has no configuration yet"
		}
		// Debug: a peer decides how often this happens.
		p.log.Debug("hbone request refused", "src.identity", t.principal, "src.addr", t.peerAddr, "dst.addr", req.Target.String(), "reason", reason)
		s.RespondError(status, reason)
		return
	}
	switch ch.Protocol {
	case config.ChainTCP:
		p.serveTCP(ctx, st, ch, t, s, nil)
	case config.ChainHTTP:
		if p.refuseHTTPTunnel(ch, t, s, false) || s.Respond(http.StatusOK) != nil {
			return
		}
		pc := &peekConn{Conn: s}
		isH2, err := pc.sniffH2(p.bounds.ReadHeaderTimeout)
		if err != nil {
			return
		}
		p.serveHTTP(ctx, t, pc, isH2)
	case config.ChainSniff:
		if s.Respond(http.StatusOK) != nil {
			return
		}
		pc := &peekConn{Conn: s}
		kind := pc.sniff(p.bounds.SniffTimeout, p.bounds.SniffBytes)
		if kind != sniffTCP && p.refuseHTTPTunnel(ch, t, s, true) {
			return
		}
		switch kind {
		case sniffH2:
			p.serveHTTP(ctx, t, pc, true)
		case sniffHTTP1:
			p.serveHTTP(ctx, t, pc, false)
		case sniffTCP:
			p.serveTCP(ctx, st, ch, t, s, pc)
		}
	}
}

// serveHTTP serves HTTP on a tunnel until the connection ends: HTTP/2 in
// this goroutine, HTTP/1 handed to the shared HTTP/1 server (which owns
// keep-alive, timeouts and Upgrade hijacking) while this goroutine waits,
// since the HBONE stream lives as long as its handler.
func (p *Proxy) serveHTTP(ctx context.Context, t *tunnel, c *peekConn, isH2 bool) {
	defer p.track(t, true, func() { c.Close() })()
	if isH2 {
		p.h2.ServeConn(c, &http2.ServeConnOpts{Context: withTunnel(ctx, t), BaseConfig: p.h1, Handler: p})
		return
	}
	tc := &tunnelConn{Conn: c, t: t, closed: make(chan struct{})}
	if !p.h1conns.hand(tc) {
		c.Close()
		return
	}
	select {
	case <-tc.closed:
	case <-ctx.Done():
		// The peer reset the stream or the server gave up: the HTTP
		// server's reads fail and it lets go of the connection.
		tc.Close()
	}
}

// tunnelConn is a tunnel as the HTTP/1 server sees it; it tells the HBONE
// handler when the server (or a hijacker) is done with it.
type tunnelConn struct {
	net.Conn
	t      *tunnel
	once   sync.Once
	closed chan struct{}
}

func (c *tunnelConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() { close(c.closed) })
	return err
}

// RemoteAddr is the original client's address, for the server's logs.
func (c *tunnelConn) RemoteAddr() net.Addr { return net.TCPAddrFromAddrPort(c.t.client) }

// CloseWrite half-closes the tunnel (an Upgrade's copier uses it).
func (c *tunnelConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

// peekConn replays the bytes read while sniffing before reading on.
type peekConn struct {
	net.Conn
	buf []byte
}

func (c *peekConn) Read(p []byte) (int, error) {
	if len(c.buf) > 0 {
		n := copy(p, c.buf)
		c.buf = c.buf[n:]
		return n, nil
	}
	return c.Conn.Read(p)
}

func (c *peekConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

// h2Preface is what an HTTP/2 client sends first (RFC 9113 §3.4).
const h2Preface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

// sniffH2 reads until the first bytes either are the HTTP/2 preface or
// cannot be; anything else is HTTP/1. The wait is bounded like an HTTP/1
// request's headers.
func (c *peekConn) sniffH2(timeout time.Duration) (bool, error) {
	c.SetReadDeadline(time.Now().Add(timeout))
	defer c.SetReadDeadline(time.Time{})
	var b [len(h2Preface)]byte
	n := 0
	for n < len(b) {
		m, err := c.Conn.Read(b[n:])
		n += m
		if string(b[:n]) != h2Preface[:n] {
			c.buf = append(c.buf, b[:n]...)
			return false, nil
		}
		if err != nil {
			c.buf = append(c.buf, b[:n]...)
			if n > 0 && errors.Is(err, io.EOF) {
				return false, nil
			}
			return false, err
		}
	}
	c.buf = append(c.buf, b[:n]...)
	return true, nil
}

type sniffKind uint8

const (
	sniffTCP sniffKind = iota
	sniffHTTP1
	sniffH2
)

// sniff reads at most max bytes, for at most timeout, until classify
// decides. Whatever it cannot decide (timeout, end of stream, a too long
// first line) is TCP: forwarding bytes is always correct, if not routed.
func (c *peekConn) sniff(timeout time.Duration, max int) sniffKind {
	c.SetReadDeadline(time.Now().Add(timeout))
	defer c.SetReadDeadline(time.Time{})
	buf := make([]byte, 0, 512)
	for {
		if len(buf) == cap(buf) {
			if cap(buf) >= max {
				break
			}
			nb := make([]byte, len(buf), min(2*cap(buf), max))
			copy(nb, buf)
			buf = nb
		}
		n, err := c.Conn.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if k, done := classify(buf); done {
			c.buf = buf
			return k
		}
		if err != nil {
			if !errors.Is(err, os.ErrDeadlineExceeded) && !errors.Is(err, io.EOF) {
				c.buf = buf
				return sniffTCP
			}
			break
		}
	}
	c.buf = buf
	return sniffTCP
}

// classify says whether b starts an HTTP/2 connection, an HTTP/1.x
// request, or neither, and whether b was enough to tell.
func classify(b []byte) (kind sniffKind, done bool) {
	if len(b) == 0 {
		return sniffTCP, false
	}
	if n := min(len(b), len(h2Preface)); string(b[:n]) == h2Preface[:n] {
		if n == len(h2Preface) {
			return sniffH2, true
		}
		return sniffTCP, false
	}
	// Request line: method SP request-target SP HTTP/1.x CRLF.
	i := 0
	for i < len(b) && isTokenChar(b[i]) {
		i++
	}
	if i > 32 {
		return sniffTCP, true // no method is that long
	}
	if i == len(b) {
		return sniffTCP, false
	}
	if i == 0 || b[i] != ' ' {
		return sniffTCP, true
	}
	i++
	start := i
	for i < len(b) && b[i] > ' ' && b[i] != 0x7f {
		i++
	}
	if i == len(b) {
		return sniffTCP, false
	}
	if i == start || b[i] != ' ' {
		return sniffTCP, true
	}
	i++
	const version = "HTTP/1."
	rest := b[i:]
	n := min(len(rest), len(version))
	if string(rest[:n]) != version[:n] {
		return sniffTCP, true
	}
	if len(rest) < len(version)+1 {
		return sniffTCP, false
	}
	if d := rest[len(version)]; d != '0' && d != '1' {
		return sniffTCP, true
	}
	return sniffHTTP1, true
}

func isTokenChar(c byte) bool {
	switch {
	case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		return true
	}
	switch c {
	case '!', '#', '$', '%', '&', '\'', '*', '+', '-', '.', '^', '_', '`', '|', '~':
		return true
	}
	return false
}

// sourcePeer is the tunnel's client as telemetry labels it: its proven
// identity, and its workload when the client's address names one with that
// identity.
func (p *Proxy) sourcePeer(t *tunnel) telemetry.Peer {
	pr := telemetry.Peer{Principal: t.principal, Namespace: t.namespace, Addr: t.client}
	p.opts.Workloads.Label(&pr)
	return pr
}

// destinationPeer is an endpoint as telemetry labels it.
// What zmeshd's endpoint metadata names wins; the labels and identity
// stand in for an assignment that carries none.
func destinationPeer(ep upstream.Endpoint) telemetry.Peer {
	w := ep.Workload
	pr := telemetry.Peer{Principal: ep.Identity, Addr: ep.Addr, Workload: w.Name, Namespace: w.Namespace,
		App: w.App, Version: w.Version, CanonicalService: w.CanonicalService, CanonicalRevision: w.CanonicalRevision,
		Cluster: w.Cluster}
	if pr.App == "" && pr.CanonicalService == "" {
		pr.App = ep.Labels["app"]
	}
	if pr.Version == "" && pr.CanonicalRevision == "" {
		pr.Version = ep.Labels["version"]
	}
	if pr.Namespace == "" {
		if id, err := identity.ParseWorkload(ep.Identity); err == nil {
			pr.Namespace = id.Namespace
		}
	}
	return pr
}
