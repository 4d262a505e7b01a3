package upstream

import (
	"fmt"
	"testing"
)

// hashOwners maps n request hashes to the hosts a balancer picks for them.
func hashOwners(t *testing.T, b *Balancer, n int) []string {
	t.Helper()
	out := make([]string, n)
	for i := range n {
		h, ok := b.Pick(PickRequest{Random: uint64(i), Hash: mix(uint64(i), 77), HasHash: true})
		if !ok {
			t.Fatalf("hash %d: no host", i)
		}
		out[i] = h.Endpoint.Addr.String()
	}
	return out
}

func TestConsistentHash(t *testing.T) {
	const keys = 20000
	var eps []Endpoint
	for i := range 10 {
		eps = append(eps, ep(i+1, 1))
	}
	for _, k := range []LBKind{RingHash, Maglev} {
		t.Run(k.String(), func(t *testing.T) {
			base := hashOwners(t, NewBalancer(cluster(k), oneLevel(eps...)), keys)
			// Same hosts, new balancer (a new snapshot): same picks.
			again := hashOwners(t, NewBalancer(cluster(k), oneLevel(eps...)), keys)
			for i := range base {
				if base[i] != again[i] {
					t.Fatalf("key %d: %s then %s with the same hosts", i, base[i], again[i])
				}
			}
			// Spread: each of 10 hosts owns about a tenth of the keys.
			per := map[string]int{}
			for _, o := range base {
				per[o]++
			}
			for _, e := range eps {
				near(t, "share of "+e.Addr.String(), float64(per[e.Addr.String()])/keys, 0.1, 0.03)
			}
			// One host removed: its keys move (about 1/10), and few
			// others do. (Hosts gain entries as the ring is resized and
			// maglev refills its table, so a few keys of other hosts move
			// too, in Envoy as here.)
			removed := eps[3].Addr.String()
			less := hashOwners(t, NewBalancer(cluster(k), oneLevel(append(append([]Endpoint{}, eps[:3]...), eps[4:]...)...)), keys)
			movedOwn, movedOther := 0, 0
			for i := range base {
				switch {
				case base[i] == removed:
					movedOwn++
				case base[i] != less[i]:
					movedOther++
				}
			}
			t.Logf("removing 1 of 10 hosts moved %.4f (its own) + %.4f (others') of the keys", float64(movedOwn)/keys, float64(movedOther)/keys)
			near(t, "removed host's keys", float64(movedOwn)/keys, 0.1, 0.03)
			if k == RingHash && movedOther != 0 {
				t.Errorf("ring: removing a host moved %d keys of other hosts, want 0", movedOther)
			}
			if f := float64(movedOther) / keys; f > 0.03 {
				t.Errorf("removing 1 of 10 hosts moved %.3f of the other hosts' keys, want at most 0.03", f)
			}
			// One host added: about 1/11 of the keys move, to it.
			more := hashOwners(t, NewBalancer(cluster(k), oneLevel(append(append([]Endpoint{}, eps...), ep(11, 1))...)), keys)
			moved, toNew := 0, 0
			for i := range base {
				if base[i] != more[i] {
					moved++
					if more[i] == ep(11, 1).Addr.String() {
						toNew++
					}
				}
			}
			t.Logf("adding an 11th host moved %.4f of the keys, %.4f to it", float64(moved)/keys, float64(toNew)/keys)
			near(t, "keys moved to the new host", float64(toNew)/keys, 1.0/11, 0.03)
			if f := float64(moved-toNew) / keys; f > 0.03 {
				t.Errorf("adding a host moved %.3f of the keys between other hosts, want at most 0.03", f)
			}
		})
	}
}

func TestConsistentHashWeights(t *testing.T) {
	const keys = 40000
	eps := []Endpoint{ep(1, 1), ep(2, 3)}
	for _, k := range []LBKind{RingHash, Maglev} {
		got := map[string]int{}
		for _, o := range hashOwners(t, NewBalancer(cluster(k), oneLevel(eps...)), keys) {
			got[o]++
		}
		near(t, k.String()+" weight 1 of 4", float64(got[eps[0].Addr.String()])/keys, 0.25, 0.04)
	}
}

func TestConsistentHashWithoutHashIsRandom(t *testing.T) {
	eps := []Endpoint{ep(1, 1), ep(2, 1), ep(3, 1), ep(4, 1)}
	for _, k := range []LBKind{RingHash, Maglev} {
		b := NewBalancer(cluster(k), oneLevel(eps...))
		const n = 20000
		got := counts(t, b, n, func(i int) PickRequest { return PickRequest{Random: mix(uint64(i), 3), Hash: 42} })
		for _, e := range eps {
			near(t, fmt.Sprintf("%v %v", k, e.Addr), share(got, e, n), 0.25, 0.06)
		}
	}
}

func TestRingSize(t *testing.T) {
	eps := []Endpoint{ep(1, 1), ep(2, 1), ep(3, 2)}
	for _, tc := range []struct {
		min, max uint64
		want     int
	}{
		// Lightest share 1/4: ceil(1/4 × 1024) = 256 entries for it, a
		// power of two already, so 1024 in all.
		{1024, 8 << 20, 1024},
		// ceil(1/4 × 10) = 3, rounded up to 4: 16 in all.
		{10, 8 << 20, 16},
		// ceil(1/4 × 1000) = 250, rounded to 256: 1024, bounded by max.
		{1000, 100, 100},
	} {
		c := cluster(RingHash)
		c.LB.MinimumRingSize, c.LB.MaximumRingSize = tc.min, tc.max
		b := NewBalancer(c, oneLevel(eps...))
		r := b.st.Load().levels[0].healthy.all.ring
		if len(r.hashes) != tc.want {
			t.Errorf("ring min %d max %d: %d entries, want %d", tc.min, tc.max, len(r.hashes), tc.want)
		}
	}
	// A weight ratio of 1 to 4e9 (weights a ServiceEntry's author sets)
	// would ask for the largest ring; it stays within 1M entries, and the
	// light host keeps at least one.
	b := NewBalancer(cluster(RingHash), oneLevel(ep(1, 1), ep(2, 4_000_000_000)))
	r := b.st.Load().levels[0].healthy.all.ring
	if len(r.hashes) > 1<<20+1 {
		t.Errorf("ring of %d entries for a skewed weight ratio, want at most 1M", len(r.hashes))
	}
	light := 0
	for _, h := range r.hosts {
		if h.Endpoint.Addr == ep(1, 1).Addr {
			light++
		}
	}
	if light == 0 {
		t.Error("the light host has no ring entry")
	}
	c := cluster(Maglev)
	c.LB.MaglevTableSize = 307
	if m := NewBalancer(c, oneLevel(eps...)).st.Load().levels[0].healthy.all.maglev; len(m.table) != 307 {
		t.Errorf("maglev table %d, want 307", len(m.table))
	}
}
