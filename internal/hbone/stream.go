package hbone

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"sync"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// ResetError is returned by a stream the peer reset with RST_STREAM.
type ResetError struct{ Code http2.ErrCode }

func (e *ResetError) Error() string { return "hbone: stream reset by peer: " + e.Code.String() }

// errStreamClosed is returned by operations on a stream closed locally.
var errStreamClosed = errors.New("hbone: stream closed")

// Stream is one CONNECT tunnel. It is a net.Conn whose two directions end
// separately: CloseWrite sends END_STREAM (the TCP FIN of the tunnelled
// connection), and Read returns io.EOF once the peer's END_STREAM arrived.
// Close abandons whatever is left with RST_STREAM.
//
// Read and Write may be called concurrently with each other, not with
// themselves.
type Stream struct {
	c    *conn
	id   uint32
	cond sync.Cond // L = &c.mu

	// Guarded by c.mu.
	rbuf        recvBuf
	recvWindow  int32 // what the peer may still send us
	recvUnacked int32 // consumed, not yet returned by WINDOW_UPDATE
	sendWindow  int64 // what we may still send
	localEnded  bool  // we sent END_STREAM
	remoteEnded bool  // the peer sent END_STREAM
	removed     bool  // no longer in c.streams
	err         error // reset or connection failure
	// status is the response status: set by Respond on a server stream,
	// by the response HEADERS on a client stream (0 until then).
	status   int
	respHdr  []hpack.HeaderField
	rdl, wdl time.Time
	rtimer   *time.Timer
	wtimer   *time.Timer
	// sink, while the stream is joined to a TCP socket (sinkConn), is
	// where received data goes (sink.go); sinkBusy while someone writes
	// to it; draining while a drain goroutine runs; sunk counts what
	// reached it; sinkEnd learns how the direction ended.
	sink     *sinkWriter
	sinkConn *net.TCPConn
	sinkEnd  *sinkEnd
	sinkBusy bool
	draining bool
	sunk     int64

	// cancel, on a server stream, cancels its handler's context: when the
	// peer resets the stream or the connection fails.
	cancel context.CancelFunc

	// join is set on a client stream opened with ConnectRequest.Join;
	// awaiting while such a stream has no answer yet.
	join     *joinState
	awaiting bool

	// wmu keeps one Write's frames, and CloseWrite, in order.
	wmu sync.Mutex

	closeOnce sync.Once
}

func newStream(c *conn, id uint32) *Stream {
	s := &Stream{
		c:          c,
		id:         id,
		recvWindow: c.streamWindow,
		sendWindow: int64(c.peerInitialWindow),
	}
	s.cond.L = &c.mu
	return s
}

// ID returns the HTTP/2 stream id.
func (s *Stream) ID() uint32 { return s.id }

// Read reads tunnelled bytes. It returns io.EOF after the peer's END_STREAM.
func (s *Stream) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	c := s.c
	c.mu.Lock()
	for s.rbuf.len() == 0 && !s.remoteEnded && s.err == nil {
		if !s.rdl.IsZero() && !time.Now().Before(s.rdl) {
			c.mu.Unlock()
			return 0, os.ErrDeadlineExceeded
		}
		s.cond.Wait()
	}
	if s.rbuf.len() > 0 {
		n := s.rbuf.read(p)
		c.addRecvCreditLocked(s, int32(n))
		c.mu.Unlock()
		c.tryFlushCtrl()
		return n, nil
	}
	err := s.err
	c.mu.Unlock()
	if err != nil {
		return 0, err
	}
	return 0, io.EOF
}

