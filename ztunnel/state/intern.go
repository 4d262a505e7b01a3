package state

import (
	gomaps "maps"
	"slices"
	"strconv"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// interner shares the values that repeat across workloads and services
// (namespace, node, cluster, identity, waypoint, the services a workload
// backs): a mesh sends them once per workload, and each decoded copy would
// otherwise stay in memory for as long as the workload does. Values it
// hands out are shared, so they must never be modified (as everything a
// Snapshot holds). It is not safe for concurrent use: the Store holds it
// under its lock.
type interner struct {
	strs     map[string]string
	ids      map[spiffeid.ID]spiffeid.ID
	gateways map[Gateway]*Gateway
	services map[string]map[string]map[uint16]uint16 // by servicesKey
	// live is the number of values in use at the last prune: the pools
	// also keep values no workload uses any more, until they reach twice
	// that (prune).
	live int
}

func newInterner() *interner {
	return &interner{
		strs: map[string]string{}, ids: map[spiffeid.ID]spiffeid.ID{},
		gateways: map[Gateway]*Gateway{}, services: map[string]map[string]map[uint16]uint16{},
	}
}

// str returns the shared copy of s. A nil interner shares nothing.
func (in *interner) str(s string) string {
	if in == nil || s == "" {
		return s
	}
	if c, ok := in.strs[s]; ok {
		return c
	}
	in.strs[s] = s
	return s
}

func (in *interner) id(id spiffeid.ID) spiffeid.ID {
	if in == nil || id.IsZero() {
		return id
	}
	if c, ok := in.ids[id]; ok {
		return c
	}
	in.ids[id] = id
	return id
}

func (in *interner) gateway(g *Gateway) *Gateway {
	if in == nil || g == nil {
		return g
	}
	if c, ok := in.gateways[*g]; ok {
		return c
	}
	g.Addr.Network = in.str(g.Addr.Network)
	g.Service = in.str(g.Service)
	in.gateways[*g] = g
	return g
}

// servicesOf returns the shared copy of a workload's service map: the
// replicas of a deployment back the same services on the same ports.
func (in *interner) servicesOf(m map[string]map[uint16]uint16) map[string]map[uint16]uint16 {
	if in == nil || len(m) == 0 {
		return m
	}
	k := servicesKey(m)
	if c, ok := in.services[k]; ok {
		return c
	}
	shared := make(map[string]map[uint16]uint16, len(m))
	for key, ports := range m {
		shared[in.str(key)] = ports
	}
	in.services[k] = shared
	return shared
}

// servicesKey encodes a service map canonically: keys sorted, each with
// its ports sorted.
func servicesKey(m map[string]map[uint16]uint16) string {
	var b strings.Builder
	for _, key := range slices.Sorted(gomaps.Keys(m)) {
		b.WriteString(key)
		for _, sp := range slices.Sorted(gomaps.Keys(m[key])) {
			b.WriteByte(' ')
			b.WriteString(strconv.Itoa(int(sp)))
			b.WriteByte(':')
			b.WriteString(strconv.Itoa(int(m[key][sp])))
		}
		b.WriteByte('\n')
	}
	return b.String()
}

func (in *interner) size() int {
	return len(in.strs) + len(in.ids) + len(in.gateways) + len(in.services)
}

// prune forgets the values the snapshot no longer uses once the pools
// have doubled since the last prune, so that churn does not grow them
// without bound (amortised: a prune walks the whole snapshot).
func (in *interner) prune(s *Snapshot) {
	if in.size() <= 2*in.live+1024 {
		return
	}
	old := *in
	*in = *newInterner()
	keep := func(v string) {
		if c, ok := old.strs[v]; ok {
			in.strs[v] = c
		}
	}
	for _, w := range s.workloads {
		for _, v := range []string{w.Namespace, w.Network, w.Node, w.ClusterID, w.CanonicalName, w.CanonicalRevision} {
			keep(v)
		}
		for _, p := range w.Policies {
			keep(p)
		}
		in.keepID(old, w.Identity)
		in.keepGateway(old, w.Waypoint, keep)
		if len(w.Services) > 0 {
			k := servicesKey(w.Services)
			if old.services[k] != nil {
				in.services[k] = old.services[k]
			}
			for key := range w.Services {
				keep(key)
			}
		}
	}
	for _, svc := range s.services {
		keep(svc.Namespace)
		for _, v := range svc.VIPs {
			keep(v.Network)
		}
		for _, id := range svc.SANs {
			in.keepID(old, id)
		}
		in.keepGateway(old, svc.Waypoint, keep)
	}
	in.live = in.size()
}

func (in *interner) keepID(old interner, id spiffeid.ID) {
	if c, ok := old.ids[id]; ok {
		in.ids[id] = c
	}
}

func (in *interner) keepGateway(old interner, g *Gateway, keep func(string)) {
	if g == nil {
		return
	}
	if c, ok := old.gateways[*g]; ok {
		in.gateways[*g] = c
		keep(g.Addr.Network)
		keep(g.Service)
	}
}
