package upstream

import (
	"net/netip"
	"sync"
	"testing"
	"time"
)

// zones builds one priority of localities with the given weights, each
// with hosts given as (healthy, unhealthy) counts.
func zones(spec ...[3]int) (*Assignment, [][]Endpoint) {
	a := &Assignment{ClusterName: "c", OverprovisioningFactor: DefaultOverprovisioning, Priorities: [][]Locality{nil}}
	var byLoc [][]Endpoint
	i := 0
	for z, s := range spec {
		var eps []Endpoint
		for range s[1] {
			i++
			eps = append(eps, ep(i, 1))
		}
		for range s[2] {
			i++
			eps = append(eps, withHealth(ep(i, 1), Unhealthy))
		}
		a.Priorities[0] = append(a.Priorities[0], Locality{Region: "r", Zone: string(rune('a' + z)), Weight: uint32(s[0]), Endpoints: eps})
		byLoc = append(byLoc, eps)
	}
	return a, byLoc
}

func TestLocalityWeighted(t *testing.T) {
	const n = 20000
	for _, tc := range []struct {
		name     string
		kind     LBKind
		weighted bool
		spec     [][3]int // weight, healthy, unhealthy
		want     []float64
	}{
		// Istio's distribute {a: 80, b: 20}; zone b has 4 hosts, a 1:
		// the split is by locality, not by host count.
		{"distribute 80/20", RoundRobin, true, [][3]int{{80, 1, 0}, {20, 4, 0}}, []float64{0.8, 0.2}},
		{"distribute 80/20 random", Random, true, [][3]int{{80, 1, 0}, {20, 4, 0}}, []float64{0.8, 0.2}},
		{"distribute 80/20 least request", LeastRequest, true, [][3]int{{80, 1, 0}, {20, 4, 0}}, []float64{0.8, 0.2}},
		{"distribute 80/20 ring hash", RingHash, true, [][3]int{{80, 1, 0}, {20, 4, 0}}, []float64{0.8, 0.2}},
		{"distribute 80/20 maglev", Maglev, true, [][3]int{{80, 1, 0}, {20, 4, 0}}, []float64{0.8, 0.2}},
		// Without locality weighting the weights are ignored: by host.
		{"not weighted", RoundRobin, false, [][3]int{{80, 1, 0}, {20, 4, 0}}, []float64{0.2, 0.8}},
		// Zone a half healthy: 50 × min(1, 1.4 × 1/2) = 35 against 50.
		{"half-healthy locality", RoundRobin, true, [][3]int{{50, 1, 1}, {50, 2, 0}}, []float64{35.0 / 85, 50.0 / 85}},
		// Envoy's documented table: X weight 1, Y weight 2 (all
		// available), factor 1.4; X's availability → X's share.
		{"envoy table X 100%", RoundRobin, true, [][3]int{{1, 20, 0}, {2, 20, 0}}, []float64{1.0 / 3, 2.0 / 3}},
		{"envoy table X 70%", RoundRobin, true, [][3]int{{1, 14, 6}, {2, 20, 0}}, []float64{0.98 / 2.98, 2 / 2.98}},
		{"envoy table X 50%", RoundRobin, true, [][3]int{{1, 10, 10}, {2, 20, 0}}, []float64{0.7 / 2.7, 2 / 2.7}},
		{"envoy table X 25%", RoundRobin, true, [][3]int{{1, 5, 15}, {2, 20, 0}}, []float64{0.35 / 2.35, 2 / 2.35}},
		{"envoy table X 0%", RoundRobin, true, [][3]int{{1, 0, 20}, {2, 20, 0}}, []float64{0, 1}},
		// A locality without weight gets nothing.
		{"zero weight", RoundRobin, true, [][3]int{{0, 3, 0}, {1, 1, 0}}, []float64{0, 1}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a, byLoc := zones(tc.spec...)
			c := cluster(tc.kind)
			c.LB.LocalityWeighted = tc.weighted
			got := counts(t, NewBalancer(c, a), n, func(i int) PickRequest {
				return PickRequest{Random: mix(uint64(i), 11), Hash: mix(uint64(i), 12), HasHash: true}
			})
			for z, eps := range byLoc {
				s := 0.0
				for _, e := range eps {
					s += share(got, e, n)
				}
				tol := 0.015
				if tc.kind == RingHash || tc.kind == Maglev {
					tol = 0.04
				}
				near(t, "zone "+string(rune('a'+z)), s, tc.want[z], tol)
			}
		})
	}
}

