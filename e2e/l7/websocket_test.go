package l7

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/websocket"

	"github.com/zmesh/zmesh/e2e/cluster"
)

// TestWebSocket opens a WebSocket to the echo server's /ws through the
// waypoint (l7-websocket.yaml): the HTTP/1.1 Upgrade passes the waypoint's
// routes and the connection then carries messages both ways.
func TestWebSocket(t *testing.T) {
	t.Parallel()
	pods := withWaypoint(t, "l7-websocket.yaml", "websocket", 2)
	wp := waypointPod(t, pods)
	addr := serviceAddr(t, "websocket", "echo", 80).String()
	c := client(pods["client"])

	// The waypoint's own 404 for any path but /ws (the app would answer
	// 200) says the VirtualService is in force.
	untilCode(t, "GET /other answered 404 by the waypoint", c, "http://"+addr+"/other", nil, http.StatusNotFound)

	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	conn, err := pods["client"].NS.Dial(ctx, "tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	cfg, err := websocket.NewConfig("ws://"+addr+"/ws", "http://client.websocket")
	if err != nil {
		t.Fatal(err)
	}
	ws, err := websocket.NewClient(cfg, conn)
	if err != nil {
		t.Fatalf("WebSocket handshake with %s/ws: %v", addr, err)
	}
	// Several messages in turn, the last larger than one read of the
	// server's copy loop (it comes back in several frames).
	for _, msg := range []string{"hello", "through the waypoint", strings.Repeat("0123456789abcdef", 8<<10)} {
		if _, err := ws.Write([]byte(msg)); err != nil {
			t.Fatalf("send %d bytes: %v", len(msg), err)
		}
		got := make([]byte, len(msg))
		if _, err := io.ReadFull(ws, got); err != nil {
			t.Fatalf("echo of %d bytes: %v", len(msg), err)
		}
		if !bytes.Equal(got, []byte(msg)) {
			t.Fatalf("echo of %d bytes differs", len(msg))
		}
	}
	t.Logf("3 messages (5, 20 and %d bytes) echoed over ws://%s/ws", 16*8<<10, addr)
	ws.Close()

	// The waypoint accounts the upgraded request when it ends: a 101 for
	// the echo Service.
	until(t, 10*time.Second, "the waypoint counting the 101", func() error {
		m, err := waypointMetrics(t.Context(), wp)
		if err != nil {
			return err
		}
		if line := cluster.MetricLine(m, "istio_requests_total", map[string]string{
			"reporter": "waypoint", "destination_service": "echo.websocket.svc.cluster.local", "response_code": "101",
		}); line == "" {
			return fmt.Errorf("no 101 in:\n%s", grepLines(m, "istio_requests_total{"))
		}
		return nil
	})
}
