package hbone

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/zmesh/zmesh/identity"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// Handler serves one CONNECT stream. It must answer with s.Respond: 200
// opens the tunnel, anything else refuses it. When the handler returns the
// stream is closed; one that returns without answering answers 503.
type Handler func(ctx context.Context, req *Request, s *Stream)

// Server terminates HBONE connections whose TLS handshake it completes.
type Server struct {
	handler      Handler
	log          *slog.Logger
	streamWindow int32
	connWindow   int32
	limits       Limits
	onLimit      func(limit string)
	limitLog     limitLog

	mu       sync.Mutex
	conns    map[*conn]struct{}
	opening  int                      // connections still in their TLS handshake or preface
	streams  int                      // handlers running
	peers    map[spiffeid.ID]*peerUse // connections and handlers by peer identity
	shutdown bool                     // Shutdown began: connections are told to go away
	closed   bool                     // Shutdown ended: connections are refused
	wg       sync.WaitGroup           // connections and handlers
}

// ServerOptions tune a Server; the zero value is the defaults.
type ServerOptions struct {
	Logger       *slog.Logger
	StreamWindow int32 // default DefaultStreamWindow
	ConnWindow   int32 // default DefaultConnWindow
	Limits       Limits
	// OnLimit, if set, is called each time a limit refuses a connection
	// or a stream or ends a connection (one of the Limit names), for a
	// metric. It must not block.
	OnLimit func(limit string)
}

// NewServer returns a server calling h for each stream.
func NewServer(h Handler, opts ServerOptions) (*Server, error) {
	if h == nil {
		return nil, errors.New("hbone: nil handler")
	}
	limits, err := opts.Limits.withDefaults()
	if err != nil {
		return nil, err
	}
	s := &Server{
		handler:      h,
		log:          opts.Logger,
		streamWindow: opts.StreamWindow,
		connWindow:   opts.ConnWindow,
		limits:       limits,
		onLimit:      opts.OnLimit,
		conns:        make(map[*conn]struct{}),
		peers:        make(map[spiffeid.ID]*peerUse),
	}
	if s.log == nil {
		s.log = slog.Default()
	}
	s.limitLog.log = s.log
	if s.streamWindow <= 0 {
		s.streamWindow = DefaultStreamWindow
	}
	if s.connWindow <= 0 {
		s.connWindow = DefaultConnWindow
	}
	return s, nil
}

// limitHit reports a limit that refused something of peer's (zero before
// the handshake).
func (s *Server) limitHit(limit string, peer spiffeid.ID, addr net.Addr) {
	if s.onLimit != nil {
		s.onLimit(limit)
	}
	s.limitLog.hit(limit, peer, addr.String())
}

// ServeConn completes the TLS handshake on tc (which must come from
// tls.Server with a config from identity.ServerTLS) and serves its streams
// until the connection ends or ctx is cancelled. A tls.Server over a socket
// wrapped by BatchWrites sends each flush in one write.
//
// A connection accepted before Shutdown but still opening when it began is
// served like the others (told to go away at once, its first streams
// taken): a restarting ztunnel must not refuse what its listener accepted.
func (s *Server) ServeConn(ctx context.Context, tc *tls.Conn) error {
	if err := s.beginOpening(); err != nil {
		if errors.Is(err, errHandshakes) {
			s.limitHit(LimitHandshakes, spiffeid.ID{}, tc.RemoteAddr())
		}
		tc.Close()
		return err
	}
	c, peer, err := s.open(ctx, tc)
	if err != nil {
		s.endOpening(nil, peer)
		tc.Close()
		return err
	}
	if limit, err := s.endOpening(c, peer); err != nil {
		if limit == "" {
			tc.Close()
			return err
		}
		// Refused for a limit: the peer learns why from a GOAWAY.
		s.limitHit(limit, peer, tc.RemoteAddr())
		c.abort(&abortRequest{code: http2.ErrCodeEnhanceYourCalm, err: err, refused: true})
		return err
	}
	defer s.untrack(c, peer)

	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
	c.mu.Lock()
	c.idleTimeout = s.limits.IdleTimeout
	c.idle = time.AfterFunc(s.limits.FirstStreamTimeout, c.idleExpired)
	c.mu.Unlock()
	c.onLimit = func(limit string) { s.limitHit(limit, peer, tc.RemoteAddr()) }
	c.readLoop(func(f *http2.MetaHeadersFrame) error { return s.newStream(ctx, c, f, peer) })
	return nil
}

