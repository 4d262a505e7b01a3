package upstream

import (
	"fmt"
	"net/netip"
	"testing"
	"time"
)

// ep returns a healthy endpoint 10.0.<i/256>.<i%256>:8080 with weight w.
func ep(i int, w uint32) Endpoint {
	return Endpoint{
		Addr:     netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 0, byte(i >> 8), byte(i)}), 8080),
		Weight:   w,
		Identity: fmt.Sprintf("spiffe://cluster.local/ns/default/sa/sa%d", i),
	}
}

func withHealth(e Endpoint, h Health) Endpoint {
	e.Health = h
	return e
}

// oneLevel is an assignment with one priority and one locality.
func oneLevel(eps ...Endpoint) *Assignment {
	return &Assignment{ClusterName: "c", OverprovisioningFactor: DefaultOverprovisioning,
		Priorities: [][]Locality{{{Weight: 1, Endpoints: eps}}}}
}

func cluster(kind LBKind) *Cluster {
	c := &Cluster{Name: "c", LB: LoadBalancing{Kind: kind, ChoiceCount: DefaultChoiceCount,
		MinimumRingSize: DefaultMinimumRingSize, MaximumRingSize: DefaultMaximumRingSize,
		MaglevTableSize: DefaultMaglevTableSize}}
	return c
}

// counts picks n times with Random drawn from a fixed sequence and counts
// the endpoints picked, by address.
func counts(t *testing.T, b *Balancer, n int, req func(i int) PickRequest) map[netip.AddrPort]int {
	t.Helper()
	out := map[netip.AddrPort]int{}
	for i := range n {
		h, ok := b.Pick(req(i))
		if !ok {
			t.Fatalf("pick %d: no host", i)
		}
		out[h.Endpoint.Addr]++
	}
	return out
}

func seq(i int) PickRequest { return PickRequest{Random: mix(uint64(i), 99)} }

func TestRoundRobinWeightedExact(t *testing.T) {
	b := NewBalancer(cluster(RoundRobin), oneLevel(ep(1, 1), ep(2, 2), ep(3, 7)))
	// Every cycle of total weight (10) picks visits each host exactly by
	// its weight, so 100 cycles give exact ratios.
	got := counts(t, b, 1000, seq)
	for _, w := range []struct {
		i, want int
	}{{1, 100}, {2, 200}, {3, 700}} {
		if g := got[ep(w.i, 1).Addr]; g != w.want {
			t.Errorf("host %d: %d picks, want %d (all: %v)", w.i, g, w.want, got)
		}
	}
}

func TestRoundRobinInterleaves(t *testing.T) {
	b := NewBalancer(cluster(RoundRobin), oneLevel(ep(1, 1), ep(2, 1), ep(3, 1)))
	// Equal weights: every window of three picks has the three hosts.
	for c := range 10 {
		seen := map[netip.AddrPort]bool{}
		for range 3 {
			h, _ := b.Pick(PickRequest{Random: uint64(c)})
			seen[h.Endpoint.Addr] = true
		}
		if len(seen) != 3 {
			t.Fatalf("cycle %d saw %d hosts, want 3", c, len(seen))
		}
	}
	// Weights 1 and 3: the weight-1 host never comes twice in a row.
	b = NewBalancer(cluster(RoundRobin), oneLevel(ep(1, 1), ep(2, 3)))
	prev := netip.AddrPort{}
	for i := range 40 {
		h, _ := b.Pick(PickRequest{})
		if h.Endpoint.Addr == ep(1, 1).Addr && prev == h.Endpoint.Addr {
			t.Fatalf("pick %d: light host twice in a row", i)
		}
		prev = h.Endpoint.Addr
	}
}

func TestNoEndpoints(t *testing.T) {
	for _, a := range []*Assignment{nil, {ClusterName: "c"}, oneLevel()} {
		for _, k := range []LBKind{RoundRobin, Random, LeastRequest, RingHash, Maglev} {
			if h, ok := NewBalancer(cluster(k), a).Pick(PickRequest{Random: 7, Hash: 1, HasHash: true}); ok {
				t.Errorf("%v %v: picked %v from no endpoints", k, a, h.Endpoint.Addr)
			}
		}
	}
}

