package hbone

import (
	"context"
	"io"
	"testing"
)

// BenchmarkConnectEarly opens a tunnel with a 1 kB request as early data
// and reads the 1 kB answer, the way ztunnel's outbound side opens one per
// connection: waiting for the 200 before reading ("wait"), or joined
// (ConnectRequest.Join), reading at once.
func BenchmarkConnectEarly(b *testing.B) {
	ts := startServer(b, func(ctx context.Context, r *Request, s *Stream) {
		s.Respond(200)
		buf := make([]byte, 1024)
		if _, err := io.ReadFull(s, buf); err != nil {
			return
		}
		s.Write(buf)
		s.CloseWrite()
	}, bob, nil)
	pool, key := newTestPool(b, ts.addr, PoolConfig{})
	msg := make([]byte, 1024)
	for _, join := range []bool{false, true} {
		name := "wait"
		if join {
			name = "join"
		}
		b.Run(name, func(b *testing.B) {
			resp := make([]byte, 1024)
			b.ReportAllocs()
			for b.Loop() {
				r := target("10.0.0.1:80")
				r.EarlyData, r.Join = msg, join
				st, err := pool.Connect(context.Background(), key, r)
				if err != nil {
					b.Fatal(err)
				}
				if _, err := io.ReadFull(st, resp); err != nil {
					b.Fatal(err)
				}
				st.Close()
			}
		})
	}
}
