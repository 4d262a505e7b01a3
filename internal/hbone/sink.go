package hbone

import (
	"net"
	"syscall"

	"golang.org/x/sys/unix"
)

// A stream joined to a plain TCP socket (the app's connection, or the
// pod's captured one) has that socket as its sink, and no goroutine of
// its own for that direction. The read loop writes received DATA straight
// into the socket with one non-blocking write. Only what the socket does
// not take at once waits in the stream's buffer, and only then does a
// drain goroutine start, write the buffer out with blocking writes, and
// exit once it is empty. The end of the direction (END_STREAM, a reset, a
// failed write) is carried to the socket by a drain goroutine too. An
// idle joined stream therefore costs no goroutine, and a request that fits
// the socket costs no goroutine hand-off: the read loop never blocks on a
// sink.
//
// Order is kept by one rule: only one party writes to the sink at a time
// (sinkBusy), and the read loop writes directly only while the buffer is
// empty, so nothing it writes can overtake bytes that came earlier.

// sinkEnd is how a stream's sink direction ended: the bytes that reached
// the socket, whoever wrote them, and the error (nil after the peer's
// END_STREAM). done is closed once both are set.
type sinkEnd struct {
	done chan struct{}
	n    int64
	err  error
}

// attachSink makes dst the stream's sink until the peer's END_STREAM or a
// failure. Then dst's sending direction is shut (after END_STREAM), or
// dst and the stream are closed (after a failure), and the returned
// sinkEnd is done. dst is not otherwise closed. The stream's read
// deadline does not apply; closing either side ends it.
func (s *Stream) attachSink(dst *net.TCPConn) (*sinkEnd, error) {
	end := &sinkEnd{done: make(chan struct{})}
	return end, s.attachSinkEnd(dst, end)
}

// attachSinkEnd attaches dst with end: a new one, or the end of the
// joined stream this one retries.
func (s *Stream) attachSinkEnd(dst *net.TCPConn, end *sinkEnd) error {
	rc, err := dst.SyscallConn()
	if err != nil {
		return err
	}
	c := s.c
	c.mu.Lock()
	s.sink, s.sinkConn, s.sinkEnd = newSinkWriter(rc), dst, end
	if s.rbuf.len() > 0 && s.err == nil {
		s.writeBufferedLocked()
	}
	s.kickSinkLocked() // data or the end may be here already
	c.mu.Unlock()
	return nil
}

// writeBufferedLocked writes what arrived before the sink was attached
// (a client that sends without waiting for the 200) with one non-blocking
// write, as the read loop delivers: a fresh socket takes a first request
// whole, so no drain goroutine starts for it. What the socket does not
// take stays buffered for the drain. The bytes are copied out under c.mu
// and dropped from the buffer only once written, and only if the buffer
// was not released meanwhile (Close). c.mu held; released around the
// write.
func (s *Stream) writeBufferedLocked() {
	c := s.c
	bp := getCopyBuf()
	n := s.rbuf.peek(*bp)
	s.sinkBusy = true
	sink := s.sink
	c.mu.Unlock()
	m, _ := sink.writeNow((*bp)[:n]) // a failure is met again by drain's own write
	putCopyBuf(bp)
	c.mu.Lock()
	s.sinkBusy = false
	s.cond.Broadcast()
	s.sunk += int64(m)
	if m > 0 && s.rbuf.len() >= m {
		s.rbuf.discard(m)
		c.addRecvCreditLocked(s, int32(m))
	}
}

// peek copies the buffer's first bytes into p without taking them.
func (b *recvBuf) peek(p []byte) int {
	total, r := 0, b.r
	for _, chunk := range b.chunks {
		if len(p) == 0 {
			break
		}
		m := copy(p, chunk[r:])
		total += m
		p = p[m:]
		r = 0
	}
	return total
}

// discard drops the buffer's first n bytes (at most len()), returning
// emptied chunks to the pool.
func (b *recvBuf) discard(n int) {
	b.n -= n
	for n > 0 {
		first := b.chunks[0]
		m := min(n, len(first)-b.r)
		b.r += m
		n -= m
		if b.r < len(first) {
			return
		}
		putBuf(first)
		b.chunks[0] = nil
		b.chunks = b.chunks[1:]
		b.r = 0
	}
}

// kickSinkLocked starts a drain goroutine when the sink has work the read
// loop cannot do without blocking: buffered data, or a failure to carry
// over. The peer's END_STREAM with nothing left to write is carried here,
// by whoever holds c.mu: shutting the socket's sending direction does not
// block, and a goroutine for it was one per stream and direction that
// ends cleanly, which is every short connection. c.mu held.
func (s *Stream) kickSinkLocked() {
	if s.sink == nil || s.draining || s.sinkBusy {
		return
	}
	switch {
	case s.rbuf.len() == 0 && s.remoteEnded && s.err == nil:
		s.endSinkLocked()
	case s.rbuf.len() > 0 || s.remoteEnded || s.err != nil:
		s.draining = true
		if testHookDrain != nil {
			testHookDrain()
		}
		go s.drain()
	}
}

// testHookDrain, when set by a test, sees each drain goroutine started.
var testHookDrain func()

// endSinkLocked detaches the sink after the peer's END_STREAM, once all
// its data reached the socket, and shuts the socket's sending direction:
// the TCP form of END_STREAM. c.mu held, and kept.
func (s *Stream) endSinkLocked() {
	dst, end := s.sinkConn, s.sinkEnd
	s.sink, s.sinkConn, s.sinkEnd = nil, nil, nil
	end.n, s.sunk = end.n+s.sunk, 0
	end.err = dst.CloseWrite()
	close(end.done)
}

