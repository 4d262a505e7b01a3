package hbone

import (
	"io"

	"golang.org/x/net/http2"
)

// Bounds of one header block (HEADERS and its CONTINUATIONs) as it arrives
// on the wire. The frame codec bounds what it decodes, but not how many
// CONTINUATION frames it reads for one block: a peer can send empty ones
// forever, the connection kept busy and open. A block of a
// maxHeaderListSize header list never needs more raw bytes than that
// (HPACK only shrinks fields, which count 32 bytes each on top), plus
// padding and priority; and no sender splits one into more than a few
// frames.
const (
	maxHeaderBlock   = maxHeaderListSize + 512
	maxContinuations = 64
)

// headerGuard sits between the socket's buffered reader and the frame
// codec, and follows frame boundaries in the bytes passing through (the
// codec reads a frame's 9-byte header, then exactly its payload). It fails
// the connection once a header block exceeds maxHeaderBlock bytes or
// maxContinuations CONTINUATION frames, before the codec reads any more of
// it. It costs no allocation and a few comparisons per read.
type headerGuard struct {
	r    io.Reader
	hdr  [9]byte
	hn   int    // bytes of the current frame header seen
	left uint32 // payload bytes of the current frame still to pass
	// A header block is open: its bytes and CONTINUATION frames so far.
	inBlock  bool
	blockLen int
	conts    int
	// err, once set, is returned by every Read; the read loop also checks
	// it after each frame, for a block whose last frame broke the bound.
	err error
}

// errHeaderBlock is the error a guard fails with.
type errHeaderBlock struct{ reason string }

func (e *errHeaderBlock) Error() string { return "hbone: header block " + e.reason }

func (g *headerGuard) Read(p []byte) (int, error) {
	if g.err != nil {
		return 0, g.err
	}
	n, err := g.r.Read(p)
	for b := p[:n]; len(b) > 0; {
		if g.left > 0 {
			k := min(uint32(len(b)), g.left)
			g.left -= k
			b = b[k:]
			continue
		}
		k := copy(g.hdr[g.hn:], b)
		g.hn += k
		b = b[k:]
		if g.hn < len(g.hdr) {
			continue
		}
		g.hn = 0
		g.left = uint32(g.hdr[0])<<16 | uint32(g.hdr[1])<<8 | uint32(g.hdr[2])
		if e := g.frame(http2.FrameType(g.hdr[3]), http2.Flags(g.hdr[4]), int(g.left)); e != nil {
			// The bytes read are returned: the codec's ReadFull would
			// drop the error with them, and meets it at its next read.
			g.err = e
			return n, nil
		}
	}
	return n, err
}

func (g *headerGuard) frame(t http2.FrameType, flags http2.Flags, length int) error {
	switch t {
	case http2.FrameHeaders, http2.FramePushPromise:
		g.inBlock = !flags.Has(http2.FlagHeadersEndHeaders)
		g.blockLen, g.conts = length, 0
	case http2.FrameContinuation:
		if !g.inBlock {
			return nil // the codec rejects it
		}
		g.blockLen += length
		g.conts++
		if g.conts > maxContinuations {
			return &errHeaderBlock{"has too many CONTINUATION frames"}
		}
		g.inBlock = !flags.Has(http2.FlagContinuationEndHeaders)
	default:
		return nil
	}
	if g.blockLen > maxHeaderBlock {
		return &errHeaderBlock{"too large"}
	}
	return nil
}
