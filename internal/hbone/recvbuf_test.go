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
		var b recvBuf
		var want, got bytes.Buffer
		for range 50 {
			if r.IntN(2) == 0 {
				p := make([]byte, r.IntN(3*poolBufSize))
				for i := range p {
					p[i] = byte(r.Uint32())
				}
				b.write(p)
				want.Write(p)
			} else {
				p := make([]byte, r.IntN(2*poolBufSize)+1)
				n := b.read(p)
				got.Write(p[:n])
			}
			if b.len() != want.Len()-got.Len() {
				t.Fatalf("round %d: len() = %d, want %d", round, b.len(), want.Len()-got.Len())
			}
		}
		for b.len() > 0 {
			p := make([]byte, 1000)
			got.Write(p[:b.read(p)])
		}
		if !bytes.Equal(want.Bytes(), got.Bytes()) {
			t.Fatalf("round %d: bytes differ after %d written", round, want.Len())
		}
		b.release()
	}
}

// peek shows the next bytes without taking them and discard then takes
// them, for any mix with write and read, across chunk boundaries: what a
// stream joined after its first bytes arrived writes out (sink.go).
func TestRecvBufPeekDiscard(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	for round := range 40 {
		var b recvBuf
		var want, got bytes.Buffer
		for range 60 {
			switch r.IntN(3) {
			case 0:
				p := make([]byte, r.IntN(3*poolBufSize))
				for i := range p {
					p[i] = byte(r.Uint32())
				}
				b.write(p)
				want.Write(p)
			case 1:
				p := make([]byte, r.IntN(2*poolBufSize)+1)
				got.Write(p[:b.read(p)])
			default:
				p := make([]byte, r.IntN(2*poolBufSize)+1)
				n := b.peek(p)
				if pending := want.Bytes()[got.Len():]; n != min(len(p), len(pending)) || !bytes.Equal(p[:n], pending[:n]) {
					t.Fatalf("round %d: peek of %d gave %d bytes, not the next %d pending", round, len(p), n, min(len(p), len(pending)))
				}
				m := r.IntN(n + 1) // a socket may take part of it
				b.discard(m)
				got.Write(p[:m])
			}
			if b.len() != want.Len()-got.Len() {
				t.Fatalf("round %d: len() = %d, want %d", round, b.len(), want.Len()-got.Len())
			}
		}
		for b.len() > 0 {
			p := make([]byte, 1000)
			got.Write(p[:b.read(p)])
		}
		if !bytes.Equal(want.Bytes(), got.Bytes()) {
			t.Fatalf("round %d: bytes differ after %d written", round, want.Len())
		}
		b.release()
	}
}