// open runs the TLS handshake and the HTTP/2 preface.
func (s *Server) open(ctx context.Context, tc *tls.Conn) (*conn, spiffeid.ID, error) {
	timeout := s.limits.HandshakeTimeout
	hctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if err := tc.HandshakeContext(hctx); err != nil {
		return nil, spiffeid.ID{}, fmt.Errorf("hbone: tls handshake with %s: %w", tc.RemoteAddr(), err)
	}
	cs := tc.ConnectionState()
	if cs.NegotiatedProtocol != identity.ALPNH2 {
		return nil, spiffeid.ID{}, fmt.Errorf("hbone: client %s did not negotiate ALPN h2", tc.RemoteAddr())
	}
	peer, err := identity.PeerID(cs)
	if err != nil {
		return nil, spiffeid.ID{}, fmt.Errorf("hbone: client %s: %w", tc.RemoteAddr(), err)
	}
	c := newConn(tc, false, s.streamWindow, s.connWindow)
	c.maxStreams = uint32(s.limits.MaxStreamsPerConn)
	// What is left of the handshake's time bounds the preface.
	dl, _ := hctx.Deadline()
	tc.SetDeadline(dl)
	if err := c.writePreface(); err != nil {
		return nil, spiffeid.ID{}, fmt.Errorf("hbone: write settings: %w", err)
	}
	if err := c.readPreface(); err != nil {
		return nil, spiffeid.ID{}, fmt.Errorf("hbone: %s: %w", tc.RemoteAddr(), err)
	}
	tc.SetDeadline(time.Time{})
	return c, peer, nil
}

var errHandshakes = errors.New("hbone: too many connections in their handshake")

// beginOpening counts a connection in its handshake, so that Shutdown
// waits for it; an error once Shutdown has ended or too many are opening.
func (s *Server) beginOpening() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return errors.New("hbone: server is shut down")
	}
	if s.opening >= s.limits.MaxHandshakes {
		return errHandshakes
	}
	s.opening++
	return nil
}

// endOpening ends the count and tracks c (if opened) as peer's. It fails
// once Shutdown has ended, or with the name of the limit c would exceed.
func (s *Server) endOpening(c *conn, peer spiffeid.ID) (limit string, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.opening--
	if c == nil {
		return "", nil
	}
	if s.closed {
		return "", errors.New("hbone: server is shut down")
	}
	pu := s.peers[peer]
	switch {
	case len(s.conns) >= s.limits.MaxConns:
		return LimitConns, &errCalm{limit: LimitConns, reason: fmt.Sprintf("server has %d connections", len(s.conns))}
	case pu != nil && pu.conns >= s.limits.MaxConnsPerPeer:
		return LimitConnsPerPeer, &errCalm{limit: LimitConnsPerPeer, reason: fmt.Sprintf("%s has %d connections", peer, pu.conns)}
	}
	if pu == nil {
		pu = &peerUse{}
		s.peers[peer] = pu
	}
	pu.conns++
	s.conns[c] = struct{}{}
	s.wg.Add(1)
	return "", nil
}

func (s *Server) untrack(c *conn, peer spiffeid.ID) {
	s.mu.Lock()
	delete(s.conns, c)
	if pu := s.peers[peer]; pu != nil {
		pu.conns--
		s.forgetPeerLocked(peer, pu)
	}
	s.mu.Unlock()
	s.wg.Done()
}

func (s *Server) forgetPeerLocked(peer spiffeid.ID, pu *peerUse) {
	if pu.conns <= 0 && pu.streams <= 0 {
		delete(s.peers, peer)
	}
}

