package state

import (
	"cmp"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/zmesh/zmesh/api/workload"
	"github.com/zmesh/zmesh/api/workload/security"
	"github.com/zmesh/zmesh/ztunnel/authz"
)

// Update is one batch of changes: an xDS response or a whole local file.
// Address resources are named by workload uid or service "namespace/hostname";
// policies by "namespace/name".
type Update struct {
	Addresses map[string]*workload.Address
	// Encoded holds the wire form of Addresses entries, by name, where the
	// source has it (xDS): the store keeps it for config dumps rather than
	// encode each anew, sharing the bytes with whoever else keeps them.
	// It must be the encoding the entry was decoded from, and is never
	// modified afterwards.
	Encoded          map[string][]byte
	Policies         map[string]*security.Authorization
	RemovedAddresses []string
	RemovedPolicies  []string
	// BadPolicies are policies the source could not decode, by name. Like
	// a policy that does not compile, each is rejected and enforced as a
	// deny-all over its scope (authz.Rejected).
	BadPolicies map[string]BadPolicy
}

// BadPolicy is a policy that could not be decoded: Err says why, Read is
// what could be read of it (its namespace, name, scope, dry-run), nil if
// nothing.
type BadPolicy struct {
	Read *security.Authorization
	Err  error
}

// Store holds the current Snapshot. Apply and Replace serialise writers;
// readers never block.
type Store struct {
	mu      sync.Mutex
	in      *interner      // shares repeated values between resources
	cidrs   []netip.Prefix // SetMeshCIDRs
	cur     atomic.Pointer[Snapshot]
	changed chan struct{} // closed and replaced on every swap
}

// NewStore returns a store with an empty snapshot.
func NewStore() *Store {
	s := &Store{changed: make(chan struct{}), in: newInterner()}
	s.cur.Store(newSnapshot(nil, nil, nil, 0, false))
	return s
}

// Snapshot returns the current, immutable view.
func (s *Store) Snapshot() *Snapshot { return s.cur.Load() }

// Changed returns a channel closed at the next swap.
func (s *Store) Changed() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.changed
}

// Apply merges an incremental update. Each resource that fails validation
// is rejected by name; the rest are applied. A rejected workload or service
// keeps its previous version (if any); a rejected policy is replaced by a
// deny-all over its scope until a good version arrives (authz.Rejected),
// since its previous version may allow what the new one no longer does,
// and no version at all may allow everyone.
func (s *Store) Apply(u Update) map[string]error {
	s.mu.Lock()
	defer s.mu.Unlock()
	old := s.cur.Load()
	wls, svcs, pols := maps(old)
	rejected := apply(u, wls, svcs, pols, s.in)
	s.swapLocked(newSnapshot(wls, svcs, pols, old.version+1, old.synced))
	return rejected
}

// MarkSynced records that the state is complete: the control plane's first
// full response of every type has been applied. Until then the proxy
// refuses outbound traffic rather than take a mesh destination it does not
// know yet for one outside the mesh.
func (s *Store) MarkSynced() {
	s.mu.Lock()
	defer s.mu.Unlock()
	old := s.cur.Load()
	if old.synced {
		return
	}
	s.swapLocked(newSnapshot(old.workloads, old.services, old.policies, old.version+1, true))
}

// Replace swaps in the update as the whole state, which is complete (a
// local file, or the config persisted at the last sync): the snapshot is
// synced. With an invalid workload or service nothing changes but the
// policies the update rejects (it keeps the last good state, synced or
// not); with only invalid policies the update applies. Either way a
// rejected policy is enforced as a deny-all over its scope, as in Apply,
// and the error names every rejected resource.
func (s *Store) Replace(u Update) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	wls, svcs, pols := map[string]*Workload{}, map[string]*Service{}, map[string]*authz.Policy{}
	rejected := apply(u, wls, svcs, pols, s.in)
	old := s.cur.Load()
	if badAddresses(u, wls, svcs) {
		standIns := map[string]*authz.Policy{}
		for name := range rejected {
			if p := pols[name]; p != nil && p.RejectedBecause() != "" {
				standIns[name] = p
			}
		}
		if len(standIns) == 0 {
			return RejectedError(rejected)
		}
		wls, svcs, pols = maps(old)
		for name, p := range standIns {
			pols[name] = p
		}
		s.swapLocked(newSnapshot(wls, svcs, pols, old.version+1, old.synced))
		return RejectedError(rejected)
	}
	s.swapLocked(newSnapshot(wls, svcs, pols, old.version+1, true))
	if len(rejected) > 0 {
		return RejectedError(rejected)
	}
	return nil
}

