package proxy

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"
)

// fakeClock is a clock the test moves by hand.
type fakeClock struct{ t time.Time }

func (c *fakeClock) now() time.Time      { return c.t }
func (c *fakeClock) add(d time.Duration) { c.t = c.t.Add(d) }
func newFakeClock() *fakeClock           { return &fakeClock{t: time.Unix(1_700_000_000, 0)} }

func TestLogLimiterBoundsEachClass(t *testing.T) {
	clk := newFakeClock()
	l := newLogLimiter(5, 2, clk.now)
	allowed := func(key string, n int) (int, uint64) {
		ok, dropped := 0, uint64(0)
		for range n {
			if a, d := l.allow(key); a {
				ok++
				dropped += d
			}
		}
		return ok, dropped
	}
	// A flood at one instant: the burst, nothing more.
	if ok, _ := allowed("denied", 10_000); ok != 5 {
		t.Fatalf("10000 rejections at once logged %d lines, want the burst of 5", ok)
	}
	// Another class is not starved by the first.
	if ok, _ := allowed("self-call", 3); ok != 3 {
		t.Fatalf("another class logged %d of 3", ok)
	}
	// A second later: the rate (2), and the first line says what it stood for.
	clk.add(time.Second)
	ok, dropped := allowed("denied", 10_000)
	if ok != 2 || dropped != 10_000-5 {
		t.Fatalf("after 1 s: %d lines reporting %d suppressed, want 2 reporting %d", ok, dropped, 10_000-5)
	}
	// A long silence refills to the burst, not beyond.
	clk.add(time.Hour)
	if ok, _ := allowed("denied", 100); ok != 5 {
		t.Fatalf("after an hour: %d lines, want the burst of 5", ok)
	}
}

// Keys a peer could vary (messages, classes) cannot grow the limiter
// without bound: past rejectMaxKeys they share one bucket.
func TestLogLimiterBoundsKeys(t *testing.T) {
	clk := newFakeClock()
	l := newLogLimiter(1, 0, clk.now)
	ok := 0
	for i := range 10_000 {
		if a, _ := l.allow(fmt.Sprintf("key-%d", i)); a {
			ok++
		}
	}
	if len(l.buckets) > rejectMaxKeys {
		t.Fatalf("%d buckets, want at most %d", len(l.buckets), rejectMaxKeys)
	}
	if ok > rejectMaxKeys {
		t.Fatalf("%d lines from 10000 distinct keys, want at most %d", ok, rejectMaxKeys)
	}
}

// The HBONE server's logger goes through limitedHandler: a flood of one
// message is cut to the burst, and the next line written counts the rest.
func TestLimitedHandler(t *testing.T) {
	clk := newFakeClock()
	var buf bytes.Buffer
	log := slog.New(limitedHandler{slog.NewJSONHandler(&buf, nil), newLogLimiter(3, 1, clk.now)}).With("pod", "demo/x")
	for range 1000 {
		log.Info("hbone request rejected", "status", 400)
	}
	log.Info("another message")
	clk.add(time.Second)
	log.InfoContext(context.Background(), "hbone request rejected", "status", 400)
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 5 {
		t.Fatalf("%d lines, want 3 + 1 + 1:\n%s", len(lines), buf.String())
	}
	var last map[string]any
	if err := json.Unmarshal([]byte(lines[4]), &last); err != nil {
		t.Fatal(err)
	}
	if last["suppressed"] != float64(997) || last["pod"] != "demo/x" {
		t.Fatalf("last line %v, want suppressed=997 and the logger's attributes", last)
	}
}
