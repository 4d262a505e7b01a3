package upstream

import (
	"math"
	"net/netip"
)

// state is what picks read: the hosts each priority level offers, grouped
// and weighted, and each level's share of the traffic. It is rebuilt, never
// modified, when the set of available hosts changes (a new snapshot, an
// ejection or its end).
type state struct {
	levels []level
	// healthyLoad[p] and degradedLoad[p] are the percentages of requests
	// sent to priority p's healthy and degraded hosts; together they add
	// up to 100, or are all 0 when no host can be picked.
	healthyLoad, degradedLoad []uint64
	// epoch is the lineage's ejection count the state was built at;
	// nextExpiry the Unix time in nanoseconds at which its earliest
	// ejection ends, 0 for none.
	epoch      uint64
	nextExpiry int64
}

// level is one priority. In panic mode both sources are the level's every
// host that is not unhealthy in EDS, ejected or not.
type level struct {
	healthy, degraded *source
}

// source is one group a priority choice lands on: its hosts, and when
// locality weighting applies, the hosts split by locality with the
// localities' effective weights.
type source struct {
	all        *pool
	localities []*pool
	locWeights *weighted // nil: no locality weighting, pick from all
}

// build computes the state from the assignment and the hosts' ejections
// at now.
func (b *Balancer) build(epoch uint64, now int64) *state {
	st := &state{epoch: epoch}
	a := b.assignment
	if a == nil || len(a.Priorities) == 0 {
		return st
	}
	for i := range b.hosts {
		if u := b.hosts[i].live.ejectedUntil.Load(); u > now && (st.nextExpiry == 0 || u < st.nextExpiry) {
			st.nextExpiry = u
		}
	}
	np := len(a.Priorities)
	st.levels = make([]level, np)
	health := make([]uint64, np)
	degraded := make([]uint64, np)
	// eligible holds each level's hosts not unhealthy in EDS, for panic
	// mode; their pools are built only if a level needs them.
	eligible := make([]hostGroup, np)
	locTotals := make([][]int, np)
	idx := 0
	for p, locs := range a.Priorities {
		g := newGrouping(len(locs), now)
		for li, l := range locs {
			for range l.Endpoints {
				h := &b.hosts[idx]
				idx++
				g.add(li, h)
			}
		}
		if g.total > 0 {
			health[p] = min(100, b.overprovision*uint64(len(g.healthy.all))/uint64(g.total))
			degraded[p] = min(100, b.overprovision*uint64(len(g.degraded.all))/uint64(g.total))
		}
		eligible[p], locTotals[p] = g.eligible, g.locTotal
		if b.inPanic(len(g.healthy.all)+len(g.degraded.all), g.total) {
			s := b.newSource(g.eligible, locs, g.locTotal, false)
			st.levels[p] = level{healthy: s, degraded: s}
			continue
		}
		st.levels[p] = level{
			healthy:  b.newSource(g.healthy, locs, g.locTotal, b.lb.LocalityWeighted),
			degraded: b.newSource(g.degraded, locs, g.locTotal, b.lb.LocalityWeighted),
		}
	}
	st.healthyLoad = make([]uint64, np)
	st.degradedLoad = make([]uint64, np)

	// Envoy's priority loads: a level's health is its available share
	// times the overprovisioning factor, capped at 100; healthy hosts of
	// every level are used before degraded ones; when the levels together
	// are below 100 the loads are scaled up to add up to 100.
	total := uint64(0)
	for p := range np {
		total += health[p] + degraded[p]
	}
	total = min(total, 100)
	if total == 0 {
		// Nothing available. In panic mode Envoy sends everything to the
		// first level, which then uses all of its hosts.
		if b.lb.HealthyPanicThreshold > 0 {
			for p := range np {
				if len(eligible[p].all) > 0 {
					s := b.newSource(eligible[p], a.Priorities[p], locTotals[p], false)
					st.levels[p] = level{healthy: s, degraded: s}
					st.healthyLoad[p] = 100
					break
				}
			}
		}
		return st
	}
	left := uint64(100)
	for p := range np {
		st.healthyLoad[p] = min(left, health[p]*100/total)
		left -= st.healthyLoad[p]
	}
	for p := range np {
		st.degradedLoad[p] = min(left, degraded[p]*100/total)
		left -= st.degradedLoad[p]
	}
	if left > 0 {
		// Rounding: the rest goes to the first level that takes traffic.
		for p := range np {
			if health[p] > 0 {
				st.healthyLoad[p] += left
				left = 0
				break
			}
		}
		for p := 0; left > 0 && p < np; p++ {
			if degraded[p] > 0 {
				st.degradedLoad[p] += left
				left = 0
			}
		}
	}
	return st
}