// badAddresses reports whether apply rejected a workload or service of u
// (into the fresh maps wls and svcs).
func badAddresses(u Update, wls map[string]*Workload, svcs map[string]*Service) bool {
	for name := range u.Addresses {
		if wls[name] == nil && svcs[name] == nil {
			return true
		}
	}
	return false
}

func (s *Store) swapLocked(next *Snapshot) {
	next.cidrs = s.cidrs
	s.in.prune(next)
	s.cur.Store(next)
	close(s.changed)
	s.changed = make(chan struct{})
}

// RejectedError lists rejected resources by name.
type RejectedError map[string]error

func (e RejectedError) Error() string {
	names := make([]string, 0, len(e))
	for n := range e {
		names = append(names, n)
	}
	slices.Sort(names)
	msg := "rejected:"
	for _, n := range names {
		msg += fmt.Sprintf(" %s: %v;", n, e[n])
	}
	return msg[:len(msg)-1]
}

func maps(s *Snapshot) (map[string]*Workload, map[string]*Service, map[string]*authz.Policy) {
	wls := make(map[string]*Workload, len(s.workloads))
	for k, v := range s.workloads {
		wls[k] = v
	}
	svcs := make(map[string]*Service, len(s.services))
	for k, v := range s.services {
		svcs[k] = v
	}
	pols := make(map[string]*authz.Policy, len(s.policies))
	for k, v := range s.policies {
		pols[k] = v
	}
	return wls, svcs, pols
}

func apply(u Update, wls map[string]*Workload, svcs map[string]*Service, pols map[string]*authz.Policy, in *interner) map[string]error {
	rejected := map[string]error{}
	for _, name := range u.RemovedAddresses {
		delete(wls, name)
		delete(svcs, name)
	}
	for _, name := range u.RemovedPolicies {
		delete(pols, name)
	}
	for name, a := range u.Addresses {
		switch t := a.GetType().(type) {
		case *workload.Address_Workload:
			w, err := convertWorkload(t.Workload, u.Encoded[name], in)
			if err == nil && name != w.UID {
				err = fmt.Errorf("resource name %q is not the workload's uid %q", name, w.UID)
			}
			if err == nil {
				w.shareUID(name) // the name's string is kept anyway (the map's key)
			}
			if err != nil {
				rejected[name] = fmt.Errorf("workload.%w", err)
				continue
			}
			delete(svcs, name)
			wls[name] = w
		case *workload.Address_Service:
			s, err := convertService(t.Service, u.Encoded[name], in)
			if err == nil && name != s.Key() {
				err = fmt.Errorf("resource name %q is not the service's namespace/hostname %q", name, s.Key())
			}
			if err != nil {
				rejected[name] = fmt.Errorf("service.%w", err)
				continue
			}
			delete(wls, name)
			svcs[name] = s
		default:
			rejected[name] = fmt.Errorf("type: neither workload nor service")
		}
	}
	for name, a := range u.Policies {
		p, err := authz.Compile(a)
		if err == nil && name != p.Key() {
			err = fmt.Errorf("resource name %q is not the policy's namespace/name %q", name, p.Key())
		}
		if err != nil {
			// A service may have the same name as a policy: keep both errors.
			rejected[name] = errors.Join(rejected[name], err)
			pols[name] = authz.Rejected(name, a, err)
			continue
		}
		pols[name] = p
	}
	for name, b := range u.BadPolicies {
		err := b.Err
		if err == nil {
			err = errors.New("not decodable")
		}
		rejected[name] = errors.Join(rejected[name], err)
		pols[name] = authz.Rejected(name, b.Read, err)
	}
	if len(rejected) == 0 {
		return nil
	}
	return rejected
}

// Snapshot is one consistent view of the mesh. Never modify what it returns.
type Snapshot struct {
	version uint64
	// synced: the state is complete (see Store.MarkSynced).
	synced    bool
	workloads map[string]*Workload
	services  map[string]*Service
	policies  map[string]*authz.Policy

	byAddr      map[NetAddr]*Workload
	byVIP       map[NetAddr]*Service
	byHost      map[string][]*Service
	endpoints   map[string][]*Workload
	byIdentity  map[spiffeid.ID][]*Workload
	byNode      map[string][]*Workload
	ranges      map[meshRange]struct{} // derived mesh ranges (ranges.go)
	cidrs       []netip.Prefix         // given mesh ranges, if any
	global      []*authz.Policy
	byNamespace map[string][]*authz.Policy
}

