package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/zmesh/zmesh/waypoint/upstream"
)

// TestUpstreamPoolsBounded: at MaxUpstreamPools the least recently used
// idle pool makes room; when every pool is busy a new one overflows.
func TestUpstreamPoolsBounded(t *testing.T) {
	p, err := New(Options{Certs: testCerts(t), Identity: waypointID, bounds: bounds{MaxUpstreamPools: 2}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Shutdown(context.Background()) })
	c, _ := cluster("c", upstream.HTTP1)
	key := func(i int) poolKey {
		return poolKey{endpoint: netip.AddrPortFrom(podV1, 8080), identity: v1ID.String(), client: netip.AddrFrom4([4]byte{10, 2, 0, byte(i)})}
	}
	e := ep(podV1, 8080, v1ID, "v1")
	a, err := p.up.get(key(1), e, c)
	if err != nil {
		t.Fatal(err)
	}
	b, err := p.up.get(key(2), e, c)
	if err != nil {
		t.Fatal(err)
	}
	a.active.Add(1)
	b.active.Add(1)
	if _, err := p.up.get(key(3), e, c); !errors.Is(err, errOverflow) {
		t.Fatalf("third pool with two busy: %v, want errOverflow", err)
	}
	a.active.Add(-1)
	if _, err := p.up.get(key(3), e, c); err != nil {
		t.Fatalf("third pool with one idle: %v", err)
	}
	p.up.mu.Lock()
	_, kept1 := p.up.pools[key(1)]
	_, kept2 := p.up.pools[key(2)]
	n := len(p.up.pools)
	p.up.mu.Unlock()
	if kept1 || !kept2 || n != 2 {
		t.Errorf("pools after eviction: idle one kept %v, busy one kept %v, %d pools; want the idle one closed, 2 pools", kept1, kept2, n)
	}
}

// TestIdleUpstreamPoolsSwept: a pool unused for IdleTimeout is closed.
func TestIdleUpstreamPoolsSwept(t *testing.T) {
	p, err := New(Options{Certs: testCerts(t), Identity: waypointID, bounds: bounds{IdleTimeout: 50 * time.Millisecond, PoolSweep: 20 * time.Millisecond}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Shutdown(context.Background()) })
	c, _ := cluster("c", upstream.HTTP1)
	if _, err := p.up.get(poolKey{endpoint: netip.AddrPortFrom(podV1, 8080)}, ep(podV1, 8080, v1ID, "v1"), c); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		p.up.mu.Lock()
		n := len(p.up.pools)
		p.up.mu.Unlock()
		if n == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("an idle pool was kept for 10s (IdleTimeout 50ms)")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestUpstreamConnectionsKeptUnderConcurrency: a pool keeps as many
// connections as its (endpoint, client) pair had requests in flight, so
// a steady 64 concurrent requests are served by the same 64 HBONE streams
// rather than closing the surplus after each request and opening new
// streams (and the pod's ztunnel new connections) for the next.
func TestUpstreamConnectionsKeptUnderConcurrency(t *testing.T) {
	const clients = 64
	m := newMesh(t, bounds{})
	c := m.h1Client(vipHTTP)
	c.Transport.(*http.Transport).MaxIdleConnsPerHost = clients
	pod := m.pods[podV1]
	burst := func() {
		// All of a burst's requests are in the app at once: the pool
		// needs clients connections.
		m.gather.Store(newGathering(clients))
		var wg sync.WaitGroup
		errs := make(chan error, clients)
		for range clients {
			wg.Go(func() {
				res, err := c.Get("http://reviews/app/fwd/gather")
				if err != nil {
					errs <- err
					return
				}
				b, err := io.ReadAll(res.Body)
				res.Body.Close()
				if err == nil && (res.StatusCode != http.StatusOK || string(b) != "gathered") {
					err = fmt.Errorf("%s %q", res.Status, b)
				}
				if err != nil {
					errs <- err
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatal(err)
		}
	}
	burst()
	first := len(pod.tunnels())
	if first < clients {
		t.Fatalf("first burst: %d upstream streams for %d concurrent requests", first, clients)
	}
	for range 3 {
		burst()
	}
	// A connection goes back to its pool just after its response body
	// ended, which may be after the client saw the response: a request of
	// the next burst may find its connection not yet back. A few such
	// races dial anew; a pool keeping fewer connections than it served
	// redials most of each burst.
	if again := len(pod.tunnels()) - first; again > clients/4 {
		t.Errorf("%d more upstream streams dialled over 3 bursts of the same %d concurrent requests, want at most %d: the pool closes connections it needs again", again, clients, clients/4)
	}
}