func BenchmarkPick(b *testing.B) {
	var eps []Endpoint
	for i := range 50 {
		eps = append(eps, ep(i, uint32(1+i%3)))
	}
	for _, k := range []LBKind{RoundRobin, Random, LeastRequest, RingHash, Maglev} {
		b.Run(k.String(), func(b *testing.B) {
			bal := NewBalancer(cluster(k), oneLevel(eps...))
			b.ReportAllocs()
			i := uint64(0)
			for b.Loop() {
				i++
				if _, ok := bal.Pick(PickRequest{Random: i, Hash: i * 0x9e3779b97f4a7c15, HasHash: true}); !ok {
					b.Fatal("no host")
				}
			}
		})
	}
}

// share is the fraction of n picks that went to e.
func share(got map[netip.AddrPort]int, e Endpoint, n int) float64 {
	return float64(got[e.Addr]) / float64(n)
}

func near(t *testing.T, what string, got, want, tol float64) {
	t.Helper()
	if got < want-tol || got > want+tol {
		t.Errorf("%s: %.4f, want %.4f ± %.4f", what, got, want, tol)
	}
}

func TestRandomUniform(t *testing.T) {
	// RANDOM ignores weights, as Envoy's does.
	eps := []Endpoint{ep(1, 1), ep(2, 5), ep(3, 1), ep(4, 1)}
	b := NewBalancer(cluster(Random), oneLevel(eps...))
	const n = 40000
	got := counts(t, b, n, seq)
	for _, e := range eps {
		near(t, e.Addr.String(), share(got, e, n), 0.25, 0.015)
	}
}

func TestLeastRequestPowerOfTwo(t *testing.T) {
	eps := []Endpoint{ep(1, 1), ep(2, 1), ep(3, 1), ep(4, 1)}
	b := NewBalancer(cluster(LeastRequest), oneLevel(eps...))
	const n = 40000
	// At rest: uniform.
	got := counts(t, b, n, seq)
	for _, e := range eps {
		near(t, "at rest "+e.Addr.String(), share(got, e, n), 0.25, 0.015)
	}
	// Host 1 busy: it wins only when both draws land on it, (1/4)².
	busy, _ := b.Host(eps[0].Addr)
	for range 10 {
		busy.Begin()
	}
	got = counts(t, b, n, seq)
	near(t, "busy host", share(got, eps[0], n), 1.0/16, 0.01)
	for range 10 {
		busy.End()
	}
	if busy.Active() != 0 {
		t.Fatalf("active %d after matching Begin/End", busy.Active())
	}
	// Three choices: the busy host only when drawn three times.
	c := cluster(LeastRequest)
	c.LB.ChoiceCount = 3
	b = NewBalancer(c, oneLevel(eps...))
	busy, _ = b.Host(eps[0].Addr)
	busy.Begin()
	got = counts(t, b, n, seq)
	near(t, "busy host, 3 choices", share(got, eps[0], n), 1.0/64, 0.006)
}

func TestLeastRequestWeighted(t *testing.T) {
	eps := []Endpoint{ep(1, 1), ep(2, 3)}
	b := NewBalancer(cluster(LeastRequest), oneLevel(eps...))
	const n = 40000
	// At rest the split follows the weights.
	got := counts(t, b, n, seq)
	near(t, "weight 1 at rest", share(got, eps[0], n), 0.25, 0.015)
	// The heavy host with 6 requests in flight (2 per unit of weight)
	// loses to the light one with 1 (1 per unit) whenever both are drawn.
	heavy, _ := b.Host(eps[1].Addr)
	light, _ := b.Host(eps[0].Addr)
	for range 6 {
		heavy.Begin()
	}
	light.Begin()
	got = counts(t, b, n, seq)
	// P(light) = 1 − P(both draws heavy) = 1 − (3/4)².
	near(t, "light host under load", share(got, eps[0], n), 1-9.0/16, 0.015)
}

func TestUnhealthyNeverPicked(t *testing.T) {
	eps := []Endpoint{ep(1, 1), withHealth(ep(2, 1), Unhealthy), ep(3, 1), withHealth(ep(4, 9), Unhealthy)}
	for _, k := range []LBKind{RoundRobin, Random, LeastRequest, RingHash, Maglev} {
		b := NewBalancer(cluster(k), oneLevel(eps...))
		got := counts(t, b, 2000, func(i int) PickRequest {
			return PickRequest{Random: mix(uint64(i), 5), Hash: mix(uint64(i), 6), HasHash: i%2 == 0}
		})
		if got[eps[1].Addr]+got[eps[3].Addr] != 0 {
			t.Errorf("%v picked an unhealthy endpoint: %v", k, got)
		}
		if got[eps[0].Addr] == 0 || got[eps[2].Addr] == 0 {
			t.Errorf("%v left a healthy endpoint unused: %v", k, got)
		}
	}
	// All unhealthy: nothing, also with the panic threshold set (panic
	// mode brings back ejected hosts, never EDS-unhealthy ones).
	c := cluster(RoundRobin)
	c.LB.HealthyPanicThreshold = 50
	b := NewBalancer(c, oneLevel(withHealth(ep(1, 1), Unhealthy)))
	if h, ok := b.Pick(PickRequest{}); ok {
		t.Fatalf("picked unhealthy %v", h.Endpoint.Addr)
	}
}

