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
