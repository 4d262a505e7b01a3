package hbone

import (
	"net"
	"syscall"

	"golang.org/x/sys/unix"
)

// A stream joined to a plain TCP socket (the app's connection, or the
// pod's captured one) has that socket as its sink. Received DATA then goes
// from the read loop straight into the socket with one non-blocking write,
// instead of into the stream's buffer for a copying goroutine to wake up,
// read and write out: one goroutine hand-off less per burst, on each
// ztunnel, in each direction. What the socket does not take at once waits
// in the buffer, and the copying goroutine (pumpTo) writes it with a
// blocking write, as before. The read loop itself never blocks on a sink.
//
// Order is kept by one rule: only one party writes to the sink at a time
// (sinkBusy), and the read loop writes directly only while the buffer is
// empty, so nothing it writes can overtake bytes that came earlier.

// pumpTo copies the stream into dst until the peer's END_STREAM (then it
// returns a nil error) or a failure, letting the read loop deliver
// directly meanwhile. It returns every byte that reached dst, whoever
// wrote it. dst is not closed. The stream's read deadline does not apply
// (Join's streams have none); closing either side ends it.
func (s *Stream) pumpTo(dst *net.TCPConn) (int64, error) {
	rc, err := dst.SyscallConn()
	if err != nil {
		return 0, err
	}
	c := s.c
	c.mu.Lock()
	s.sink = rc
	c.mu.Unlock()
	var total int64
	for {
		c.mu.Lock()
		for s.sinkBusy || (s.rbuf.len() == 0 && !s.remoteEnded && s.err == nil) {
			s.cond.Wait()
		}
		if s.rbuf.len() == 0 {
			// Ended or failed, and everything received is out.
			s.sink = nil
			total += s.sunk
			s.sunk = 0
			err := s.err
			c.mu.Unlock()
			return total, err
		}
		bp := copyBufPool.Get().(*[]byte)
		n := s.rbuf.read(*bp)
		c.addRecvCreditLocked(s, int32(n))
		s.sinkBusy = true
		c.mu.Unlock()
		c.tryFlushCtrl()

		_, werr := dst.Write((*bp)[:n])
		copyBufPool.Put(bp)
		c.mu.Lock()
		s.sinkBusy = false
		if werr != nil {
			s.sink = nil
			total += s.sunk
			s.sunk = 0
			c.mu.Unlock()
			return total, werr
		}
		c.mu.Unlock()
		total += int64(n)
	}
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
		n, _ := writeNow(sink, data) // a failure is met again by pumpTo's own write
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
			return true // wake the pump if it waits on sinkBusy
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

// writeNow writes what the socket takes without waiting for room.
func writeNow(rc syscall.RawConn, p []byte) (int, error) {
	var n int
	var err error
	cerr := rc.Write(func(fd uintptr) bool {
		for len(p) > 0 {
			m, werr := unix.Write(int(fd), p)
			if werr == unix.EINTR {
				continue
			}
			if werr != nil {
				if werr != unix.EAGAIN {
					err = werr
				}
				break
			}
			n += m
			p = p[m:]
		}
		return true // never wait: the pump does that
	})
	if err == nil {
		err = cerr
	}
	return n, err
}
