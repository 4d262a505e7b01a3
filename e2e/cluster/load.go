package cluster

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"time"
)

// Load opens a new connection from one pod to a destination, again and
// again, and records each outcome: what a test looks at while it restarts
// or upgrades parts of the mesh under traffic.
type Load struct {
	cancel context.CancelFunc
	done   chan struct{}
	mu     sync.Mutex
	res    []LoadOutcome
}

// LoadOutcome is one connection of a Load: when it was opened, how long it
// took to connect and be greeted, and why it failed.
type LoadOutcome struct {
	Start time.Time
	Took  time.Duration
	Err   error
}

// StartLoad opens a connection from one pod to dst, waits every after it
// is done, and so on until Stop. budget is how long one connection may
// take to connect and greet before it counts as failed.
func StartLoad(from *Pod, dst netip.AddrPort, every, budget time.Duration) *Load {
	ctx, cancel := context.WithCancel(context.Background())
	l := &Load{cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(l.done)
		for ctx.Err() == nil {
			start := time.Now()
			_, _, err := from.EchoWithin(ctx, dst, budget)
			if ctx.Err() != nil {
				return
			}
			l.mu.Lock()
			l.res = append(l.res, LoadOutcome{start, time.Since(start), err})
			l.mu.Unlock()
			time.Sleep(every)
		}
	}()
	return l
}

// Stop ends the load and returns once its last connection is done; a
// connection cut short by Stop is not recorded.
func (l *Load) Stop() { l.cancel(); <-l.done }

// Between counts the outcomes of connections opened in [from, to).
func (l *Load) Between(from, to time.Time) (ok int, failed []LoadOutcome) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, r := range l.res {
		if r.Start.Before(from) || !r.Start.Before(to) {
			continue
		}
		if r.Err != nil {
			failed = append(failed, r)
		} else {
			ok++
		}
	}
	return ok, failed
}

// Slowest is the longest a connection opened in [from, to) took.
func (l *Load) Slowest(from, to time.Time) time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	var m time.Duration
	for _, r := range l.res {
		if !r.Start.Before(from) && r.Start.Before(to) {
			m = max(m, r.Took)
		}
	}
	return m.Round(time.Millisecond)
}

// DescribeFailed lists the first five failures, one a line, for a test's
// error message.
func DescribeFailed(fs []LoadOutcome) string {
	var b strings.Builder
	for i, f := range fs {
		if i == 5 {
			fmt.Fprintf(&b, "\n  ... and %d more", len(fs)-5)
			break
		}
		fmt.Fprintf(&b, "\n  %s: %v", f.Start.Format("15:04:05.000"), f.Err)
	}
	return b.String()
}
