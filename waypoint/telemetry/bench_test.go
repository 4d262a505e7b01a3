package telemetry

import (
	"encoding/json"
	"io"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

// BenchmarkObserve is what each request costs the waypoint's metrics.
func BenchmarkObserve(b *testing.B) {
	r := request()
	b.Run("metrics", func(b *testing.B) {
		m, err := NewMetrics(prometheus.NewRegistry(), MetricsOptions{})
		if err != nil {
			b.Fatal(err)
		}
		b.ReportAllocs()
		for b.Loop() {
			m.Observe(r)
		}
	})
}

// BenchmarkAccessLogLine encodes one access-log line: by hand
// (appendEntry, what the log does) and with encoding/json from a struct
// (the reference it is held to).
func BenchmarkAccessLogLine(b *testing.B) {
	r := request()
	b.Run("append", func(b *testing.B) {
		b.ReportAllocs()
		var line []byte
		for b.Loop() {
			line = appendEntry(line[:0], r)
		}
	})
	b.Run("encoding-json", func(b *testing.B) {
		enc := json.NewEncoder(io.Discard)
		enc.SetEscapeHTML(false)
		b.ReportAllocs()
		for b.Loop() {
			enc.Encode(newEntry(r))
		}
	})
}
