package upstream

import (
	"fmt"
	"net/netip"
	"testing"
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