// Write sends bytes through the tunnel, blocking on flow control.
func (s *Stream) Write(p []byte) (int, error) {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	c := s.c
	written := 0
	dirty := false // frames sit unflushed in the write buffer
	for len(p) > 0 {
		n, err := s.awaitCredit(len(p), dirty)
		if err != nil {
			if dirty {
				c.lockWrite()
				c.unlockWrite()
			}
			return written, err
		}
		dirty = false
		c.lockWrite()
		if err := c.writeDataLocked(s.id, p[:n]); err != nil {
			c.wmu.Unlock()
			c.fail(err)
			return written, err
		}
		written += n
		p = p[n:]
		if len(p) == 0 {
			if err := c.unlockWrite(); err != nil {
				return written, err
			}
			break
		}
		if err := c.writeCtrlLocked(); err != nil {
			c.wmu.Unlock()
			c.fail(err)
			return written, err
		}
		c.wmu.Unlock()
		dirty = true
	}
	return written, nil
}

// awaitCredit takes up to want bytes of send credit, waiting for window
// updates if there is none. Before waiting it flushes what this writer left
// in the buffer: the peer cannot grant credit for bytes it never received.
func (s *Stream) awaitCredit(want int, dirty bool) (int, error) {
	c := s.c
	c.mu.Lock()
	for {
		if err := s.writeErrLocked(); err != nil {
			c.mu.Unlock()
			return 0, err
		}
		if s.sendWindow > 0 && c.sendWindow > 0 {
			if s.awaiting && !s.join.early {
				// Bytes beyond the early data leave before the answer:
				// a retry could not send them again.
				s.join.spent = true
			}
			n := min(int64(want), s.sendWindow, c.sendWindow, int64(c.peerMaxFrame), maxWriteFrameSize)
			s.sendWindow -= n
			c.sendWindow -= n
			c.mu.Unlock()
			return int(n), nil
		}
		if dirty {
			c.mu.Unlock()
			c.lockWrite()
			if err := c.unlockWrite(); err != nil {
				return 0, err
			}
			dirty = false
			c.mu.Lock()
			continue
		}
		if !s.wdl.IsZero() && !time.Now().Before(s.wdl) {
			c.mu.Unlock()
			return 0, os.ErrDeadlineExceeded
		}
		s.cond.Wait()
	}
}

// sendable waits until Write has send credit, and returns how much of max
// it could send without waiting; max if Write would fail at once (it
// says why). It takes no credit: the caller's Write does. Another stream
// may take the connection's credit meanwhile, and then that Write waits.
func (s *Stream) sendable(max int) int {
	c := s.c
	c.mu.Lock()
	defer c.mu.Unlock()
	for {
		switch {
		case s.writeErrLocked() != nil:
			return max
		case s.sendWindow > 0 && c.sendWindow > 0:
			return int(min(int64(max), s.sendWindow, c.sendWindow))
		case !s.wdl.IsZero() && !time.Now().Before(s.wdl):
			return max
		}
		s.cond.Wait()
	}
}

func (s *Stream) writeErrLocked() error {
	switch {
	case s.err != nil:
		return s.err
	case s.localEnded:
		return errors.New("hbone: write after CloseWrite")
	case s.c.err != nil:
		return s.c.err
	}
	return nil
}

// CloseWrite ends our direction of the tunnel with END_STREAM, the HTTP/2
// form of a TCP FIN. Reading goes on until the peer ends its direction.
func (s *Stream) CloseWrite() error {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	c := s.c
	c.mu.Lock()
	if err := s.writeErrLocked(); err != nil {
		c.mu.Unlock()
		if s.localEnded {
			return nil
		}
		return err
	}
	s.localEnded = true
	ended := s.maybeFinishLocked()
	c.mu.Unlock()
	c.lockWrite()
	if err := c.fr.WriteData(s.id, true, nil); err != nil {
		c.wmu.Unlock()
		c.fail(err)
		return err
	}
	err := c.unlockWrite()
	if ended {
		c.streamClosed()
	}
	return err
}

