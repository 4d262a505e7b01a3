package telemetry

import (
	"io"
	"log/slog"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

// BenchmarkOpenClose is the per-connection cost: one Open and one Close of
// a connection whose label tuple is already cached.
func BenchmarkOpenClose(b *testing.B) {
	for _, bc := range []struct {
		name  string
		level slog.Level
	}{
		{"log-off", slog.LevelError}, // access log disabled at the handler
		{"log-json", slog.LevelInfo}, // one JSON line per connection
	} {
		b.Run(bc.name, func(b *testing.B) {
			h := slog.NewJSONHandler(io.Discard, &slog.HandlerOptions{Level: bc.level})
			tel, err := New(prometheus.NewRegistry(), slog.New(h))
			if err != nil {
				b.Fatal(err)
			}
			ci := ConnInfo{Direction: Outbound, Src: productpage, Dst: reviews, Secure: true}
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					tel.Open(ci).Close(Result{Sent: 1500, Received: 64 << 10})
				}
			})
		})
	}
}
