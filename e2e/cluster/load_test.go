package cluster

import (
	"errors"
	"strings"
	"testing"
	"time"
)

// TestLoadWindows: Between and Slowest count a connection by when it was
// opened, in [from, to); DescribeFailed names five failures and counts the
// rest.
func TestLoadWindows(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 10, 0, 0, 0, time.UTC)
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	refused := errors.New("connection refused")
	l := &Load{res: []LoadOutcome{
		{Start: at(0), Took: 900 * time.Millisecond},
		{Start: at(100), Took: 5 * time.Millisecond},
		{Start: at(200), Took: 3 * time.Second, Err: refused},
		{Start: at(300), Took: 40 * time.Millisecond},
		{Start: at(400), Took: 2 * time.Second},
	}}
	ok, failed := l.Between(at(100), at(400))
	if ok != 2 || len(failed) != 1 || failed[0].Start != at(200) {
		t.Errorf("Between [100ms, 400ms): %d ok, failed %v; want 2 ok and the one at 200ms", ok, failed)
	}
	if got := l.Slowest(at(100), at(400)); got != 3*time.Second {
		t.Errorf("Slowest [100ms, 400ms) = %s, want 3s (the 2s one at 400ms is outside)", got)
	}
	if got := l.Slowest(at(300), at(300)); got != 0 {
		t.Errorf("Slowest of an empty window = %s, want 0", got)
	}

	var many []LoadOutcome
	for i := range 7 {
		many = append(many, LoadOutcome{Start: at(i), Err: refused})
	}
	d := DescribeFailed(many)
	if n := strings.Count(d, "connection refused"); n != 5 || !strings.HasSuffix(d, "\n  ... and 2 more") || !strings.HasPrefix(d, "\n  10:00:00.000: connection refused") {
		t.Errorf("DescribeFailed of 7:%s", d)
	}
}
