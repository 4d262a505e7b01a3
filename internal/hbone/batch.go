package hbone

import (
	"net"
	"sync"
	"syscall"
	"time"
)

// TLS writes each record (at most 16 KiB of data) to its socket with a
// write of its own, so one 64 KiB DATA frame costs five syscalls and five
// small TCP pushes. batchConn sits between TLS and the socket and, once
// armed after the handshake, gathers the records TLS writes until the
// HTTP/2 writer flushes, then sends them with a single write. `make bench`
// (bulk through the mesh) and BenchmarkBulk measure it.
//
// The few records TLS writes on its own after the handshake go out with
// the next flush (a KeyUpdate answer) or at Close (close_notify).
type batchConn struct {
	net.Conn

	// flushMu keeps batches in order on the socket: the batch is taken
	// and written under it. mu guards the fields below and is never held
	// across a socket write, so appending never waits for a stuck peer.
	flushMu sync.Mutex
	mu      sync.Mutex
	armed   bool
	buf     *[]byte // pooled while it holds records, nil when empty

	// The read side (readahead.go), used by TLS's one reader at a time:
	// raw is the socket's descriptor once armed; ahead holds bytes read
	// ahead, [aheadOff, aheadEnd) not yet taken.
	raw                syscall.RawConn
	readFn             func(fd uintptr) bool // reads ahead into ahead, or sets rerr
	rerr               error
	ahead              *[]byte
	aheadOff, aheadEnd int
}

// BatchWrites wraps a socket before tls.Server or tls.Client so that an
// HBONE connection on it writes one flush's TLS records with one syscall.
// The client side does it by itself; a server passes the wrapped socket to
// tls.Server and the result to Server.ServeConn.
func BatchWrites(c net.Conn) net.Conn { return &batchConn{Conn: c} }

// maxBatch bounds a batch: a flush normally carries at most one DATA frame
// (maxWriteFrameSize) and a few control frames.
const maxBatch = maxWriteFrameSize + 64<<10

// batchCap is what a batch can grow to: it is written once it reaches
// maxBatch, so by at most one TLS record (16 KiB of data and its
// overhead) past it. Pooled batches are made that large at once: grown
// by append, a batch carrying a full DATA frame was allocated three times.
const batchCap = maxBatch + 17<<10

var batchPool = sync.Pool{New: func() any { b := make([]byte, 0, batchCap); return &b }}

func (b *batchConn) Write(p []byte) (int, error) {
	b.mu.Lock()
	if !b.armed {
		b.mu.Unlock()
		return b.Conn.Write(p)
	}
	if b.buf == nil {
		b.buf = batchPool.Get().(*[]byte)
	}
	*b.buf = append(*b.buf, p...)
	full := len(*b.buf) >= maxBatch
	b.mu.Unlock()
	if full {
		if err := b.flush(); err != nil {
			return 0, err
		}
	}
	return len(p), nil
}

// arm starts batching. Called once the TLS handshake is over: its messages
// must go out as TLS writes them.
func (b *batchConn) arm() {
	b.mu.Lock()
	b.armed = true
	b.mu.Unlock()
	b.armReads()
}

// flush writes the gathered records.
func (b *batchConn) flush() error {
	b.flushMu.Lock()
	defer b.flushMu.Unlock()
	return b.writeBatch()
}

// writeBatch takes the batch and writes it. flushMu held.
func (b *batchConn) writeBatch() error {
	b.mu.Lock()
	buf := b.buf
	b.buf = nil
	b.mu.Unlock()
	if buf == nil {
		return nil
	}
	_, err := b.Conn.Write(*buf)
	if cap(*buf) <= batchCap { // a larger one (TLS never makes it) is left to the GC
		*buf = (*buf)[:0]
		batchPool.Put(buf)
	}
	return err
}

// Close sends what TLS left in the batch (its close_notify) unless a
// flush is under way (then, as tls.Conn.Close does when a write is in
// flight, it only closes), with the 5 s bound tls.Conn gives its alert.
func (b *batchConn) Close() error {
	if b.flushMu.TryLock() {
		b.mu.Lock()
		pending := b.buf != nil
		b.mu.Unlock()
		if pending {
			b.Conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
			b.writeBatch()
		}
		b.flushMu.Unlock()
	}
	return b.Conn.Close()
}

// batcherOf returns the batchConn under a TLS connection, if any.
func batcherOf(nc net.Conn) *batchConn {
	type netConner interface{ NetConn() net.Conn }
	if tc, ok := nc.(netConner); ok {
		if bc, ok := tc.NetConn().(*batchConn); ok {
			return bc
		}
	}
	return nil
}
