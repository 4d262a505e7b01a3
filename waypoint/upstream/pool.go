package upstream

import (
	"math/bits"
	"slices"
	"sync/atomic"
)

// pool is a group of hosts one pick chooses among with the cluster's
// policy.
type pool struct {
	hosts []*Host
	w     *weighted
	// equal is true when every host has the same weight: LEAST_REQUEST
	// then compares uniformly drawn hosts, as Envoy does.
	equal  bool
	ring   *ring
	maglev *maglev
}

// newPool builds a pool. hashWeights, when not nil, are the normalised
// weights the consistent-hash tables use instead of the endpoints' own.
func (b *Balancer) newPool(hosts []*Host, hashWeights []float64) *pool {
	p := &pool{hosts: hosts, equal: true}
	ws := make([]uint64, len(hosts))
	for i, h := range hosts {
		ws[i] = uint64(max(1, h.Endpoint.Weight))
		if ws[i] != ws[0] {
			p.equal = false
		}
	}
	p.w = newWeighted(ws)
	switch b.lb.Kind {
	case RingHash, Maglev:
		if hashWeights == nil {
			hashWeights = make([]float64, len(hosts))
			for i := range ws {
				hashWeights[i] = float64(ws[i]) / float64(p.w.total)
			}
		}
		if b.lb.Kind == RingHash {
			p.ring = newRing(hosts, hashWeights, b.lb.MinimumRingSize, b.lb.MaximumRingSize)
		} else {
			p.maglev = newMaglev(hosts, hashWeights, b.lb.MaglevTableSize)
		}
	}
	return p
}

func (b *Balancer) pickPool(p *pool, r PickRequest) *Host {
	n := uint64(len(p.hosts))
	if n == 1 {
		return p.hosts[0]
	}
	x := mix(r.Random, saltHost)
	switch b.lb.Kind {
	case RoundRobin:
		return p.hosts[p.w.next()]
	case Random:
		// Envoy's RANDOM ignores endpoint weights.
		return p.hosts[x%n]
	case LeastRequest:
		return p.leastRequest(x, b.lb.ChoiceCount)
	case RingHash, Maglev:
		h := x
		if r.HasHash {
			h = r.Hash
		}
		if p.ring != nil {
			return p.ring.get(h)
		}
		if p.maglev != nil {
			return p.maglev.get(h)
		}
	}
	return p.hosts[x%n]
}

// leastRequest draws choices hosts and keeps the one with the fewest
// requests in flight. With equal weights the draws are uniform (Envoy's
// power of two choices). With unequal weights they are drawn by weight and
// compared by requests in flight per unit of weight, so that at rest the
// split follows the weights, as Envoy's weight/(active+1) schedule does,
// and under load a host is favoured by how far it is below its share.
func (p *pool) leastRequest(x uint64, choices uint32) *Host {
	n := uint64(len(p.hosts))
	if choices < 2 {
		choices = DefaultChoiceCount
	}
	if p.equal {
		best := p.hosts[x%n]
		for range choices - 1 {
			x = mix(x, saltHost)
			if c := p.hosts[x%n]; c.live.active.Load() < best.live.active.Load() {
				best = c
			}
		}
		return best
	}
	best := p.hosts[p.w.at(x)]
	ba, bw := uint64(max(0, best.live.active.Load())), uint64(best.Endpoint.Weight)
	for range choices - 1 {
		x = mix(x, saltHost)
		c := p.hosts[p.w.at(x)]
		ca, cw := uint64(max(0, c.live.active.Load())), uint64(c.Endpoint.Weight)
		// ca/cw < ba/bw without division; weights are below 2^32 and
		// counts far below 2^32, so the products do not overflow.
		if ca*bw < ba*cw {
			best, ba, bw = c, ca, cw
		}
	}
	return best
}

// weighted maps numbers onto indexes in proportion to weights, either
// from a drawn number (at) or in a weighted round-robin order (next).
type weighted struct {
	cum    []uint64 // cum[i] is the sum of the weights of 0..i
	total  uint64
	stride uint64
	pos    atomic.Uint64
}

func newWeighted(ws []uint64) *weighted {
	w := &weighted{cum: make([]uint64, len(ws))}
	for i, v := range ws {
		w.total += v
		w.cum[i] = w.total
	}
	if w.total == 0 {
		return w
	}
	// The round-robin order walks the weight space [0, total) with a
	// stride coprime to total near total/φ: every total consecutive picks
	// visit each unit of weight exactly once (exact shares), and the
	// golden-ratio stride spreads each host's units evenly over the cycle
	// (a low-discrepancy sequence), so picks of one host are interleaved
	// with the others' rather than bunched.
	w.stride = max(1, uint64(float64(w.total)*0.6180339887498949))
	for gcd(w.stride, w.total) != 1 {
		w.stride++
	}
	return w
}

// at returns the index whose weight range holds x mod total.
func (w *weighted) at(x uint64) int {
	i, _ := slices.BinarySearch(w.cum, x%w.total+1)
	return i
}

// next returns the next index in round-robin order; safe for concurrent
// use.
func (w *weighted) next() int {
	n := (w.pos.Add(1) - 1) % w.total
	hi, lo := bits.Mul64(n, w.stride)
	return w.at(bits.Rem64(hi, lo, w.total))
}

func gcd(a, b uint64) uint64 {
	for b != 0 {
		a, b = b, a%b
	}
	return a
}
