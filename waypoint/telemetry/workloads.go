package telemetry

import (
	"net/netip"
	"slices"
	"sync"
)

// Workload is what telemetry labels a client with: a mesh workload as
// zmeshd's workload discovery describes it.
type Workload struct {
	// Identity is the workload's SPIFFE ID: a client is labelled with the
	// workload only when its certificate proves this identity.
	Identity          string
	Name, Namespace   string
	CanonicalService  string
	CanonicalRevision string
	Cluster           string
	Addresses         []netip.Addr
}

// Bounds of a Workloads index. The index holds what zmeshd sends, not what
// clients send, but a bound keeps a control-plane mistake from growing the
// waypoint without limit.
const (
	// DefaultMaxWorkloads is how many workloads an index holds by default.
	DefaultMaxWorkloads = 1 << 17
	// maxAddressesPerWorkload and maxWorkloadsPerAddress bound the index's
	// fan-out: a pod has one address per IP family, and an address is
	// shared only briefly, by a pod that is going and one that is coming.
	maxAddressesPerWorkload = 8
	maxWorkloadsPerAddress  = 4
)

// Workloads indexes the mesh's workloads by IP address, so the waypoint can
// name a request's client workload from the tunnel's peer address, as
// Istio's waypoint does with workload discovery. It is safe for concurrent
// use: the xDS client writes, requests read.
type Workloads struct {
	max int

	mu     sync.RWMutex
	byName map[string]*Workload
	byIP   map[netip.Addr][]*Workload
}

// NewWorkloads returns an empty index of at most max workloads (default
// DefaultMaxWorkloads).
func NewWorkloads(max int) *Workloads {
	if max <= 0 {
		max = DefaultMaxWorkloads
	}
	return &Workloads{max: max, byName: map[string]*Workload{}, byIP: map[netip.Addr][]*Workload{}}
}

// Set makes w the workload named name (its resource name), replacing what
// the name had. It reports false, holding nothing for name, when the index
// is full.
func (x *Workloads) Set(name string, w Workload) bool {
	w.Addresses = slices.Clone(w.Addresses[:min(len(w.Addresses), maxAddressesPerWorkload)])
	x.mu.Lock()
	defer x.mu.Unlock()
	x.removeLocked(name)
	if len(x.byName) >= x.max {
		return false
	}
	x.byName[name] = &w
	for _, a := range w.Addresses {
		a = a.Unmap()
		if held := x.byIP[a]; len(held) < maxWorkloadsPerAddress {
			x.byIP[a] = append(held, &w)
		}
	}
	return true
}

// Remove forgets the workload named name, if held.
func (x *Workloads) Remove(name string) {
	x.mu.Lock()
	defer x.mu.Unlock()
	x.removeLocked(name)
}

func (x *Workloads) removeLocked(name string) {
	w := x.byName[name]
	if w == nil {
		return
	}
	delete(x.byName, name)
	for _, a := range w.Addresses {
		a = a.Unmap()
		held := slices.DeleteFunc(x.byIP[a], func(h *Workload) bool { return h == w })
		if len(held) == 0 {
			delete(x.byIP, a)
		} else {
			x.byIP[a] = held
		}
	}
}

// Len is the number of workloads held.
func (x *Workloads) Len() int {
	x.mu.RLock()
	defer x.mu.RUnlock()
	return len(x.byName)
}

// Lookup returns the workload at addr whose identity is principal. An
// address is only a hint: a client could be NATed or its pod's address
// reused, so a workload at addr with another identity than the one the
// client proved is not the client, and Lookup reports false.
func (x *Workloads) Lookup(addr netip.Addr, principal string) (Workload, bool) {
	if x == nil || principal == "" {
		return Workload{}, false
	}
	x.mu.RLock()
	defer x.mu.RUnlock()
	for _, w := range x.byIP[addr.Unmap()] {
		if w.Identity == principal {
			return *w, true
		}
	}
	return Workload{}, false
}

// Label fills p's workload labels from the workload at p's address whose
// identity is p's principal; p is left as it is when there is none.
func (x *Workloads) Label(p *Peer) {
	w, ok := x.Lookup(p.Addr.Addr(), p.Principal)
	if !ok {
		return
	}
	p.Workload, p.Namespace = w.Name, w.Namespace
	// Workload discovery carries no labels: Istio's canonical names stand
	// for the app and version labels, as they do in Istio's waypoint.
	p.App, p.Version = w.CanonicalService, w.CanonicalRevision
	p.CanonicalService, p.CanonicalRevision, p.Cluster = w.CanonicalService, w.CanonicalRevision, w.Cluster
}
