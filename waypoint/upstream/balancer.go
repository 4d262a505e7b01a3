package upstream

import (
	"net/netip"
	"sync"
	"sync/atomic"
	"time"
)

// Host is one endpoint as the load balancer sees it: the compiled endpoint
// plus the live state that picks depend on (requests in flight, outlier
// ejection). A Host belongs to one Balancer and lives as long as it.
type Host struct {
	Endpoint Endpoint
	// Priority and Locality say where the endpoint sits in its assignment
	// (Locality indexes Assignment.Priorities[Priority]).
	Priority, Locality int

	active atomic.Int64
	// ejectedUntil is a Unix time in nanoseconds; 0 when not ejected.
	ejectedUntil atomic.Int64
}

// Begin records that a request starts on h; LEAST_REQUEST compares these
// counts. Every Begin needs one End.
func (h *Host) Begin() { h.active.Add(1) }

// End records that a request on h has finished.
func (h *Host) End() { h.active.Add(-1) }

// Active is the number of requests in flight on h.
func (h *Host) Active() int64 { return h.active.Load() }

// PickRequest is what one pick depends on besides the balancer's state.
// The balancer draws no randomness of its own, so a caller (or a test) can
// reproduce any pick.
type PickRequest struct {
	// Random is drawn by the caller for each pick: it chooses the priority
	// level and drives RANDOM, LEAST_REQUEST and the fallback of the
	// consistent-hash policies.
	Random uint64
	// Hash is the request's hash for RING_HASH and MAGLEV (see
	// route.RequestHash); HasHash false makes them pick at random.
	Hash    uint64
	HasHash bool
	// Attempted lists endpoints this request already tried (retries): they
	// are avoided while another endpoint is available.
	Attempted []netip.AddrPort
}

// Balancer spreads requests over one cluster's endpoints as Envoy does:
// priority levels with overprovisioning spill-over, healthy before
// degraded hosts, optional locality weighting, then the cluster's policy
// within the chosen group. It is built once per configuration snapshot;
// Pick is safe for concurrent use and does not allocate.
type Balancer struct {
	lb            LoadBalancing
	assignment    *Assignment
	overprovision uint64
	hosts         []Host
	byAddr        map[netip.AddrPort]*Host

	st atomic.Pointer[state]
	// nextExpiry is the Unix time in nanoseconds at which the earliest
	// ejection ends, 0 when no host is ejected: Pick reads the clock only
	// while it is set.
	nextExpiry atomic.Int64
	mu         sync.Mutex // serialises rebuilds of st
	now        func() time.Time
}

// NewBalancer builds the balancer of cluster c over the endpoints of a. A
// nil a is a cluster without endpoints: every pick fails.
func NewBalancer(c *Cluster, a *Assignment) *Balancer {
	b := &Balancer{lb: c.LB, overprovision: DefaultOverprovisioning, now: time.Now}
	if a != nil {
		if a.OverprovisioningFactor > 0 {
			b.overprovision = uint64(a.OverprovisioningFactor)
		}
		n := 0
		for _, locs := range a.Priorities {
			for _, l := range locs {
				n += len(l.Endpoints)
			}
		}
		b.hosts = make([]Host, 0, n)
		b.byAddr = make(map[netip.AddrPort]*Host, n)
		for p, locs := range a.Priorities {
			for li, l := range locs {
				for _, e := range l.Endpoints {
					b.hosts = append(b.hosts, Host{Endpoint: e, Priority: p, Locality: li})
				}
			}
		}
		for i := range b.hosts {
			b.byAddr[b.hosts[i].Endpoint.Addr] = &b.hosts[i]
		}
	}
	b.assignment = a
	b.st.Store(b.build(a))
	return b
}

// Hosts returns the balancer's hosts in assignment order (priority,
// locality, endpoint). The slice must not be modified.
func (b *Balancer) Hosts() []Host { return b.hosts }

// Host returns the host at addr, if the cluster has one.
func (b *Balancer) Host(addr netip.AddrPort) (*Host, bool) {
	h, ok := b.byAddr[addr]
	return h, ok
}

// Eject takes h out of load balancing until the given time, as outlier
// detection does; a time not after now returns it at once. Which host to
// eject and for how long is the caller's policy. h must be one of b's
// hosts.
func (b *Balancer) Eject(h *Host, until time.Time) {
	if h == nil || b.byAddr[h.Endpoint.Addr] != h {
		return
	}
	u := until.UnixNano()
	if u <= 0 {
		u = 0
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	h.ejectedUntil.Store(u)
	b.rebuildLocked(b.now().UnixNano())
}

// Ejected reports whether h is ejected at t.
func (h *Host) Ejected(t time.Time) bool {
	u := h.ejectedUntil.Load()
	return u != 0 && t.UnixNano() < u
}

// refresh rebuilds the state once the earliest ejection has ended.
func (b *Balancer) refresh() {
	if !b.mu.TryLock() {
		return // another goroutine is rebuilding; this pick uses the state as it is
	}
	defer b.mu.Unlock()
	now := b.now().UnixNano()
	if e := b.nextExpiry.Load(); e != 0 && now >= e {
		b.rebuildLocked(now)
	}
}

func (b *Balancer) rebuildLocked(now int64) {
	next := int64(0)
	for i := range b.hosts {
		u := b.hosts[i].ejectedUntil.Load()
		if u == 0 {
			continue
		}
		if u <= now {
			b.hosts[i].ejectedUntil.Store(0)
			continue
		}
		if next == 0 || u < next {
			next = u
		}
	}
	b.nextExpiry.Store(next)
	b.st.Store(b.build(b.assignment))
}
