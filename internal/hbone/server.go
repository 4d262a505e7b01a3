package hbone

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
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

	mu       sync.Mutex
	conns    map[*conn]struct{}
	opening  int            // connections still in their TLS handshake or preface
	shutdown bool           // Shutdown began: connections are told to go away
	closed   bool           // Shutdown ended: connections are refused
	wg       sync.WaitGroup // connections and handlers
}

// ServerOptions tune a Server; the zero value is the defaults.
type ServerOptions struct {
	Logger       *slog.Logger
	StreamWindow int32 // default DefaultStreamWindow
	ConnWindow   int32 // default DefaultConnWindow
}

// NewServer returns a server calling h for each stream.
func NewServer(h Handler, opts ServerOptions) (*Server, error) {
	if h == nil {
		return nil, errors.New("hbone: nil handler")
	}
	s := &Server{
		handler:      h,
		log:          opts.Logger,
		streamWindow: opts.StreamWindow,
		connWindow:   opts.ConnWindow,
		conns:        make(map[*conn]struct{}),
	}
	if s.log == nil {
		s.log = slog.Default()
	}
	if s.streamWindow <= 0 {
		s.streamWindow = DefaultStreamWindow
	}
	if s.connWindow <= 0 {
		s.connWindow = DefaultConnWindow
	}
	return s, nil
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
	if !s.beginOpening() {
		tc.Close()
		return errors.New("hbone: server is shut down")
	}
	c, peer, err := s.open(ctx, tc)
	if err != nil {
		s.endOpening(nil)
		tc.Close()
		return err
	}
	if !s.endOpening(c) {
		tc.Close()
		return errors.New("hbone: server is shut down")
	}
	defer s.untrack(c)

	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
	c.readLoop(func(f *http2.MetaHeadersFrame) error { return s.newStream(ctx, c, f, peer) })
	return nil
}

// open runs the TLS handshake and the HTTP/2 preface.
func (s *Server) open(ctx context.Context, tc *tls.Conn) (*conn, spiffeid.ID, error) {
	hctx, cancel := context.WithTimeout(ctx, handshakeTimeout)
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
	tc.SetDeadline(time.Now().Add(handshakeTimeout))
	if err := c.writePreface(); err != nil {
		return nil, spiffeid.ID{}, fmt.Errorf("hbone: write settings: %w", err)
	}
	if err := c.readPreface(); err != nil {
		return nil, spiffeid.ID{}, fmt.Errorf("hbone: %s: %w", tc.RemoteAddr(), err)
	}
	tc.SetDeadline(time.Time{})
	return c, peer, nil
}

// beginOpening counts a connection in its handshake, so that Shutdown
// waits for it; false once Shutdown has ended.
func (s *Server) beginOpening() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	s.opening++
	return true
}

// endOpening ends the count and tracks c (if opened); false once Shutdown
// has ended.
func (s *Server) endOpening(c *conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.opening--
	if c == nil || s.closed {
		return false
	}
	s.conns[c] = struct{}{}
	s.wg.Add(1)
	return true
}

func (s *Server) untrack(c *conn) {
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
	s.wg.Done()
}

// newStream runs on the read loop: it must not block.
func (s *Server) newStream(ctx context.Context, c *conn, f *http2.MetaHeadersFrame, peer spiffeid.ID) error {
	id := f.StreamID
	c.mu.Lock()
	if id%2 == 0 || id <= c.lastID {
		c.mu.Unlock()
		return http2.ConnectionError(http2.ErrCodeProtocol)
	}
	c.lastID = id
	refuse := (c.goingAway && id > c.takeUpTo) || len(c.streams) >= serverMaxConcurrentStreams
	c.mu.Unlock()
	if refuse {
		c.queueCtrl(ctrlFrame{kind: ctrlRST, stream: id, val: uint32(http2.ErrCodeRefusedStream)})
		return nil
	}

	req, err := parseRequest(f.Fields)
	if err != nil {
		var re *RequestError
		status := 400
		if errors.As(err, &re) {
			status = re.Status
		}
		s.log.Info("hbone request rejected", "src.addr", c.nc.RemoteAddr().String(), "src.identity", peer.String(), "status", status, "reason", err.Error())
		endStream := f.StreamEnded()
		// Writing may block on the socket; the read loop must not.
		go func() {
			c.writeHeaders(id, true, statusFields(status, err.Error()))
			if !endStream {
				c.queueCtrl(ctrlFrame{kind: ctrlRST, stream: id, val: uint32(http2.ErrCodeNo)})
			}
		}()
		return nil
	}
	req.Peer = peer
	req.RemoteAddr = c.nc.RemoteAddr()

	st := newStream(c, id)
	st.remoteEnded = f.StreamEnded()
	c.mu.Lock()
	c.streams[id] = st
	c.mu.Unlock()

	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		defer st.Close()
		defer func() {
			st.c.mu.Lock()
			answered := st.status != 0
			st.c.mu.Unlock()
			if !answered {
				st.Respond(503)
			}
		}()
		s.handler(ctx, req, st)
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
