package hbone

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/zmesh/zmesh/identity"
)

// StatusError is a CONNECT the server refused.
type StatusError struct {
	Status int
	Reason string // the server's ReasonHeader, if any
}

func (e *StatusError) Error() string {
	if e.Reason != "" {
		return fmt.Sprintf("hbone: CONNECT refused with %d: %s", e.Status, e.Reason)
	}
	return fmt.Sprintf("hbone: CONNECT refused with %d", e.Status)
}

// ClientConn is one client-side HBONE connection. Most callers use a Pool;
// ClientConn is for tools and tests that want exactly one connection.
type ClientConn struct{ c *conn }

// ClientOptions tune a client connection; the zero value is the defaults.
type ClientOptions struct {
	StreamWindow int32 // default DefaultStreamWindow
	ConnWindow   int32 // default DefaultConnWindow
	// HandshakeTimeout bounds the TLS handshake and the HTTP/2 preface
	// (and so does the context given to the dial): default 10 s.
	HandshakeTimeout time.Duration
	// OnLimit, if set, is called when the server ran into one of the
	// connection's bounds (control frames, header block) and the
	// connection was ended for it. It must not block.
	OnLimit func(limit string)
}

// NewClientConn runs the TLS handshake on nc with cfg (from
// identity.ClientTLS, which checks the server's identity), then sets up
// HTTP/2. It takes ownership of nc.
func NewClientConn(ctx context.Context, nc net.Conn, cfg *tls.Config, opts ClientOptions) (*ClientConn, error) {
	c, err := newClientConn(ctx, nc, cfg, opts)
	if err != nil {
		return nil, err
	}
	return &ClientConn{c: c}, nil
}

func newClientConn(ctx context.Context, nc net.Conn, cfg *tls.Config, opts ClientOptions) (*conn, error) {
	if opts.StreamWindow <= 0 {
		opts.StreamWindow = DefaultStreamWindow
	}
	if opts.ConnWindow <= 0 {
		opts.ConnWindow = DefaultConnWindow
	}
	if opts.HandshakeTimeout <= 0 {
		opts.HandshakeTimeout = DefaultLimits().HandshakeTimeout
	}
	tc := tls.Client(BatchWrites(nc), cfg)
	hctx, cancel := context.WithTimeout(ctx, opts.HandshakeTimeout)
	defer cancel()
	if err := tc.HandshakeContext(hctx); err != nil {
		nc.Close()
		return nil, fmt.Errorf("hbone: tls handshake with %s: %w", nc.RemoteAddr(), err)
	}
	if p := tc.ConnectionState().NegotiatedProtocol; p != identity.ALPNH2 {
		tc.Close()
		return nil, fmt.Errorf("hbone: server %s negotiated ALPN %q, want h2", nc.RemoteAddr(), p)
	}
	c := newConn(tc, true, opts.StreamWindow, opts.ConnWindow)
	c.onLimit = opts.OnLimit
	if dl, ok := hctx.Deadline(); ok {
		tc.SetDeadline(dl)
	}
	if err := c.writePreface(); err != nil {
		tc.Close()
		return nil, fmt.Errorf("hbone: write preface: %w", err)
	}
	if err := c.readPreface(); err != nil {
		tc.Close()
		return nil, fmt.Errorf("hbone: %s: %w", nc.RemoteAddr(), err)
	}
	tc.SetDeadline(time.Time{})
	go c.readLoop(nil)
	return c, nil
}

// NotAnsweredError ends a joined stream (ConnectRequest.Join) that the
// server never answered: it reset the stream, the connection went away or
// failed, or the deadline of the context given to Connect passed first.
type NotAnsweredError struct{ Err error }

func (e *NotAnsweredError) Error() string {
	return "hbone: tunnel ended before its CONNECT was answered: " + e.Err.Error()
}

func (e *NotAnsweredError) Unwrap() error { return e.Err }

// errAnswerTimeout ends a joined stream whose answer did not come before
// the deadline of its Connect's context.
var errAnswerTimeout = errors.New("no answer before the connect deadline")

// Connect opens a tunnel to r.Target and returns it once the server
// answered 200 (or, with r.Join, once the request is written). Any other
// answer is a *StatusError.
func (cc *ClientConn) Connect(ctx context.Context, r *ConnectRequest) (*Stream, error) {
	var j *joinState
	if r.Join {
		j = newJoinState(r, nil, Key{}, 0)
	}
	st, _, err := cc.c.connect(ctx, r, j)
	return st, err
}

