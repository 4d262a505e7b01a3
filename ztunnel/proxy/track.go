package proxy

import (
	"context"
	"net"
	"sync"
)

// tracker holds a pod's live connections so a drain can wait for them and,
// when the grace period ends, cut them; and the inbound connections policy
// allowed, so that a policy change can re-check them (recheck.go).
type tracker struct {
	mu      sync.Mutex
	conns   map[net.Conn]struct{}
	inbound map[*inboundConn]struct{}
	closed  bool
	wg      sync.WaitGroup
}

// add registers c; false means the tracker is cut and c must be closed.
func (t *tracker) add(c net.Conn) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return false
	}
	if t.conns == nil {
		t.conns = make(map[net.Conn]struct{})
	}
	t.conns[c] = struct{}{}
	t.wg.Add(1)
	return true
}

func (t *tracker) remove(c net.Conn) {
	t.mu.Lock()
	_, ok := t.conns[c]
	delete(t.conns, c)
	t.mu.Unlock()
	if ok {
		t.wg.Done()
	}
}

func (t *tracker) count() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.conns)
}

// drain waits for the connections to end until ctx does, then cuts the
// rest and waits for their handlers to notice.
func (t *tracker) drain(ctx context.Context) {
	done := make(chan struct{})
	go func() { t.wg.Wait(); close(done) }()
	select {
	case <-done:
		return
	case <-ctx.Done():
	}
	t.mu.Lock()
	t.closed = true
	for c := range t.conns {
		c.Close()
	}
	t.mu.Unlock()
	<-done
}
