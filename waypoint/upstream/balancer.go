package upstream

import (
	"net/netip"
	"sync"
	"sync/atomic"
	"time"
)

// Host is one endpoint as the load balancer sees it: the compiled endpoint
// plus the live state that picks depend on (requests in flight, outlier
// ejection). That state outlives the snapshot: a balancer built with
// Update shares it for every endpoint that is still there.
type Host struct {
	Endpoint Endpoint
	// Priority and Locality say where the endpoint sits in its assignment
	// (Locality indexes Assignment.Priorities[Priority]).
	Priority, Locality int

	live *liveState
}

type liveState struct {
	active atomic.Int64
	// ejectedUntil is a Unix time in nanoseconds; 0 when not ejected.
	ejectedUntil atomic.Int64
}

// Begin records that a request starts on h; LEAST_REQUEST compares these
// counts. Every Begin needs one End.
func (h *Host) Begin() { h.live.active.Add(1) }

// End records that a request on h has finished.
func (h *Host) End() { h.live.active.Add(-1) }

// Active is the number of requests in flight on h.
func (h *Host) Active() int64 { return h.live.active.Load() }

// Ejected reports whether h is ejected at t.
func (h *Host) Ejected(t time.Time) bool { return h.ejectedAt(t.UnixNano()) }

func (h *Host) ejectedAt(now int64) bool {
	u := h.live.ejectedUntil.Load()
	return u != 0 && now < u
}

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
// within the chosen group. It is built once per configuration snapshot
// (Update carries the hosts' live state to the next); Pick is safe for
// concurrent use and does not allocate.
type Balancer struct {
	cluster       *Cluster
	lb            LoadBalancing
	assignment    *Assignment
	overprovision uint64
	hosts         []Host
	byAddr        map[netip.AddrPort]*Host
	// lineage is shared by a balancer and those built from it with Update:
	// an ejection through any of them makes the others rebuild.
	lineage *lineage

	st  atomic.Pointer[state]
	mu  sync.Mutex // serialises rebuilds of st
	now func() time.Time
}

type lineage struct {
	// epoch counts ejections; a state built at an older epoch is stale.
	epoch atomic.Uint64
}

// NewBalancer builds the balancer of cluster c over the endpoints of a. A
// nil a is a cluster without endpoints: every pick fails.
func NewBalancer(c *Cluster, a *Assignment) *Balancer {
	return newBalancer(nil, c, a)
}

// Update builds the balancer for a new snapshot of the same cluster. An
// endpoint still there (same address and identity) keeps its requests in
// flight and its ejection, so that an endpoint update neither forgets the
// load LEAST_REQUEST balances nor returns ejected hosts early. b may be
// nil.
func (b *Balancer) Update(c *Cluster, a *Assignment) *Balancer {
	return newBalancer(b, c, a)
}

func newBalancer(prev *Balancer, c *Cluster, a *Assignment) *Balancer {
	b := &Balancer{cluster: c, lb: c.LB, assignment: a, overprovision: DefaultOverprovisioning, now: time.Now, lineage: &lineage{}}
	if prev != nil {
		b.lineage, b.now = prev.lineage, prev.now
	}
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
					h := Host{Endpoint: e, Priority: p, Locality: li}
					if old, ok := prev.Host(e.Addr); ok && old.Endpoint.Identity == e.Identity {
						h.live = old.live
					} else {
						h.live = &liveState{}
					}
					b.hosts = append(b.hosts, h)
				}
			}
		}
		for i := range b.hosts {
			b.byAddr[b.hosts[i].Endpoint.Addr] = &b.hosts[i]
		}
	}
	b.st.Store(b.build(b.lineage.epoch.Load(), b.now().UnixNano()))
	return b
}

// Balancers builds the balancers of a snapshot's clusters, each over the
// assignment its EDSServiceName names (none yet: no endpoints). A cluster
// of prev is carried over with Update, or kept as it is when neither its
// compiled cluster nor its assignment changed (the same pointers).
func Balancers(prev map[string]*Balancer, clusters map[string]*Cluster, assignments map[string]*Assignment) map[string]*Balancer {
	out := make(map[string]*Balancer, len(clusters))
	for name, c := range clusters {
		a := assignments[c.EDSServiceName]
		p := prev[name]
		if p != nil && p.cluster == c && p.assignment == a {
			out[name] = p
			continue
		}
		out[name] = p.Update(c, a)
	}
	return out
}

// Hosts returns the balancer's hosts in assignment order (priority,
// locality, endpoint). The slice must not be modified.
func (b *Balancer) Hosts() []Host { return b.hosts }

// Host returns the host at addr, if the cluster has one. b may be nil.
func (b *Balancer) Host(addr netip.AddrPort) (*Host, bool) {
	if b == nil {
		return nil, false
	}
	h, ok := b.byAddr[addr]
	return h, ok
}

// Eject takes h out of load balancing until the given time, as outlier
// detection does; a time not after now returns it at once. Which host to
// eject and for how long is the caller's policy. h may come from b or from
// a balancer b was built from with Update (a request that started before
// an endpoint update); the ejection holds in every balancer of the lineage.
// It returns false, doing nothing, for a host b does not have.
func (b *Balancer) Eject(h *Host, until time.Time) bool {
	if h == nil {
		return false
	}
	mine, ok := b.byAddr[h.Endpoint.Addr]
	if !ok || mine.live != h.live {
		return false
	}
	u := max(0, until.UnixNano())
	b.mu.Lock()
	defer b.mu.Unlock()
	h.live.ejectedUntil.Store(u)
	epoch := b.lineage.epoch.Add(1)
	b.st.Store(b.build(epoch, b.now().UnixNano()))
	return true
}

// current returns the state, rebuilt first if an ejection happened or
// ended since it was built.
func (b *Balancer) current() *state {
	st := b.st.Load()
	if st.epoch == b.lineage.epoch.Load() && (st.nextExpiry == 0 || b.now().UnixNano() < st.nextExpiry) {
		return st
	}
	if !b.mu.TryLock() {
		return st // another goroutine is rebuilding; this pick uses the state as it is
	}
	defer b.mu.Unlock()
	// Load the epoch before reading the hosts, so that an ejection racing
	// this rebuild leaves the state stale and rebuilt again.
	epoch := b.lineage.epoch.Load()
	st = b.build(epoch, b.now().UnixNano())
	b.st.Store(st)
	return st
}