// Shutdown sends GOAWAY: no more streams; live ones go on.
func (cc *ClientConn) Shutdown() { cc.c.goAway() }

// Close closes the connection and fails its streams.
func (cc *ClientConn) Close() error { return cc.c.Close() }

// Done is closed when the connection has ended.
func (cc *ClientConn) Done() <-chan struct{} { return cc.c.done }

// errConnFull is returned when the peer's stream limit is reached.
var errConnFull = errors.New("hbone: connection has no free stream")

// connect opens a stream and waits for the answer, or, with j (a joined
// stream), returns once the request and its early data are written.
// opened reports whether a stream was registered: if so, its end is
// reported through onStreamClosed whatever the outcome.
func (c *conn) connect(ctx context.Context, r *ConnectRequest, j *joinState) (st *Stream, opened bool, err error) {
	fields, err := requestFields(r)
	if err != nil {
		return nil, false, err
	}
	// Stream ids must reach the wire in increasing order, so the id is
	// taken and the HEADERS written under one hold of the write lock.
	c.lockWrite()
	c.mu.Lock()
	switch {
	case c.err != nil:
		err = c.err
	case c.goingAway || c.nextID > 1<<31-1:
		err = errGoingAway
	case uint32(len(c.streams)) >= c.peerMaxStreams:
		err = errConnFull
	}
	if err != nil {
		c.mu.Unlock()
		c.wmu.Unlock()
		return nil, false, err
	}
	id := c.nextID
	c.nextID += 2
	st = newStream(c, id)
	c.streams[id] = st
	if j != nil {
		st.join, st.awaiting = j, true
		j.early = true // the rest of the early data is not spent
	}
	// Early data goes in the same flush as far as credit allows (all of
	// it but on a congested connection); the rest after the answer.
	early := r.EarlyData
	n := min(int64(len(early)), st.sendWindow, c.sendWindow, int64(c.peerMaxFrame))
	n = max(n, 0)
	st.sendWindow -= n
	c.sendWindow -= n
	c.mu.Unlock()
	err = c.writeHeadersLocked(id, false, fields)
	if err == nil && n > 0 {
		err = c.fr.WriteData(id, false, early[:n])
	}
	if err != nil {
		c.wmu.Unlock()
		c.fail(err)
		return nil, true, err
	}
	if err := c.unlockWrite(); err != nil {
		return nil, true, err
	}
	if j != nil {
		if err := c.joined(ctx, st, early[n:]); err != nil {
			return nil, true, err
		}
		return st, true, nil
	}
	defer func() {
		if err == nil && int(n) < len(early) {
			if dl, ok := ctx.Deadline(); ok {
				st.SetWriteDeadline(dl)
				defer st.SetWriteDeadline(time.Time{})
			}
			if _, err = st.Write(early[n:]); err != nil {
				st.Close()
				st = nil
			}
		}
	}()

	stop := context.AfterFunc(ctx, func() {
		c.mu.Lock()
		st.cond.Broadcast()
		c.mu.Unlock()
	})
	defer stop()
	c.mu.Lock()
	for st.status == 0 && st.err == nil && ctx.Err() == nil {
		st.cond.Wait()
	}
	status, serr := st.status, st.err
	c.mu.Unlock()
	switch {
	case status == 200:
		return st, true, nil
	case status != 0:
		st.Close()
		return nil, true, st.statusError()
	case serr != nil:
		st.Close()
		return nil, true, serr
	default:
		st.Close()
		return nil, true, ctx.Err()
	}
}

// joined finishes opening a joined stream: it arms the answer's deadline
// (the context's) and writes what credit left of the early data.
func (c *conn) joined(ctx context.Context, st *Stream, rest []byte) error {
	j := st.join
	if dl, ok := ctx.Deadline(); ok {
		j.deadline = dl
		c.mu.Lock()
		if st.awaiting && st.err == nil {
			j.timer = time.AfterFunc(time.Until(dl), st.answerExpired)
		}
		c.mu.Unlock()
	}
	if len(rest) > 0 {
		if dl, ok := ctx.Deadline(); ok {
			st.SetWriteDeadline(dl)
		}
		_, err := st.Write(rest)
		st.SetWriteDeadline(time.Time{})
		if err != nil {
			st.Close()
			return err
		}
	}
	c.mu.Lock()
	j.early = false
	c.mu.Unlock()
	return nil
}
