//go:build !race

// The race detector's sync.Pool drops items at random, so allocation
// counts only mean something without it.

package hbone

import (
	"io"
	"net"
	"testing"
)

// A request and its response through a stream joined to the app (the
// inbound hot path: read loop → direct delivery → the app's socket, and
// back through Join) allocate almost nothing: what is left is crypto/tls's
// reader, one per TLS record read. Written-per-call closures handed to
// RawConn (seven allocations a round) and a new DATA frame object per frame
// (two) fail this test.
func TestJoinedRoundTripAllocations(t *testing.T) {
	app := listenApp(t, func(c net.Conn) { io.Copy(c, c) })
	ts, _ := joinedServer(t, app, 0)
	st := openStream(t, ts.addr)
	req, resp := make([]byte, 1024), make([]byte, 1024)
	round := func() {
		if _, err := st.Write(req); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(st, resp); err != nil {
			t.Fatal(err)
		}
	}
	for range 50 { // warm pools, windows and stacks
		round()
	}
	n := testing.AllocsPerRun(500, round)
	t.Logf("%.1f allocations per round", n)
	if n > 3 {
		t.Errorf("%.1f allocations per request/response round, want at most 3", n)
	}
}