func TestDegradedOnlyWhenHealthyCannotCarry(t *testing.T) {
	const n = 10000
	// Healthy hosts carry everything (3 of 4 × 140% ≥ 100%): the
	// degraded one gets nothing.
	b := NewBalancer(cluster(RoundRobin), oneLevel(ep(1, 1), ep(2, 1), ep(3, 1), withHealth(ep(4, 1), Degraded)))
	got := counts(t, b, n, seq)
	if got[ep(4, 1).Addr] != 0 {
		t.Errorf("degraded host picked %d times with healthy hosts available", got[ep(4, 1).Addr])
	}
	// No healthy host: the degraded ones take everything.
	b = NewBalancer(cluster(RoundRobin), oneLevel(withHealth(ep(1, 1), Unhealthy), withHealth(ep(2, 1), Degraded)))
	got = counts(t, b, n, seq)
	if got[ep(2, 1).Addr] != n {
		t.Errorf("degraded host: %v, want all %d picks", got, n)
	}
	// One healthy of four (140% × 1/4 = 35%): the three degraded hosts
	// take the other 65%, as in Envoy.
	b = NewBalancer(cluster(Random), oneLevel(ep(1, 1), withHealth(ep(2, 1), Degraded), withHealth(ep(3, 1), Degraded), withHealth(ep(4, 1), Degraded)))
	got = counts(t, b, n, seq)
	near(t, "healthy share", share(got, ep(1, 1), n), 0.35, 0.02)
}

// levels builds an assignment of priority levels of hosts given as
// (healthy, unhealthy) counts; host addresses are numbered across levels.
func levels(factor uint32, spec ...[2]int) (*Assignment, [][]Endpoint) {
	a := &Assignment{ClusterName: "c", OverprovisioningFactor: factor}
	var byLevel [][]Endpoint
	i := 0
	for _, s := range spec {
		var eps []Endpoint
		for range s[0] {
			i++
			eps = append(eps, ep(i, 1))
		}
		for range s[1] {
			i++
			eps = append(eps, withHealth(ep(i, 1), Unhealthy))
		}
		a.Priorities = append(a.Priorities, []Locality{{Weight: 1, Endpoints: eps}})
		byLevel = append(byLevel, eps)
	}
	return a, byLevel
}

func TestPrioritySpillOver(t *testing.T) {
	const n = 20000
	for _, tc := range []struct {
		name   string
		factor uint32
		spec   [][2]int
		want   []float64 // share per level
	}{
		{"P0 all healthy keeps all", 140, [][2]int{{4, 0}, {4, 0}}, []float64{1, 0}},
		{"P0 75% healthy ×1.4 caps at 100", 140, [][2]int{{3, 1}, {4, 0}}, []float64{1, 0}},
		{"P0 50% healthy ×1.4 keeps 70%", 140, [][2]int{{2, 2}, {4, 0}}, []float64{0.7, 0.3}},
		{"P0 50% healthy, factor 100 keeps 50%", 100, [][2]int{{2, 2}, {4, 0}}, []float64{0.5, 0.5}},
		{"P0 25% ×1.4 = 35%, P1 25% ×1.4 = 35%, P2 rest", 140, [][2]int{{1, 3}, {1, 3}, {4, 0}}, []float64{0.35, 0.35, 0.3}},
		{"P0 none healthy: P1 takes all", 140, [][2]int{{0, 4}, {2, 0}}, []float64{0, 1}},
		// Both levels at 20% × 1.4 = 28%: normalised to 56, each 50%.
		{"normalised below 100", 140, [][2]int{{1, 4}, {1, 4}}, []float64{0.5, 0.5}},
		{"empty P0 level", 140, [][2]int{{0, 0}, {3, 0}}, []float64{0, 1}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a, byLevel := levels(tc.factor, tc.spec...)
			b := NewBalancer(cluster(RoundRobin), a)
			got := counts(t, b, n, seq)
			for p, eps := range byLevel {
				s := 0.0
				for _, e := range eps {
					s += share(got, e, n)
				}
				near(t, fmt.Sprintf("level %d", p), s, tc.want[p], 0.015)
			}
		})
	}
}