func TestLocalityFailoverPriorities(t *testing.T) {
	// Istio's failover: the client's zone at priority 0, the same region
	// at 1, other regions at 2. With the local zone fully ejected traffic
	// goes to priority 1, not 2.
	local, region, remote := ep(1, 1), ep(2, 1), ep(3, 1)
	a := &Assignment{ClusterName: "c", OverprovisioningFactor: DefaultOverprovisioning, Priorities: [][]Locality{
		{{Region: "us", Zone: "a", Endpoints: []Endpoint{local}}},
		{{Region: "us", Zone: "b", Endpoints: []Endpoint{region}}},
		{{Region: "eu", Zone: "c", Endpoints: []Endpoint{remote}}},
	}}
	b := NewBalancer(cluster(RoundRobin), a)
	b.now = func() time.Time { return testNow }
	got := counts(t, b, 1000, seq)
	if got[local.Addr] != 1000 {
		t.Fatalf("all healthy: %v, want all on the local zone", got)
	}
	h, _ := b.Host(local.Addr)
	b.Eject(h, testNow.Add(time.Minute))
	got = counts(t, b, 1000, seq)
	if got[region.Addr] != 1000 {
		t.Fatalf("local zone ejected: %v, want all on the same region", got)
	}
}

func TestAttemptedAvoided(t *testing.T) {
	eps := []Endpoint{ep(1, 1), ep(2, 1), ep(3, 1)}
	for _, k := range []LBKind{RoundRobin, Random, LeastRequest, RingHash, Maglev} {
		b := NewBalancer(cluster(k), oneLevel(eps...))
		for i := range 300 {
			r := PickRequest{Random: mix(uint64(i), 1), Hash: mix(uint64(i), 2), HasHash: true}
			first, _ := b.Pick(r)
			r.Attempted = []netip.AddrPort{first.Endpoint.Addr}
			second, ok := b.Pick(r)
			if !ok || second == first {
				t.Fatalf("%v pick %d: retry got %v again", k, i, first.Endpoint.Addr)
			}
			r.Attempted = append(r.Attempted, second.Endpoint.Addr)
			third, _ := b.Pick(r)
			if third == first || third == second {
				t.Fatalf("%v pick %d: third try repeated an attempted host", k, i)
			}
			// Everything tried: a tried host is better than none.
			r.Attempted = append(r.Attempted, third.Endpoint.Addr)
			if _, ok := b.Pick(r); !ok {
				t.Fatalf("%v: no host when all were tried", k)
			}
		}
	}
	// The untried host is in the next priority level: still preferred.
	a := &Assignment{ClusterName: "c", OverprovisioningFactor: 140, Priorities: [][]Locality{
		{{Endpoints: []Endpoint{eps[0]}}}, {{Endpoints: []Endpoint{eps[1]}}},
	}}
	b := NewBalancer(cluster(RoundRobin), a)
	if h, _ := b.Pick(PickRequest{Attempted: []netip.AddrPort{eps[0].Addr}}); h.Endpoint.Addr != eps[1].Addr {
		t.Fatalf("retry went to %v, want the untried host of priority 1", h.Endpoint.Addr)
	}
}

func TestEjection(t *testing.T) {
	eps := []Endpoint{ep(1, 1), ep(2, 1), ep(3, 1)}
	for _, k := range []LBKind{RoundRobin, Random, LeastRequest, RingHash, Maglev} {
		b := NewBalancer(cluster(k), oneLevel(eps...))
		now := testNow
		b.now = func() time.Time { return now }
		h, _ := b.Host(eps[1].Addr)
		b.Eject(h, now.Add(10*time.Second))
		if !h.Ejected(now) || h.Ejected(now.Add(10*time.Second)) {
			t.Fatalf("%v: Ejected wrong around the ejection's end", k)
		}
		req := func(i int) PickRequest {
			return PickRequest{Random: mix(uint64(i), 1), Hash: mix(uint64(i), 2), HasHash: true}
		}
		if got := counts(t, b, 600, req); got[eps[1].Addr] != 0 {
			t.Fatalf("%v: ejected host picked: %v", k, got)
		}
		// The clock passes the ejection's end: the host is back.
		now = now.Add(10 * time.Second)
		if got := counts(t, b, 600, req); got[eps[1].Addr] == 0 {
			t.Fatalf("%v: host not back after its ejection ended: %v", k, got)
		}
		// All ejected, no panic threshold: no host (the proxy answers
		// "no healthy upstream").
		for _, e := range eps {
			h, _ := b.Host(e.Addr)
			b.Eject(h, now.Add(time.Hour))
		}
		if h, ok := b.Pick(req(0)); ok {
			t.Fatalf("%v: picked %v with every host ejected", k, h.Endpoint.Addr)
		}
		// Ejecting until a past time returns the host at once.
		b.Eject(h, now.Add(-time.Second))
		if got, ok := b.Pick(req(0)); !ok || got != h {
			t.Fatalf("%v: un-ejected host not picked", k)
		}
	}
	// A host of another balancer is ignored.
	b1 := NewBalancer(cluster(RoundRobin), oneLevel(eps...))
	b2 := NewBalancer(cluster(RoundRobin), oneLevel(eps...))
	h, _ := b2.Host(eps[0].Addr)
	if b1.Eject(h, time.Now().Add(time.Hour)) || h.Ejected(time.Now()) {
		t.Fatal("a balancer ejected another balancer's host")
	}
}

