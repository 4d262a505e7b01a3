package hbone

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"golang.org/x/net/http2"
)

// Key identifies the connections a stream may share. Outbound sockets live
// in the source pod's network namespace, so the source workload is part of
// the key, and a connection is only reused between the same two identities.
type Key struct {
	SrcWorkload string      // uid of the source workload (its netns)
	SrcID       spiffeid.ID // identity we present
	DstID       spiffeid.ID // identity the server must prove
	Dst         netip.AddrPort
}

func (k Key) String() string {
	return fmt.Sprintf("%s(%s)->%s(%s)", k.SrcWorkload, k.SrcID, k.Dst, k.DstID)
}

// PoolConfig wires a Pool to the world.
type PoolConfig struct {
	// Dial opens the TCP connection for a key (in ztunnel: a marked socket
	// in the source pod's netns).
	Dial func(ctx context.Context, k Key) (net.Conn, error)
	// TLS returns the client config for a key: presenting k.SrcID and
	// accepting only k.DstID (identity.ClientTLS).
	TLS func(k Key) (*tls.Config, error)
	// MaxStreamsPerConn: default DefaultMaxStreams.
	MaxStreamsPerConn int
	// IdleTimeout closes a connection with no streams: default 60 s.
	IdleTimeout time.Duration
	Options     ClientOptions
}

// Pool multiplexes CONNECT streams over few HTTP/2 connections per Key. It
// opens another connection when all of a key's are full, drops connections
// that receive GOAWAY (their streams finish), and closes idle ones.
type Pool struct {
	cfg PoolConfig

	mu      sync.Mutex
	conns   map[Key][]*pooledConn
	dialing map[Key]*dialCall
	closed  bool
}

type pooledConn struct {
	c      *conn
	key    Key
	active int // streams handed out and not yet closed; guarded by Pool.mu
	gone   bool
	idle   *time.Timer
}

type dialCall struct {
	done chan struct{}
	err  error
}

// NewPool validates cfg and returns an empty pool.
func NewPool(cfg PoolConfig) (*Pool, error) {
	if cfg.Dial == nil || cfg.TLS == nil {
		return nil, errors.New("hbone: pool needs Dial and TLS")
	}
	if cfg.MaxStreamsPerConn <= 0 {
		cfg.MaxStreamsPerConn = DefaultMaxStreams
	}
	if cfg.IdleTimeout <= 0 {
		cfg.IdleTimeout = 60 * time.Second
	}
	return &Pool{cfg: cfg, conns: map[Key][]*pooledConn{}, dialing: map[Key]*dialCall{}}, nil
}

// ErrPoolClosed is returned by Connect after Close.
var ErrPoolClosed = errors.New("hbone: pool closed")

// Connect opens a tunnel for r over a connection for k, dialing one if none
// has a free stream. A stream the server refused without processing it
// (REFUSED_STREAM, a GOAWAY that did not cover it) or that found its
// connection full or going away is opened again on another connection,
// up to maxRetries times; a joined stream (r.Join) also after Connect
// returned, while its early data is all it sent (see the package
// documentation).
func (p *Pool) Connect(ctx context.Context, k Key, r *ConnectRequest) (*Stream, error) {
	return p.connect(ctx, k, r, 0)
}

// maxRetries bounds the times one tunnel is opened again.
const maxRetries = 3

func (p *Pool) connect(ctx context.Context, k Key, r *ConnectRequest, attempt int) (*Stream, error) {
	for ; ; attempt++ {
		pc, err := p.acquire(ctx, k)
		if err != nil {
			return nil, err
		}
		var j *joinState
		if r.Join {
			j = newJoinState(r, p, k, attempt)
		}
		st, opened, err := pc.c.connect(ctx, r, j)
		if err == nil {
			return st, nil
		}
		if !opened {
			p.release(pc)
		}
		// The request itself was never processed by the server.
		if retryable(err) && attempt < maxRetries {
			continue
		}
		return nil, err
	}
}

func retryable(err error) bool {
	var re *ResetError
	return errors.Is(err, errGoingAway) || errors.Is(err, errConnFull) ||
		(errors.As(err, &re) && re.Code == http2.ErrCodeRefusedStream)
}