// acquireStream takes a handler slot of the server and of peer, or names
// the limit that refuses it.
func (s *Server) acquireStream(peer spiffeid.ID) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	pu := s.peers[peer]
	if pu == nil {
		pu = &peerUse{}
		s.peers[peer] = pu
	}
	switch {
	case s.streams >= s.limits.MaxStreams:
		return LimitStreams
	case pu.streams >= s.limits.MaxStreamsPerPeer:
		return LimitStreamsPerPeer
	}
	s.streams++
	pu.streams++
	return ""
}

// releaseStream gives back what newStream took for a handler.
func (s *Server) releaseStream(c *conn, peer spiffeid.ID) {
	s.mu.Lock()
	s.streams--
	if pu := s.peers[peer]; pu != nil {
		pu.streams--
		s.forgetPeerLocked(peer, pu)
	}
	s.mu.Unlock()
	c.releaseHandler()
}

// takeHandler takes one of c's handler slots, counting a refusal against
// the peer if there is none.
func (c *conn) takeHandler() (ok bool, streak int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.handlers >= int(c.maxStreams) {
		c.refusedStreak++
		return false, c.refusedStreak
	}
	c.handlers++
	if c.handlers == 1 && c.idle != nil {
		c.idle.Stop()
	}
	return true, 0
}

// releaseHandler gives a handler slot back; the last one starts the idle
// timer.
func (c *conn) releaseHandler() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.handlers--
	if c.handlers == 0 && c.idle != nil && c.err == nil {
		c.idle.Reset(c.idleTimeout)
	}
}

// newStream runs on the read loop: it must not block.
//
// Each stream takes a handler slot of its connection, of the server and of
// its peer until its handler returns, also after the peer reset it: the
// handler's context is cancelled then, but a handler that takes time to
// notice must not let the peer open streams beyond the limits (the rapid
// reset attack). A peer that keeps opening streams beyond its
// connection's limit, which it knows from SETTINGS, is cut off.
func (s *Server) newStream(ctx context.Context, c *conn, f *http2.MetaHeadersFrame, peer spiffeid.ID) error {
	id := f.StreamID
	c.mu.Lock()
	if id%2 == 0 || id <= c.lastID {
		c.mu.Unlock()
		return http2.ConnectionError(http2.ErrCodeProtocol)
	}
	c.lastID = id
	goingAway := c.goingAway && id > c.takeUpTo
	c.mu.Unlock()
	refuse := func() {
		c.queueCtrl(ctrlFrame{kind: ctrlRST, stream: id, val: uint32(http2.ErrCodeRefusedStream)})
	}
	if goingAway {
		refuse()
		return nil
	}
	if ok, streak := c.takeHandler(); !ok {
		s.limitHit(LimitStreamsPerConn, peer, c.nc.RemoteAddr())
		refuse()
		if streak > int(c.maxStreams) {
			return &errCalm{limit: LimitStreamsPerConn, reason: fmt.Sprintf("%d streams in a row beyond SETTINGS_MAX_CONCURRENT_STREAMS", streak)}
		}
		return nil
	}
	if limit := s.acquireStream(peer); limit != "" {
		c.releaseHandler()
		s.limitHit(limit, peer, c.nc.RemoteAddr())
		refuse()
		return nil
	}
	c.mu.Lock()
	c.refusedStreak = 0
	c.mu.Unlock()

	req, err := parseRequest(f.Fields)
	if err != nil {
		var re *RequestError
		status := 400
		if errors.As(err, &re) {
			status = re.Status
		}
		s.log.Info("hbone request rejected", "src.addr", c.nc.RemoteAddr().String(), "src.identity", peer.String(), "status", status, "reason", err.Error())
		endStream := f.StreamEnded()
		// Writing may block on the socket; the read loop must not. The
		// answer holds its handler slot, so a peer that does not read
		// cannot pile these up either.
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			defer s.releaseStream(c, peer)
			c.writeHeaders(id, true, statusFields(status, err.Error()))
			if !endStream {
				c.queueCtrl(ctrlFrame{kind: ctrlRST, stream: id, val: uint32(http2.ErrCodeNo)})
			}
		}()
		return nil
	}
	req.Peer = peer
	req.RemoteAddr = c.nc.RemoteAddr()

	hctx, cancel := context.WithCancel(ctx)
	st := newStream(c, id)
	st.cancel = cancel
	st.remoteEnded = f.StreamEnded()
	c.mu.Lock()
	c.streams[id] = st
	c.mu.Unlock()

	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		defer s.releaseStream(c, peer)
		defer cancel()
		defer st.Close()
		defer func() {
			st.c.mu.Lock()
			answered := st.status != 0
			st.c.mu.Unlock()
			if !answered {
				st.Respond(503)
			}
		}()
		s.handler(hctx, req, st)
	}()
	return nil
}