// Close releases the stream. If either direction is still open it is reset
// with RST_STREAM(CANCEL), so the peer's reads and writes fail at once.
func (s *Stream) Close() error {
	s.closeOnce.Do(func() {
		c := s.c
		c.mu.Lock()
		finished := s.localEnded && s.remoteEnded
		alive := s.err == nil
		if s.err == nil {
			s.err = errStreamClosed
		}
		s.cond.Broadcast()
		s.kickSinkLocked()
		removed := s.removeLocked()
		// Bytes received but never read still count against the
		// connection window: return them, or the connection starves.
		if n := s.rbuf.len(); n > 0 {
			c.addRecvCreditLocked(nil, int32(n))
		}
		s.rbuf.release()
		var next *Stream
		if j := s.join; j != nil {
			if j.timer != nil {
				j.timer.Stop()
			}
			j.closed = true
			next = j.next
		}
		c.mu.Unlock()
		c.tryFlushCtrl()
		if next != nil {
			// The retry carries on the tunnel: the caller holds this one.
			defer next.Close()
		}
		if alive && !finished {
			code := http2.ErrCodeCancel
			if s.localEnded {
				// Our side is complete; the peer's remaining data is
				// simply not wanted (RFC 9113 §8.1).
				code = http2.ErrCodeNo
			}
			c.queueCtrl(ctrlFrame{kind: ctrlRST, stream: s.id, val: uint32(code)})
		}
		if removed {
			c.streamClosed()
		}
	})
	return nil
}

// failLocked fails pending and future operations with err. c.mu held.
func (s *Stream) failLocked(err error) {
	if s.err == nil {
		if s.awaiting {
			err = &NotAnsweredError{Err: err}
			if s.join.timer != nil {
				s.join.timer.Stop()
			}
		}
		s.err = err
	}
	if s.cancel != nil {
		s.cancel()
	}
	s.cond.Broadcast()
	s.kickSinkLocked()
}

// removeLocked takes the stream out of the connection's map and reports
// whether it was still there. c.mu held.
func (s *Stream) removeLocked() bool {
	if s.removed {
		return false
	}
	s.removed = true
	delete(s.c.streams, s.id)
	return true
}

// maybeFinishLocked removes a stream whose both directions ended; any data
// still buffered stays readable. c.mu held.
func (s *Stream) maybeFinishLocked() bool {
	if s.localEnded && s.remoteEnded {
		return s.removeLocked()
	}
	return false
}

// handleHeaders processes HEADERS on an open stream: the response on a
// client stream, trailers otherwise (which only matter for END_STREAM).
func (s *Stream) handleHeaders(f *http2.MetaHeadersFrame) error {
	c := s.c
	c.mu.Lock()
	if c.client && s.status == 0 {
		st, err := strconv.Atoi(f.PseudoValue("status"))
		if err != nil || st < 100 || st > 999 {
			c.mu.Unlock()
			c.resetStream(s.id, http2.ErrCodeProtocol, fmt.Errorf("hbone: bad response :status %q", f.PseudoValue("status")))
			return nil
		}
		if st < 200 {
			c.mu.Unlock() // 1xx: informational, wait for the final one
			return nil
		}
		s.status = st
		if st != 200 {
			// Only a refusal's reason is ever read.
			s.respHdr = append([]hpack.HeaderField(nil), f.RegularFields()...)
		}
		if s.awaiting {
			s.answeredLocked()
			if st != 200 {
				// A refused joined stream fails at once: its reader, its
				// writer and its sink learn the refusal, not an end.
				c.mu.Unlock()
				c.resetStream(s.id, http2.ErrCodeCancel, s.statusError())
				return nil
			}
		}
	} else if !f.StreamEnded() {
		c.mu.Unlock()
		c.resetStream(s.id, http2.ErrCodeProtocol, errors.New("hbone: HEADERS in the middle of a stream"))
		return nil
	}
	if f.StreamEnded() {
		s.remoteEnded = true
		s.kickSinkLocked()
	}
	s.cond.Broadcast()
	ended := s.maybeFinishLocked()
	c.mu.Unlock()
	if ended {
		c.streamClosed()
	}
	return nil
}

