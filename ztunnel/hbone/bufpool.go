package hbone

import "sync"

// Buffers of the common size are pooled; the hot path of a stream is
// receive-then-drain, so one buffer is borrowed and returned per burst.
const poolBufSize = 64 << 10

var bufPool = sync.Pool{New: func() any { b := make([]byte, 0, poolBufSize); return &b }}

func getBuf(n int) []byte {
	if n > poolBufSize {
		return make([]byte, 0, n)
	}
	return (*bufPool.Get().(*[]byte))[:0]
}

func putBuf(b []byte) {
	if cap(b) != poolBufSize {
		return
	}
	b = b[:0]
	bufPool.Put(&b)
}
