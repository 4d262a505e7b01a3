//go:build !race

// The race detector changes what allocates; counts only mean something
// without it.

package telemetry

import (
	"io"
	"log/slog"
	"net/netip"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

// A connection's Open and Close with its access-log line allocate the
// Conn, one string for all the line's formatted values (its addresses and
// duration) and slog's room for attributes beyond its first five. A string
// per address and for the duration (three more, and three more again for
// the Debug "connection opened" line) fails this test.
func TestOpenCloseAllocations(t *testing.T) {
	for _, tc := range []struct {
		level slog.Level
		want  float64
	}{
		{slog.LevelInfo, 3},  // the access log's one line
		{slog.LevelDebug, 5}, // and the open line
	} {
		t.Run(tc.level.String(), func(t *testing.T) {
			h := slog.NewJSONHandler(io.Discard, &slog.HandlerOptions{Level: tc.level})
			tel, err := New(prometheus.NewRegistry(), slog.New(h))
			if err != nil {
				t.Fatal(err)
			}
			ci := ConnInfo{Direction: Outbound, Src: productpage, Dst: reviews, Secure: true,
				HBONETarget: netip.MustParseAddrPort("10.0.2.7:9080")}
			round := func() { tel.Open(ci).Close(Result{Sent: 1500, Received: 64 << 10}) }
			round() // the label tuple's series are made once
			if n := testing.AllocsPerRun(200, round); n > tc.want {
				t.Errorf("%.1f allocations per Open and Close, want at most %v", n, tc.want)
			}
		})
	}
}
