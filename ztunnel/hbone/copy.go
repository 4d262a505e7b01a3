package hbone

import (
	"errors"
	"io"
	"net"
	"sync"
)

// closeWriter is a connection whose sending direction can end alone:
// *net.TCPConn, *Stream.
type closeWriter interface {
	CloseWrite() error
}

var copyBufPool = sync.Pool{New: func() any { b := make([]byte, 64<<10); return &b }}

// Join copies between a tunnel and a plain connection in both directions
// until both have ended, carrying each direction's end across (TCP FIN ⇄
// END_STREAM). It returns the bytes copied each way: sent is a→b.
// Neither connection is closed.
func Join(a, b net.Conn) (sent, received int64, err error) {
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

// halfCopy copies src to dst, then ends dst's sending direction. On a
// failure both connections are closed for reading so the other direction
// stops too.
func halfCopy(dst, src net.Conn) (int64, error) {
	bp := copyBufPool.Get().(*[]byte)
	defer copyBufPool.Put(bp)
	var n int64
	var err error
	s, fromStream := src.(*Stream)
	tc, toTCP := dst.(*net.TCPConn)
	if fromStream && toTCP {
		n, err = s.pumpTo(tc, *bp)
	} else {
		// Plain io.CopyBuffer would let *net.TCPConn's ReadFrom take
		// over and splice, which cannot apply to a Stream; hide both
		// sides' fast paths.
		n, err = io.CopyBuffer(writerOnly{dst}, readerOnly{src}, *bp)
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

type writerOnly struct{ io.Writer }
type readerOnly struct{ io.Reader }