// inPanic reports whether a level with available of total hosts is below
// the cluster's panic threshold.
func (b *Balancer) inPanic(available, total int) bool {
	t := b.lb.HealthyPanicThreshold
	return t > 0 && total > 0 && float64(available)*100 < t*float64(total)
}

// grouping sorts one priority's hosts by what they can be picked as.
type grouping struct {
	now                         int64
	total                       int
	healthy, degraded, eligible hostGroup
	locTotal                    []int
}

// hostGroup is a list of hosts and the same hosts split by locality.
type hostGroup struct {
	all   []*Host
	byLoc [][]*Host
}

func newGrouping(nloc int, now int64) *grouping {
	return &grouping{
		now:      now,
		healthy:  hostGroup{byLoc: make([][]*Host, nloc)},
		degraded: hostGroup{byLoc: make([][]*Host, nloc)},
		eligible: hostGroup{byLoc: make([][]*Host, nloc)},
		locTotal: make([]int, nloc),
	}
}

func (g *grouping) add(li int, h *Host) {
	g.total++
	g.locTotal[li]++
	// An endpoint EDS calls unhealthy is one zmeshd knows not to be ready
	// (not ready, terminating): it is never dialled, not even in panic
	// mode, which only brings back ejected hosts.
	if h.Endpoint.Health == Unhealthy {
		return
	}
	g.eligible.add(li, h)
	if h.ejectedAt(g.now) {
		return
	}
	switch h.Endpoint.Health {
	case Healthy:
		g.healthy.add(li, h)
	case Degraded:
		g.degraded.add(li, h)
	}
}

func (g *hostGroup) add(li int, h *Host) {
	g.all = append(g.all, h)
	g.byLoc[li] = append(g.byLoc[li], h)
}

// newSource builds the pools of one group. With locality weighting, each
// locality's effective weight is its weight times its available share
// times the overprovisioning factor, capped at its weight (Envoy's rule);
// a locality without weight gets no traffic, and when no locality has an
// effective weight the group's hosts are used as one.
func (b *Balancer) newSource(g hostGroup, locs []Locality, locTotal []int, localityWeighted bool) *source {
	if len(g.all) == 0 {
		return nil
	}
	s := &source{}
	if !localityWeighted {
		s.all = b.newPool(g.all, nil)
		return s
	}
	eff := make([]float64, len(locs))
	sum := 0.0
	for li := range locs {
		if locTotal[li] == 0 || len(g.byLoc[li]) == 0 {
			continue
		}
		share := math.Min(1, float64(b.overprovision)/100*float64(len(g.byLoc[li]))/float64(locTotal[li]))
		eff[li] = float64(locs[li].Weight) * share
		sum += eff[li]
	}
	if sum == 0 {
		s.all = b.newPool(g.all, nil)
		return s
	}
	if b.lb.Kind.ConsistentHash() {
		// The hash table holds every host of the group, each weighted by
		// its share of its locality times the locality's share.
		w := make([]float64, 0, len(g.all))
		hosts := make([]*Host, 0, len(g.all))
		for li := range locs {
			if eff[li] == 0 {
				continue
			}
			lsum := 0.0
			for _, h := range g.byLoc[li] {
				lsum += float64(h.Endpoint.Weight)
			}
			for _, h := range g.byLoc[li] {
				hosts = append(hosts, h)
				w = append(w, float64(h.Endpoint.Weight)/lsum*eff[li]/sum)
			}
		}
		s.all = b.newPool(hosts, w)
		return s
	}
	s.all = b.newPool(g.all, nil)
	var lw []uint64
	for li := range locs {
		if eff[li] == 0 {
			continue
		}
		// Effective weights are kept to a thousandth of a weight unit so
		// that the locality schedule is integral.
		lw = append(lw, max(1, uint64(eff[li]*1000)))
		s.localities = append(s.localities, b.newPool(g.byLoc[li], nil))
	}
	s.locWeights = newWeighted(lw)
	return s
}

