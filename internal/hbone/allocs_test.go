//go:build !race

// The race detector's sync.Pool drops items at random, so allocation
// counts only mean something without it.

package hbone

import (
	"errors"
	"io"
	"net"
	"os"
	"testing"
	"time"
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

// An HTTP/1 server sets a stream's read deadline a few times per request
// (the header timeout, then none, then one in the past to end its
// background read): each direction keeps one timer, re-armed, instead of a
// new timer and closure per deadline. A re-armed deadline still ends a
// blocked Read.
func TestStreamDeadlineAllocations(t *testing.T) {
	app := listenApp(t, func(c net.Conn) { io.Copy(c, c) })
	ts, _ := joinedServer(t, app, 0)
	st := openStream(t, ts.addr)
	arm := func() {
		st.SetReadDeadline(time.Now().Add(time.Minute))
		st.SetReadDeadline(time.Time{})
		st.SetWriteDeadline(time.Now().Add(time.Minute))
		st.SetWriteDeadline(time.Time{})
	}
	arm()
	if n := testing.AllocsPerRun(200, arm); n != 0 {
		t.Errorf("%.1f allocations per four deadlines set, want 0", n)
	}
	st.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	if _, err := st.Read(make([]byte, 1)); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("Read after its deadline: %v, want os.ErrDeadlineExceeded", err)
	}
}
