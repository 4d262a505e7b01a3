package hbone

import (
	"bytes"
	"math/rand/v2"
	"testing"
)

// recvBuf must return exactly what was written, in order, for any
// interleaving of write and read sizes, crossing chunk boundaries.
func TestRecvBufPreservesBytes(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for round := range 40 {
		var c recvBufCheck
		for range 50 {
			if r.IntN(2) == 0 {
				c.write(r)
			} else {
				c.read(r)
			}
			c.checkLen(t, round)
		}
		c.finish(t, round)
	}
}

// peek shows the next bytes without taking them and discard then takes
// them, for any mix with write and read, across chunk boundaries: what a
// stream joined after its first bytes arrived writes out (sink.go).
func TestRecvBufPeekDiscard(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	for round := range 40 {
		var c recvBufCheck
		for range 60 {
			switch r.IntN(3) {
			case 0:
				c.write(r)
			case 1:
				c.read(r)
			default:
				p := make([]byte, r.IntN(2*poolBufSize)+1)
				n := c.b.peek(p)
				if pending := c.want.Bytes()[c.got.Len():]; n != min(len(p), len(pending)) || !bytes.Equal(p[:n], pending[:n]) {
					t.Fatalf("round %d: peek of %d gave %d bytes, not the next %d pending", round, len(p), n, min(len(p), len(pending)))
				}
				m := r.IntN(n + 1) // a socket may take part of it
				c.b.discard(m)
				c.got.Write(p[:m])
			}
			c.checkLen(t, round)
		}
		c.finish(t, round)
	}
}

// recvBufCheck is a recvBuf beside what was written to it (want) and what
// was taken from it (got).
type recvBufCheck struct {
	b         recvBuf
	want, got bytes.Buffer
}

// write writes up to three chunks of random bytes.
func (c *recvBufCheck) write(r *rand.Rand) {
	p := make([]byte, r.IntN(3*poolBufSize))
	for i := range p {
		p[i] = byte(r.Uint32())
	}
	c.b.write(p)
	c.want.Write(p)
}

// read reads into a buffer of up to two chunks.
func (c *recvBufCheck) read(r *rand.Rand) {
	p := make([]byte, r.IntN(2*poolBufSize)+1)
	c.got.Write(p[:c.b.read(p)])
}

func (c *recvBufCheck) checkLen(t *testing.T, round int) {
	t.Helper()
	if c.b.len() != c.want.Len()-c.got.Len() {
		t.Fatalf("round %d: len() = %d, want %d", round, c.b.len(), c.want.Len()-c.got.Len())
	}
}

// finish reads the rest, checks that everything came out in order, and
// releases the buffer.
func (c *recvBufCheck) finish(t *testing.T, round int) {
	t.Helper()
	for c.b.len() > 0 {
		p := make([]byte, 1000)
		c.got.Write(p[:c.b.read(p)])
	}
	if !bytes.Equal(c.want.Bytes(), c.got.Bytes()) {
		t.Fatalf("round %d: bytes differ after %d written", round, c.want.Len())
	}
	c.b.release()
}