// LocalAddr returns the local address of the underlying connection.
func (s *Stream) LocalAddr() net.Addr { return s.c.nc.LocalAddr() }

// RemoteAddr returns the remote address of the underlying connection.
func (s *Stream) RemoteAddr() net.Addr { return s.c.nc.RemoteAddr() }

// SetDeadline sets both deadlines.
func (s *Stream) SetDeadline(t time.Time) error {
	s.SetReadDeadline(t)
	return s.SetWriteDeadline(t)
}

// SetReadDeadline makes a blocked or future Read fail with
// os.ErrDeadlineExceeded after t.
func (s *Stream) SetReadDeadline(t time.Time) error {
	s.c.mu.Lock()
	defer s.c.mu.Unlock()
	s.rdl = t
	s.rtimer = s.armLocked(s.rtimer, t)
	return nil
}

// SetWriteDeadline makes a Write blocked on flow control fail with
// os.ErrDeadlineExceeded after t.
func (s *Stream) SetWriteDeadline(t time.Time) error {
	s.c.mu.Lock()
	defer s.c.mu.Unlock()
	s.wdl = t
	s.wtimer = s.armLocked(s.wtimer, t)
	return nil
}

// armLocked sets tm (nil: none yet) to wake the stream's waiters at t,
// or stops it for a zero t. One timer per direction serves every deadline
// of the stream: an HTTP/1 server sets a few per request. A waiter woken
// early (by a deadline since moved) finds its deadline not passed and
// waits on.
func (s *Stream) armLocked(tm *time.Timer, t time.Time) *time.Timer {
	if t.IsZero() {
		if tm != nil {
			tm.Stop()
		}
		return tm
	}
	s.cond.Broadcast() // a deadline in the past applies now
	if tm == nil {
		return time.AfterFunc(time.Until(t), s.wake)
	}
	tm.Reset(time.Until(t))
	return tm
}

// wake lets the stream's waiters look at their deadlines again.
func (s *Stream) wake() {
	s.c.mu.Lock()
	s.cond.Broadcast()
	s.c.mu.Unlock()
}

// recvBuf holds received DATA until it is read, in pooled fixed-size
// chunks: each byte is copied once in and once out, and a drained chunk goes
// straight back to the pool. Flow control bounds it to the stream window.
type recvBuf struct {
	chunks [][]byte // each a pooled buffer; chunks[0][r:] is unread
	r      int
	n      int // unread bytes
}

func (b *recvBuf) len() int { return b.n }

func (b *recvBuf) write(p []byte) {
	b.n += len(p)
	for len(p) > 0 {
		if k := len(b.chunks); k > 0 {
			last := b.chunks[k-1]
			if room := cap(last) - len(last); room > 0 {
				m := min(room, len(p))
				b.chunks[k-1] = append(last, p[:m]...)
				p = p[m:]
				continue
			}
		}
		b.chunks = append(b.chunks, getBuf())
	}
}

func (b *recvBuf) read(p []byte) int {
	total := 0
	for len(p) > 0 && len(b.chunks) > 0 {
		first := b.chunks[0]
		m := copy(p, first[b.r:])
		total += m
		p = p[m:]
		b.r += m
		if b.r == len(first) {
			if len(b.chunks) == 1 {
				// Keep the last chunk for the next write, emptied.
				b.chunks[0] = first[:0]
				b.r = 0
				if b.n == total {
					putBuf(first)
					b.chunks = b.chunks[:0]
				}
				break
			}
			putBuf(first)
			b.chunks[0] = nil
			b.chunks = b.chunks[1:]
			b.r = 0
		}
	}
	b.n -= total
	return total
}

func (b *recvBuf) release() {
	for _, c := range b.chunks {
		putBuf(c)
	}
	b.chunks, b.r, b.n = nil, 0, 0
}