func newSnapshot(wls map[string]*Workload, svcs map[string]*Service, pols map[string]*authz.Policy, version uint64, synced bool) *Snapshot {
	s := &Snapshot{
		version: version, synced: synced, workloads: wls, services: svcs, policies: pols,
		byAddr: map[NetAddr]*Workload{}, byVIP: map[NetAddr]*Service{}, byHost: map[string][]*Service{},
		endpoints: map[string][]*Workload{}, byIdentity: map[spiffeid.ID][]*Workload{},
		byNode: map[string][]*Workload{}, byNamespace: map[string][]*authz.Policy{},
		ranges: map[meshRange]struct{}{},
	}
	for _, w := range sortedValues(wls, func(w *Workload) string { return w.UID }) {
		for _, a := range w.Addrs {
			s.byAddr[NetAddr{w.Network, a}] = w
			s.ranges[derivedRange(NetAddr{w.Network, a})] = struct{}{}
		}
		for key := range w.Services {
			s.endpoints[key] = append(s.endpoints[key], w)
		}
		if !w.Identity.IsZero() {
			s.byIdentity[w.Identity] = append(s.byIdentity[w.Identity], w)
		}
		if w.Node != "" {
			s.byNode[w.Node] = append(s.byNode[w.Node], w)
		}
	}
	for _, svc := range sortedValues(svcs, (*Service).Key) {
		for _, vip := range svc.VIPs {
			s.byVIP[vip] = svc
			s.ranges[derivedRange(vip)] = struct{}{}
		}
		s.byHost[svc.Hostname] = append(s.byHost[svc.Hostname], svc)
	}
	for _, p := range sortedValues(pols, (*authz.Policy).Key) {
		switch p.Scope {
		case security.Scope_GLOBAL:
			s.global = append(s.global, p)
		case security.Scope_NAMESPACE:
			s.byNamespace[p.Namespace] = append(s.byNamespace[p.Namespace], p)
		}
	}
	return s
}

func sortedValues[V any](m map[string]V, key func(V) string) []V {
	out := make([]V, 0, len(m))
	for _, v := range m {
		out = append(out, v)
	}
	slices.SortFunc(out, func(a, b V) int { return cmp.Compare(key(a), key(b)) })
	return out
}

// Version counts swaps; it changes with every update.
func (s *Snapshot) Version() uint64 { return s.version }

// Synced reports whether the state is complete: until it is, an address
// it does not know may still be a mesh workload.
func (s *Snapshot) Synced() bool { return s.synced }

// Workload looks a workload up by uid.
func (s *Snapshot) Workload(uid string) *Workload { return s.workloads[uid] }

// WorkloadByAddr looks a workload up by network and IP.
func (s *Snapshot) WorkloadByAddr(a NetAddr) *Workload { return s.byAddr[a] }

// ServiceByVIP looks a service up by one of its virtual IPs.
func (s *Snapshot) ServiceByVIP(a NetAddr) *Service { return s.byVIP[a] }

// Service looks a service up by "namespace/hostname".
func (s *Snapshot) Service(key string) *Service { return s.services[key] }

// ServicesByHostname returns the services with that hostname.
func (s *Snapshot) ServicesByHostname(h string) []*Service { return s.byHost[h] }

// Endpoints returns the workloads backing a service, by uid order.
func (s *Snapshot) Endpoints(key string) []*Workload { return s.endpoints[key] }

// WorkloadsByIdentity returns the workloads running as id.
func (s *Snapshot) WorkloadsByIdentity(id spiffeid.ID) []*Workload { return s.byIdentity[id] }

// WorkloadsOnNode returns the workloads on a node.
func (s *Snapshot) WorkloadsOnNode(node string) []*Workload { return s.byNode[node] }

// Policy looks a policy up by "namespace/name".
func (s *Snapshot) Policy(key string) *authz.Policy { return s.policies[key] }

// PoliciesFor returns the policies that apply to w: global ones, those of
// its namespace, and the selector policies it lists. missing names the
// listed policies not (yet) received; callers fail closed on them, since an
// absent DENY must not let traffic through.
func (s *Snapshot) PoliciesFor(w *Workload) (ps []*authz.Policy, missing []string) {
	ps = append(ps, s.global...)
	ps = append(ps, s.byNamespace[w.Namespace]...)
	for _, key := range w.Policies {
		p := s.policies[key]
		if p == nil {
			missing = append(missing, key)
			continue
		}
		if p.Scope == security.Scope_WORKLOAD_SELECTOR {
			ps = append(ps, p)
		}
	}
	return ps, missing
}

// Workloads returns every workload, by uid.
func (s *Snapshot) Workloads() []*Workload {
	return sortedValues(s.workloads, func(w *Workload) string { return w.UID })
}

// Services returns every service, by key.
func (s *Snapshot) Services() []*Service { return sortedValues(s.services, (*Service).Key) }

// Policies returns every policy, by key.
func (s *Snapshot) Policies() []*authz.Policy { return sortedValues(s.policies, (*authz.Policy).Key) }