func TestPanicThreshold(t *testing.T) {
	// Two of four ejected is 50% available: not below a threshold of 50.
	// Three of four is 25%: panic mode brings the ejected hosts back.
	c := cluster(RoundRobin)
	c.LB.HealthyPanicThreshold = 50
	eps := []Endpoint{ep(1, 1), ep(2, 1), ep(3, 1), ep(4, 1)}
	b := NewBalancer(c, oneLevel(eps...))
	farFuture := testNow.Add(3600e9)
	b.now = func() time.Time { return testNow }
	for _, e := range eps[:2] {
		h, _ := b.Host(e.Addr)
		b.Eject(h, farFuture)
	}
	got := counts(t, b, 400, seq)
	if got[eps[0].Addr]+got[eps[1].Addr] != 0 {
		t.Fatalf("ejected hosts picked at 50%% available: %v", got)
	}
	h, _ := b.Host(eps[2].Addr)
	b.Eject(h, farFuture)
	got = counts(t, b, 400, seq)
	for _, e := range eps {
		if got[e.Addr] != 100 {
			t.Fatalf("panic mode: %v, want each host 100 picks", got)
		}
	}
}

var testNow = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

func TestPickAllocationFree(t *testing.T) {
	a, _ := zones([3]int{80, 3, 1}, [3]int{20, 4, 0})
	a.Priorities = append(a.Priorities, []Locality{{Weight: 1, Endpoints: []Endpoint{ep(100, 2), withHealth(ep(101, 1), Degraded)}}})
	for _, k := range []LBKind{RoundRobin, Random, LeastRequest, RingHash, Maglev} {
		for _, lw := range []bool{false, true} {
			c := cluster(k)
			c.LB.LocalityWeighted = lw
			b := NewBalancer(c, a)
			h, _ := b.Host(ep(2, 1).Addr)
			b.Eject(h, time.Now().Add(time.Hour)) // the clock is read on every pick
			tried := []netip.AddrPort{ep(1, 1).Addr, ep(3, 1).Addr}
			i := uint64(0)
			if n := testing.AllocsPerRun(200, func() {
				i++
				b.Pick(PickRequest{Random: i, Hash: i * 7919, HasHash: i%2 == 0, Attempted: tried})
			}); n != 0 {
				t.Errorf("%v locality weighted %v: %.1f allocations per pick", k, lw, n)
			}
		}
	}
}

func TestBalancers(t *testing.T) {
	c1, c2 := cluster(RoundRobin), cluster(LeastRequest)
	c1.Name, c1.EDSServiceName = "c1", "c1"
	c2.Name, c2.EDSServiceName = "c2", "eds-c2"
	a1, a2 := oneLevel(ep(1, 1)), oneLevel(ep(2, 1), ep(3, 1))
	first := Balancers(nil, map[string]*Cluster{"c1": c1, "c2": c2}, map[string]*Assignment{"c1": a1, "eds-c2": a2})
	if h, ok := first["c2"].Pick(PickRequest{}); !ok || h.Endpoint.Addr != ep(2, 1).Addr && h.Endpoint.Addr != ep(3, 1).Addr {
		t.Fatalf("c2 not fed by its EDS service name's assignment")
	}
	busy, _ := first["c2"].Host(ep(2, 1).Addr)
	busy.Begin()
	// c1 unchanged: the same balancer; c2's endpoints changed: a new
	// balancer that remembers the request in flight; c3 without endpoints.
	c3 := cluster(Random)
	c3.Name, c3.EDSServiceName = "c3", "c3"
	a2b := oneLevel(ep(2, 1), ep(4, 1))
	second := Balancers(first, map[string]*Cluster{"c1": c1, "c2": c2, "c3": c3}, map[string]*Assignment{"c1": a1, "eds-c2": a2b})
	if second["c1"] != first["c1"] {
		t.Error("unchanged cluster rebuilt")
	}
	if h, _ := second["c2"].Host(ep(2, 1).Addr); second["c2"] == first["c2"] || h.Active() != 1 {
		t.Error("changed cluster not rebuilt with its live state")
	}
	if _, ok := second["c3"].Pick(PickRequest{}); ok {
		t.Error("cluster without an assignment picked an endpoint")
	}
}
