package hbone

import (
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// closeWriter is a connection whose sending direction can end alone:
// *net.TCPConn, *Stream.
type closeWriter interface {
	CloseWrite() error
}

// copyBufSize is the most one copy moves at a time: a read from a TCP
// socket, a DATA frame (maxWriteFrameSize), a write to the app's socket.
// A syscall costs microseconds on a virtual machine, where a bulk
// transfer through two ztunnels spent most of its time in them: at
// 64 KiB, four syscalls per 256 KiB and side became one.
const copyBufSize = 256 << 10

var copyBufPool = sync.Pool{New: func() any { b := make([]byte, copyBufSize); return &b }}

// copyBufsOut counts the copy buffers taken from the pool and not yet
// returned: what the copies hold at this moment.
var copyBufsOut atomic.Int64

func getCopyBuf() *[]byte {
	copyBufsOut.Add(1)
	return copyBufPool.Get().(*[]byte)
}

func putCopyBuf(bp *[]byte) {
	copyBufsOut.Add(-1)
	copyBufPool.Put(bp)
}

// Join copies between a tunnel and a plain connection in both directions
// until both have ended, carrying each direction's end across (TCP FIN ⇄
// END_STREAM). It returns the bytes copied each way: sent is a→b.
// Neither connection is closed.
func Join(a, b net.Conn) (sent, received int64, err error) {
	// A stream and a TCP socket, ztunnel's case: the stream's direction
	// needs no goroutine (sink.go).
	if s, ok := a.(*Stream); ok {
		if tcp, ok := b.(*net.TCPConn); ok {
			return joinTCP(s, tcp)
		}
	}
	if s, ok := b.(*Stream); ok {
		if tcp, ok := a.(*net.TCPConn); ok {
			received, sent, err = joinTCP(s, tcp)
			return sent, received, err
		}
	}
	var wg sync.WaitGroup
	var errB error
	wg.Add(1)
	go func() {
		defer wg.Done()
		received, errB = halfCopy(a, b)
	}()
	sent, err = halfCopy(b, a)
	wg.Wait()
	return sent, received, errors.Join(err, errB)
}

// joinTCP joins a stream and a TCP socket: the socket's direction is
// copied by this goroutine, the stream's by the read loop into its sink.
// It returns the bytes copied each way: toTCP is s→tcp.
func joinTCP(s *Stream, tcp *net.TCPConn) (toTCP, fromTCP int64, err error) {
	end, err := s.attachSink(tcp)
	if err != nil {
		s.Close()
		tcp.Close()
		return 0, 0, err
	}
	fromTCP, err = copyToStream(s, tcp)
	<-end.done
	return end.n, fromTCP, errors.Join(end.err, err)
}

// copyToStream is joinTCP's halfCopy from the socket: it follows a joined
// stream to its retry, and resets the socket of a refused one.
func copyToStream(s *Stream, tcp *net.TCPConn) (int64, error) {
	if s.join == nil { // set once, before the stream was returned
		return halfCopy(s, tcp)
	}
	w := &retryWriter{s: s}
	n, err := copyFromTCP(w, tcp)
	if err == nil {
		err = w.closeWrite()
	}
	if err != nil {
		closeSocket(w.s, tcp)
		w.s.Close()
	}
	return n, err
}

// retryWriter writes to a stream, or to the retry of a joined stream the
// server refused unprocessed: a write that failed on the refused stream
// sent nothing (else there would be no retry), so it is written again.
type retryWriter struct{ s *Stream }

func (w *retryWriter) Write(p []byte) (int, error) {
	for {
		n, err := w.s.Write(p)
		if err == nil {
			return n, nil
		}
		next := w.s.retried()
		if next == nil {
			return n, err
		}
		w.s = next
	}
}

func (w *retryWriter) sendable(max int) int { return w.s.sendable(max) }

func (w *retryWriter) closeWrite() error {
	for {
		err := w.s.CloseWrite()
		if err == nil {
			return nil
		}
		next := w.s.retried()
		if next == nil {
			return err
		}
		w.s = next
	}
}

// halfCopy copies src to dst, then ends dst's sending direction. On a
// failure both connections are closed for reading so the other direction
// stops too.
//
// No copy holds a buffer while its source is idle (a mesh has many idle
// connections): TCP to TCP is spliced in the kernel (the plaintext inbound
// hop to the app, passthrough); a TCP source is read into a pooled buffer
// only once it is readable, and the buffer goes back before it waits again;
// a stream joined to TCP has no copy here at all (joinTCP).
func halfCopy(dst, src net.Conn) (int64, error) {
	var n int64
	var err error
	srcTCP, fromTCP := src.(*net.TCPConn)
	dstTCP, toTCP := dst.(*net.TCPConn)
	switch {
	case fromTCP && toTCP:
		n, err = dstTCP.ReadFrom(srcTCP) // splice(2)
	case fromTCP:
		n, err = copyFromTCP(dst, srcTCP)
	default:
		bp := getCopyBuf()
		// Plain io.CopyBuffer would let a ReaderFrom or WriterTo take
		// over; hide both sides' fast paths.
		n, err = io.CopyBuffer(writerOnly{dst}, readerOnly{src}, *bp)
		putCopyBuf(bp)
	}
	if err != nil {
		dst.Close()
		src.Close()
		return n, err
	}
	if cw, ok := dst.(closeWriter); ok {
		err = cw.CloseWrite()
	} else {
		err = dst.Close()
	}
	return n, err
}

// copyFromTCP copies src to dst until EOF, holding a pooled buffer only
// from the moment src is readable until what was read is written.
//
// A stream (or its retryWriter) as dst is read for at most the bytes its
// flow-control credit lets it send at once, and not at all while it has
// none: a peer that grants no credit leaves the bytes in the socket,
// where TCP pushes back on the app, and makes us hold no buffer for them.
func copyFromTCP(dst io.Writer, src *net.TCPConn) (int64, error) {
	rc, err := src.SyscallConn()
	if err != nil {
		return 0, err
	}
	credit, _ := dst.(creditWaiter)
	var total int64
	for {
		want := copyBufSize
		if credit != nil {
			want = credit.sendable(copyBufSize)
		}
		var bp *[]byte
		var n int
		var rerr error
		err := rc.Read(func(fd uintptr) bool {
			if bp == nil {
				bp = getCopyBuf()
			}
			for {
				n, rerr = unix.Read(int(fd), (*bp)[:want])
				if rerr != unix.EINTR {
					break
				}
			}
			if rerr == unix.EAGAIN {
				putCopyBuf(bp) // nothing to read: wait without it
				bp = nil
				return false
			}
			return true
		})
		if err == nil {
			err = rerr
		}
		if err == nil && n > 0 {
			var m int
			m, err = dst.Write((*bp)[:n])
			total += int64(m)
		}
		if bp != nil {
			putCopyBuf(bp)
		}
		switch {
		case err != nil:
			return total, err
		case n == 0:
			return total, nil // EOF
		}
	}
}

// creditWaiter is a destination with flow control: sendable waits until
// a write would not wait for credit, and returns how much of max it would
// take at once (max if it would fail at once: the write says why).
type creditWaiter interface {
	sendable(max int) int
}

type writerOnly struct{ io.Writer }
type readerOnly struct{ io.Reader }