// choose picks the level and source for a request from the priority
// loads.
func (st *state) choose(x uint64) *source {
	v := x % 100
	for p, l := range st.healthyLoad {
		if v < l {
			return st.levels[p].healthy
		}
		v -= l
	}
	for p, l := range st.degradedLoad {
		if v < l {
			return st.levels[p].degraded
		}
		v -= l
	}
	return nil
}

// Pick chooses the endpoint for one request. It returns false when the
// cluster has no endpoint that may be picked.
func (b *Balancer) Pick(r PickRequest) (*Host, bool) {
	st := b.current()
	px := r.Random
	if r.HasHash && b.lb.Kind.ConsistentHash() {
		px = r.Hash
	}
	src := st.choose(mix(px, saltPriority))
	if src == nil {
		return nil, false
	}
	h := b.pickSource(src, r)
	if len(r.Attempted) == 0 || !attempted(h, r.Attempted) {
		return h, true
	}
	// A retry: draw again a few times, as Envoy's previous_hosts predicate
	// does, then take the first host not tried, in this source first.
	const redraws = 4
	for i := uint64(1); i <= redraws; i++ {
		rr := r
		rr.Random = mix(r.Random, saltRetry+i)
		rr.Hash = mix(r.Hash, saltRetry+i)
		if c := b.pickSource(src, rr); !attempted(c, r.Attempted) {
			return c, true
		}
	}
	if c := src.all.untried(r.Random, r.Attempted); c != nil {
		return c, true
	}
	for _, l := range st.levels {
		for _, s := range [2]*source{l.healthy, l.degraded} {
			if s == nil {
				continue
			}
			if c := s.all.untried(r.Random, r.Attempted); c != nil {
				return c, true
			}
		}
	}
	return h, true
}

func (b *Balancer) pickSource(s *source, r PickRequest) *Host {
	p := s.all
	if s.locWeights != nil {
		// Localities are scheduled in turn by effective weight whatever the
		// policy, as Envoy's locality scheduler does.
		p = s.localities[s.locWeights.next()]
	}
	return b.pickPool(p, r)
}

func attempted(h *Host, tried []netip.AddrPort) bool {
	for _, a := range tried {
		if a == h.Endpoint.Addr {
			return true
		}
	}
	return false
}

// untried returns a host of p not in tried, scanning from a position drawn
// from x, or nil.
func (p *pool) untried(x uint64, tried []netip.AddrPort) *Host {
	n := uint64(len(p.hosts))
	start := mix(x, saltScan) % n
	for i := range n {
		h := p.hosts[(start+i)%n]
		if !attempted(h, tried) {
			return h
		}
	}
	return nil
}

// Salts separate the values derived from one caller-drawn number, so that
// the priority, the host and a retry's redraw are not correlated.
const (
	saltPriority = 1
	saltHost     = 2
	saltScan     = 3
	saltRetry    = 16
)

// mix derives a well-spread 64-bit value from x and a salt (the SplitMix64
// finalizer).
func mix(x, salt uint64) uint64 {
	x += (salt + 1) * 0x9e3779b97f4a7c15
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	x ^= x >> 31
	return x
}
