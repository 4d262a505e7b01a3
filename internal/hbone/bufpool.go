package hbone

import "sync"

// Receive buffers are pooled fixed-size chunks: a stream's data is copied
// into them by the read loop and out of them by the reader, and a drained
// chunk is reused at once by the next burst.
const poolBufSize = 64 << 10

var bufPool = sync.Pool{New: func() any { return new(chunk) }}

type chunk [poolBufSize]byte

func getBuf() []byte {
	return bufPool.Get().(*chunk)[:0]
}

func putBuf(b []byte) {
	if cap(b) != poolBufSize {
		return
	}
	bufPool.Put((*chunk)(b[:poolBufSize]))
}
