package hbone

import (
	"context"
	"sync"
	"testing"
	"time"
)

func TestPoolMultiplexesAndGrows(t *testing.T) {
	ts := startServer(t, func(ctx context.Context, r *Request, s *Stream) {
		s.Respond(200)
		// Hold the stream until the client ends it.
		readAllTimeout(t, s, 10*time.Second)
		s.CloseWrite()
	}, bob, nil)
	pool, key := newTestPool(t, ts.addr, PoolConfig{MaxStreamsPerConn: 10, IdleTimeout: time.Minute})

	const n = 25
	streams := make([]*Stream, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			st, err := pool.Connect(context.Background(), key, target("10.0.0.1:80"))
			if err != nil {
				t.Error(err)
				return
			}
			streams[i] = st
		}()
	}
	wg.Wait()
	if got := pool.Conns()[key]; got != 3 {
		t.Errorf("25 streams at 10 per connection used %d connections, want 3", got)
	}
	// Another identity pair never shares those connections.
	other := key
	other.SrcID = carol
	st, err := pool.Connect(context.Background(), other, target("10.0.0.1:80"))
	if err != nil {
		t.Fatal(err)
	}
	st.Close()
	if got := pool.Conns()[other]; got != 1 {
		t.Errorf("carol's key has %d connections, want 1", got)
	}
	for _, st := range streams {
		if st != nil {
			st.CloseWrite()
			readAllTimeout(t, st, 5*time.Second)
			st.Close()
		}
	}
}

func TestPoolEvictsIdle(t *testing.T) {
	ts := startServer(t, echoHandler, bob, nil)
	pool, key := newTestPool(t, ts.addr, PoolConfig{MaxStreamsPerConn: 10, IdleTimeout: 50 * time.Millisecond})
	st, err := pool.Connect(context.Background(), key, target("10.0.0.1:80"))
	if err != nil {
		t.Fatal(err)
	}
	st.CloseWrite()
	readAllTimeout(t, st, 5*time.Second)
	st.Close()
	deadline := time.Now().Add(5 * time.Second)
	for pool.Conns()[key] != 0 {
		if time.Now().After(deadline) {
			t.Fatal("idle connection never evicted")
		}
		time.Sleep(10 * time.Millisecond)
	}
	// And a new stream after eviction dials again.
	st, err = pool.Connect(context.Background(), key, target("10.0.0.1:80"))
	if err != nil {
		t.Fatal(err)
	}
	st.Close()
}

// A server's GOAWAY takes its connection out of the pool; the streams on it
// finish normally and new streams go over a new connection.
func TestPoolSurvivesGoAway(t *testing.T) {
	ts := startServer(t, echoHandler, bob, nil)
	pool, key := newTestPool(t, ts.addr, PoolConfig{MaxStreamsPerConn: 10, IdleTimeout: time.Minute})
	live, err := pool.Connect(context.Background(), key, target("10.0.0.1:80"))
	if err != nil {
		t.Fatal(err)
	}
	defer live.Close()

	ts.srv.mu.Lock()
	for c := range ts.srv.conns {
		c.goAway()
	}
	ts.srv.mu.Unlock()

	deadline := time.Now().Add(5 * time.Second)
	for pool.Conns()[key] != 0 {
		if time.Now().After(deadline) {
			t.Fatal("connection that received GOAWAY still pooled")
		}
		time.Sleep(10 * time.Millisecond)
	}
	fresh, err := pool.Connect(context.Background(), key, target("10.0.0.1:80"))
	if err != nil {
		t.Fatalf("connect after GOAWAY: %v", err)
	}
	defer fresh.Close()
	// The old stream still works to the end.
	if got := exchange(t, live, "still here"); got != "still here" {
		t.Fatalf("stream on the drained connection: %q", got)
	}
}

// Server shutdown drains: a live stream finishes, then Shutdown returns.
func TestServerShutdownDrains(t *testing.T) {
	ts := startServer(t, echoHandler, bob, nil)
	cc, err := dialClient(t, ts.addr, alice, bob)
	if err != nil {
		t.Fatal(err)
	}
	st, err := cc.Connect(context.Background(), target("10.0.0.1:80"))
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		done <- ts.srv.Shutdown(ctx)
	}()
	// Wait for the server's GOAWAY to reach the client.
	deadline := time.Now().Add(5 * time.Second)
	for {
		cc.c.mu.Lock()
		away := cc.c.goingAway
		cc.c.mu.Unlock()
		if away || time.Now().After(deadline) {
			break
		}
		time.Sleep(time.Millisecond)
	}
	if _, err := cc.Connect(context.Background(), target("10.0.0.1:80")); err == nil {
		t.Error("new stream accepted while draining")
	}
	if got := exchange(t, st, "drain"); got != "drain" {
		t.Fatalf("live stream during drain: %q", got)
	}
	if err := <-done; err != nil {
		t.Fatalf("shutdown: %v", err)
	}
}