// drain writes the buffer to the sink with blocking writes, and carries
// the end over once the buffer is empty. It exits as soon as there is
// nothing to do, leaving the socket to the read loop again.
func (s *Stream) drain() {
	c := s.c
	c.mu.Lock()
	for {
		for s.sinkBusy { // the read loop is writing directly
			s.cond.Wait()
		}
		if s.rbuf.len() == 0 {
			if !s.remoteEnded && s.err == nil {
				s.draining = false
				c.mu.Unlock()
				return
			}
			s.finishSinkLocked(s.err) // unlocks
			return
		}
		bp := getCopyBuf()
		n := s.rbuf.read(*bp)
		s.sinkBusy = true
		dst := s.sinkConn
		c.mu.Unlock()

		m, werr := dst.Write((*bp)[:n])
		putCopyBuf(bp)
		c.mu.Lock()
		s.sinkBusy = false
		s.sunk += int64(m)
		// The bytes are credited back once the socket took them, not
		// when they left the buffer: until then they are still ours to
		// hold, and the window must count them, so that a stream whose
		// app does not read holds at most its window, copy included.
		// A stream closed meanwhile (or failing now) returns them to the
		// connection alone.
		if s.err != nil || werr != nil {
			c.addRecvCreditLocked(nil, int32(n))
		} else {
			c.addRecvCreditLocked(s, int32(n))
		}
		if werr != nil {
			s.finishSinkLocked(werr) // unlocks
			c.tryFlushCtrl()
			return
		}
		c.mu.Unlock()
		c.tryFlushCtrl()
		c.mu.Lock()
	}
}

// finishSinkLocked ends the sink direction with err (nil: the peer's
// END_STREAM) and releases c.mu. On a failure the socket and the stream
// are closed, so the other direction stops too, and the socket is reset
// if the stream was joined and never answered 200; a joined stream
// refused unprocessed hands the socket to its retry instead. Otherwise
// the socket's sending direction is shut, the TCP form of END_STREAM.
func (s *Stream) finishSinkLocked(err error) {
	c := s.c
	dst, end := s.sinkConn, s.sinkEnd
	s.sink, s.sinkConn, s.sinkEnd = nil, nil, nil
	s.draining = false
	end.n, s.sunk = end.n+s.sunk, 0
	c.mu.Unlock()
	if err != nil {
		if next := s.retried(); next != nil {
			if next.attachSinkEnd(dst, end) == nil {
				return
			}
			next.Close()
		}
		closeSocket(s, dst)
		s.Close()
	} else {
		err = dst.CloseWrite()
	}
	end.err = err
	close(end.done)
}

// closeSocket closes tcp, the socket joined to s: with a reset if s was
// refused, so that its app cannot take the refusal for an empty answer.
func closeSocket(s *Stream, tcp *net.TCPConn) {
	if s.refused() {
		tcp.SetLinger(0)
	}
	tcp.Close()
}

// deliverLocked hands received data to the stream: straight to its sink
// when it has one that is free and nothing is buffered before it, the
// rest (or all) to the buffer. It reports whether anything was buffered.
// c.mu held; it is released around the socket write.
func (s *Stream) deliverLocked(data []byte) (buffered bool) {
	c := s.c
	if s.sink != nil && !s.sinkBusy && s.rbuf.len() == 0 && s.err == nil {
		sink := s.sink
		s.sinkBusy = true
		c.mu.Unlock()
		n, _ := sink.writeNow(data) // a failure is met again by drain's own write
		if testHookDirect != nil {
			testHookDirect(n, len(data)-n)
		}
		c.mu.Lock()
		s.sinkBusy = false
		s.sunk += int64(n)
		data = data[n:]
		if s.err != nil {
			// Closed meanwhile: the rest is not wanted, but it still
			// counts against the connection window.
			c.addRecvCreditLocked(nil, int32(n+len(data)))
			return true // wake a drain waiting on sinkBusy
		}
		c.addRecvCreditLocked(s, int32(n))
		if len(data) == 0 {
			return false
		}
	}
	s.rbuf.write(data)
	return true
}

// testHookDirect, when set by a test, sees each direct delivery: bytes
// the socket took and bytes left for the buffer.
var testHookDirect func(direct, left int)

// sinkWriter writes to a sink socket without waiting for room. Its
// callback is made once per sink, not per write: a closure handed to
// RawConn.Write escapes, and with it everything it captures, which was
// seven allocations per request through two ztunnels. Only the holder of
// the stream's sinkBusy uses it.
type sinkWriter struct {
	rc  syscall.RawConn
	p   []byte
	n   int
	err error
	fn  func(fd uintptr) bool
}

func newSinkWriter(rc syscall.RawConn) *sinkWriter {
	w := &sinkWriter{rc: rc}
	w.fn = w.write
	return w
}

// writeNow writes what the socket takes of p at once.
func (w *sinkWriter) writeNow(p []byte) (int, error) {
	w.p, w.n, w.err = p, 0, nil
	cerr := w.rc.Write(w.fn)
	n, err := w.n, w.err
	w.p = nil
	if err == nil {
		err = cerr
	}
	return n, err
}

func (w *sinkWriter) write(fd uintptr) bool {
	for len(w.p) > 0 {
		m, err := unix.Write(int(fd), w.p)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			if err != unix.EAGAIN {
				w.err = err
			}
			break
		}
		w.n += m
		w.p = w.p[m:]
	}
	return true // never wait: drain does that
}