// acquire returns a connection for k with a stream reserved on it.
func (p *Pool) acquire(ctx context.Context, k Key) (*pooledConn, error) {
	for {
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			return nil, ErrPoolClosed
		}
		for _, pc := range p.conns[k] {
			if pc.usableLocked(p.cfg.MaxStreamsPerConn) {
				pc.active++
				if pc.idle != nil {
					pc.idle.Stop()
					pc.idle = nil
				}
				p.mu.Unlock()
				return pc, nil
			}
		}
		if d := p.dialing[k]; d != nil {
			// Someone is dialing this key: wait and look again, so a burst
			// of first requests opens one connection, not one each.
			p.mu.Unlock()
			select {
			case <-d.done:
				if d.err != nil {
					return nil, d.err
				}
				continue
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		}
		d := &dialCall{done: make(chan struct{})}
		p.dialing[k] = d
		p.mu.Unlock()

		pc, err := p.dial(ctx, k)
		p.mu.Lock()
		delete(p.dialing, k)
		d.err = err
		close(d.done)
		if err != nil {
			p.mu.Unlock()
			return nil, err
		}
		if p.closed {
			p.mu.Unlock()
			pc.c.Close()
			return nil, ErrPoolClosed
		}
		pc.active++
		p.conns[k] = append(p.conns[k], pc)
		p.mu.Unlock()
		return pc, nil
	}
}

func (pc *pooledConn) usableLocked(max int) bool {
	if pc.gone || pc.active >= max {
		return false
	}
	pc.c.mu.Lock()
	defer pc.c.mu.Unlock()
	return pc.c.err == nil && !pc.c.goingAway && uint32(pc.active) < pc.c.peerMaxStreams
}

func (p *Pool) dial(ctx context.Context, k Key) (*pooledConn, error) {
	cfg, err := p.cfg.TLS(k)
	if err != nil {
		return nil, fmt.Errorf("hbone: tls config for %s: %w", k, err)
	}
	nc, err := p.cfg.Dial(ctx, k)
	if err != nil {
		return nil, fmt.Errorf("hbone: dial %s: %w", k.Dst, err)
	}
	c, err := newClientConn(ctx, nc, cfg, p.cfg.Options)
	if err != nil {
		return nil, err
	}
	pc := &pooledConn{c: c, key: k}
	c.onStreamClosed = func() { p.release(pc) }
	c.onGoAway = func() { p.remove(pc) }
	return pc, nil
}

// release returns a stream slot; a connection left with no streams is
// closed after the idle timeout.
func (p *Pool) release(pc *pooledConn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if pc.active > 0 {
		pc.active--
	}
	if pc.active > 0 {
		return
	}
	if pc.gone {
		// Drained after GOAWAY or pool close: nothing else will use it.
		go pc.c.Close()
		return
	}
	if pc.idle == nil {
		pc.idle = time.AfterFunc(p.cfg.IdleTimeout, func() { p.evictIdle(pc) })
	}
}

func (p *Pool) evictIdle(pc *pooledConn) {
	p.mu.Lock()
	if pc.active > 0 || pc.gone {
		p.mu.Unlock()
		return
	}
	p.removeLocked(pc)
	p.mu.Unlock()
	pc.c.goAway()
	pc.c.Close()
}

// remove takes a connection out of the pool (GOAWAY or failure); its live
// streams continue.
func (p *Pool) remove(pc *pooledConn) {
	p.mu.Lock()
	p.removeLocked(pc)
	idle := pc.active == 0
	p.mu.Unlock()
	if idle {
		pc.c.Close()
	}
}

func (p *Pool) removeLocked(pc *pooledConn) {
	if pc.gone {
		return
	}
	pc.gone = true
	if pc.idle != nil {
		pc.idle.Stop()
		pc.idle = nil
	}
	list := p.conns[pc.key]
	for i, x := range list {
		if x == pc {
			list = append(list[:i], list[i+1:]...)
			break
		}
	}
	if len(list) == 0 {
		delete(p.conns, pc.key)
	} else {
		p.conns[pc.key] = list
	}
}

// Conns returns the number of open connections per key, for admin output
// and tests.
func (p *Pool) Conns() map[Key]int {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make(map[Key]int, len(p.conns))
	for k, l := range p.conns {
		out[k] = len(l)
	}
	return out
}

// Close closes every connection and fails their streams.
func (p *Pool) Close() {
	p.mu.Lock()
	p.closed = true
	var all []*pooledConn
	for _, l := range p.conns {
		all = append(all, l...)
	}
	for _, pc := range all {
		p.removeLocked(pc)
	}
	p.mu.Unlock()
	for _, pc := range all {
		pc.c.Close()
	}
}