// TestConcurrentPick runs picks, request accounting and ejections at once;
// run with -race.
func TestConcurrentPick(t *testing.T) {
	eps := []Endpoint{ep(1, 1), ep(2, 2), ep(3, 3), ep(4, 1)}
	for _, k := range []LBKind{RoundRobin, LeastRequest, RingHash} {
		b := NewBalancer(cluster(k), oneLevel(eps...))
		var wg sync.WaitGroup
		for g := range 4 {
			wg.Go(func() {
				for i := range 2000 {
					h, ok := b.Pick(PickRequest{Random: mix(uint64(i), uint64(g)), Hash: uint64(i), HasHash: true})
					if !ok {
						t.Error("no host")
						return
					}
					h.Begin()
					h.End()
				}
			})
		}
		wg.Go(func() {
			for i := range 50 {
				h, _ := b.Host(eps[i%4].Addr)
				b.Eject(h, time.Now().Add(time.Duration(i%3)*time.Millisecond))
			}
		})
		// A successor built and used while the first is ejecting.
		wg.Go(func() {
			next := b.Update(cluster(k), oneLevel(eps...))
			for i := range 2000 {
				if h, ok := next.Pick(PickRequest{Random: uint64(i)}); ok {
					h.Begin()
					h.End()
				}
			}
		})
		wg.Wait()
		for _, e := range eps {
			if h, _ := b.Host(e.Addr); h.Active() != 0 {
				t.Fatalf("%v: %v has %d active after all ended", k, e.Addr, h.Active())
			}
		}
	}
}

func TestUpdateCarriesLiveState(t *testing.T) {
	eps := []Endpoint{ep(1, 1), ep(2, 1), ep(3, 1)}
	old := NewBalancer(cluster(LeastRequest), oneLevel(eps...))
	now := testNow
	old.now = func() time.Time { return now }
	busy, _ := old.Host(eps[0].Addr)
	busy.Begin()
	busy.Begin()
	ejected, _ := old.Host(eps[1].Addr)
	old.Eject(ejected, now.Add(time.Minute))

	// An endpoint update adds a host: the busy host is still busy, the
	// ejected one still ejected.
	next := old.Update(cluster(LeastRequest), oneLevel(append(append([]Endpoint{}, eps...), ep(4, 1))...))
	if h, _ := next.Host(eps[0].Addr); h.Active() != 2 {
		t.Fatalf("requests in flight after Update: %d, want 2", h.Active())
	}
	got := counts(t, next, 1000, seq)
	if got[eps[1].Addr] != 0 {
		t.Fatalf("ejected host picked after Update: %v", got)
	}
	// A request begun on the old balancer ends after the update.
	busy.End()
	if h, _ := next.Host(eps[0].Addr); h.Active() != 1 {
		t.Fatalf("End on the old host not seen by the new: %d", h.Active())
	}
	// A host from the old balancer (a request that started before the
	// update) can be ejected through the new one.
	if !next.Eject(busy, now.Add(time.Second)) || !busy.Ejected(now) {
		t.Fatal("host of the previous balancer not ejected through the new one")
	}
	next.Eject(busy, now)
	// An ejection through the old balancer reaches the new one.
	h3, _ := old.Host(eps[2].Addr)
	old.Eject(h3, now.Add(time.Minute))
	if got := counts(t, next, 1000, seq); got[eps[2].Addr] != 0 {
		t.Fatalf("ejection through the previous balancer ignored: %v", got)
	}
	// The ejections end on the clock.
	now = now.Add(time.Minute)
	if got := counts(t, next, 1000, seq); got[eps[1].Addr] == 0 || got[eps[2].Addr] == 0 {
		t.Fatalf("ejections did not end: %v", got)
	}
	// Same address, another identity (a new pod got the IP): fresh state.
	moved := eps[0]
	moved.Identity = "spiffe://cluster.local/ns/other/sa/x"
	fresh := next.Update(cluster(LeastRequest), oneLevel(moved))
	if h, _ := fresh.Host(moved.Addr); h.Active() != 0 {
		t.Fatalf("another workload at the same address inherited %d requests", h.Active())
	}
}
