package hbone

import (
	"io"
	"os"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// crypto/tls reads the socket into a buffer of about two records (32 KiB)
// at a time, so a stream of 16 KiB records costs a read syscall per two
// records. Once armed, batchConn reads ahead under TLS: when TLS asks for
// fewer bytes than readAhead, one syscall takes up to readAhead from the
// socket into a pooled buffer and the following Reads are served from it.
//
// The buffer is taken from the pool only when the socket has bytes to
// read (a non-blocking read, never a wait while holding it) and goes back
// as soon as TLS has taken them all, so an idle connection, or one whose
// peer trickles, holds none; a connection holds at most one while it is
// being read.

// readAhead is the most one read syscall takes: four full TLS records.
const readAhead = 256 << 10

var readAheadPool = sync.Pool{New: func() any { b := make([]byte, readAhead); return &b }}

// Read serves TLS's reads, ahead of it once armed.
func (b *batchConn) Read(p []byte) (int, error) {
	if b.ahead != nil {
		n := copy(p, (*b.ahead)[b.aheadOff:b.aheadEnd])
		b.aheadOff += n
		if b.aheadOff == b.aheadEnd {
			readAheadPool.Put(b.ahead)
			b.ahead = nil
		}
		return n, nil
	}
	if b.raw == nil || len(p) >= readAhead {
		return b.Conn.Read(p)
	}
	b.rerr = nil
	err := b.raw.Read(b.readFn)
	rerr := b.rerr
	switch {
	case err != nil:
		// A deadline, or the socket closed: the net package's error,
		// as a plain Read would have returned.
		return 0, err
	case rerr != nil:
		return 0, &os.SyscallError{Syscall: "read", Err: rerr}
	case b.ahead == nil:
		return 0, io.EOF
	}
	return b.Read(p)
}

// armReads starts reading ahead, on a socket that gives its descriptor.
func (b *batchConn) armReads() {
	sc, ok := b.Conn.(syscall.Conn)
	if !ok {
		return
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return
	}
	b.raw = raw
	// Made once: a closure per Read would be an allocation per read.
	b.readFn = func(fd uintptr) bool {
		buf := readAheadPool.Get().(*[]byte)
		var n int
		for {
			n, b.rerr = unix.Read(int(fd), *buf)
			if b.rerr != unix.EINTR {
				break
			}
		}
		if b.rerr == unix.EAGAIN {
			readAheadPool.Put(buf)
			return false // wait for bytes without holding the buffer
		}
		if n <= 0 {
			readAheadPool.Put(buf)
			return true
		}
		b.ahead, b.aheadOff, b.aheadEnd = buf, 0, n
		return true
	}
}