// Respond answers a server stream's CONNECT: 200 opens the tunnel; any other
// status refuses it and ends the stream. Only the first call counts.
func (s *Stream) Respond(status int) error {
	return s.respond(status, "")
}

// RespondError refuses a stream with a status and a short reason carried in
// a response header, for the client's logs.
func (s *Stream) RespondError(status int, reason string) error {
	if status == 200 {
		return errors.New("hbone: RespondError with status 200")
	}
	return s.respond(status, reason)
}

func (s *Stream) respond(status int, reason string) error {
	if s.c.client {
		return errors.New("hbone: Respond on a client stream")
	}
	if status < 200 || status > 999 {
		return fmt.Errorf("hbone: invalid status %d", status)
	}
	s.wmu.Lock()
	defer s.wmu.Unlock()
	c := s.c
	c.mu.Lock()
	if s.status != 0 {
		c.mu.Unlock()
		return errors.New("hbone: stream already answered")
	}
	if s.err != nil {
		err := s.err
		c.mu.Unlock()
		return err
	}
	s.status = status
	end := status != 200
	var ended bool
	if end {
		s.localEnded = true
		ended = s.maybeFinishLocked()
	}
	c.mu.Unlock()
	err := c.writeHeaders(s.id, end, statusFields(status, reason))
	if ended {
		c.streamClosed()
	}
	return err
}

func statusFields(status int, reason string) []hpack.HeaderField {
	f := []hpack.HeaderField{{Name: ":status", Value: strconv.Itoa(status)}}
	if reason != "" {
		f = append(f, hpack.HeaderField{Name: ReasonHeader, Value: sanitizeHeaderValue(reason)})
	}
	return f
}

// ReasonHeader carries a refusal's reason in a response, for logs.
const ReasonHeader = "zmesh-reason"

func sanitizeHeaderValue(s string) string {
	b := []byte(s)
	for i, c := range b {
		if c < 0x20 || c == 0x7f {
			b[i] = ' '
		}
	}
	if len(b) > 256 {
		b = b[:256]
	}
	return string(b)
}

// Shutdown drains the server: every connection, including those still
// opening, is told to go away gracefully (clients open no new streams, and
// the streams they sent before noticing are served); Shutdown returns once
// no connection has a stream left, or when ctx ends, closing what is left.
// Connections arriving after that are refused.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.shutdown = true
	s.mu.Unlock()
	settled := map[*conn]<-chan struct{}{}
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	var err error
	for {
		s.mu.Lock()
		busy := s.opening > 0
		conns := make([]*conn, 0, len(s.conns))
		for c := range s.conns {
			conns = append(conns, c)
		}
		s.mu.Unlock()
		for _, c := range conns {
			ack, ok := settled[c]
			if !ok {
				ack = c.goAwayGraceful()
				settled[c] = ack
			}
			select {
			case <-ack:
				busy = busy || c.numStreams() > 0
			case <-c.done:
			default:
				busy = true // streams sent before our GOAWAY may be on their way
			}
		}
		if !busy {
			break
		}
		select {
		case <-ctx.Done():
			err = ctx.Err()
		case <-tick.C:
			continue
		}
		break
	}
	s.mu.Lock()
	s.closed = true
	conns := make([]*conn, 0, len(s.conns))
	for c := range s.conns {
		conns = append(conns, c)
	}
	s.mu.Unlock()
	for _, c := range conns {
		c.Close()
	}
	s.wg.Wait()
	return err
}
