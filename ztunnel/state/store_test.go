package state_test

import (
	"errors"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/zmesh/zmesh/api/workload"
	"github.com/zmesh/zmesh/api/workload/security"
	"github.com/zmesh/zmesh/identity"
	"github.com/zmesh/zmesh/ztunnel/authz"
	"github.com/zmesh/zmesh/ztunnel/state"
)

// pod is an HBONE workload named uid in ns, running as sa, at ips.
func pod(uid, ns, sa string, ips ...string) *workload.Workload {
	w := &workload.Workload{Uid: uid, Name: uid, Namespace: ns, ServiceAccount: sa, TunnelProtocol: workload.TunnelProtocol_HBONE}
	for _, s := range ips {
		w.Addresses = append(w.Addresses, ip(s))
	}
	return w
}

func svc(ns, host string, vips ...string) *workload.Service {
	s := &workload.Service{Name: strings.Split(host, ".")[0], Namespace: ns, Hostname: host, Ports: []*workload.Port{{ServicePort: 80}}}
	for _, v := range vips {
		s.Addresses = append(s.Addresses, &workload.NetworkAddress{Address: ip(v)})
	}
	return s
}

func policy(ns, name string, scope security.Scope) *security.Authorization {
	return &security.Authorization{Name: name, Namespace: ns, Scope: scope}
}

// update builds an Update naming each resource as xDS does.
func update(resources ...any) state.Update {
	u := state.Update{Addresses: map[string]*workload.Address{}, Policies: map[string]*security.Authorization{}}
	for _, r := range resources {
		switch r := r.(type) {
		case *workload.Workload:
			u.Addresses[r.Uid] = &workload.Address{Type: &workload.Address_Workload{Workload: r}}
		case *workload.Service:
			u.Addresses[r.Namespace+"/"+r.Hostname] = &workload.Address{Type: &workload.Address_Service{Service: r}}
		case *security.Authorization:
			u.Policies[r.Namespace+"/"+r.Name] = r
		default:
			panic("update: unknown resource type")
		}
	}
	return u
}

func netAddr(network, a string) state.NetAddr {
	return state.NetAddr{Network: network, Addr: netip.MustParseAddr(a)}
}

func uids(ws []*state.Workload) []string {
	out := []string{}
	for _, w := range ws {
		out = append(out, w.UID)
	}
	return out
}

func keys(ps []*authz.Policy) []string {
	out := []string{}
	for _, p := range ps {
		out = append(out, p.Key())
	}
	return out
}

func mustApply(t *testing.T, s *state.Store, u state.Update) {
	t.Helper()
	if rej := s.Apply(u); rej != nil {
		t.Fatalf("Apply rejected %v", rej)
	}
}

// A rejected workload or service keeps its previous version; a rejected
// policy does not: it becomes a deny-all over its scope.
func TestApplyRejectsByNameAndKeepsThePreviousVersion(t *testing.T) {
	s := state.NewStore()
	mustApply(t, s, update(
		pod("a", "ns", "sa", "10.0.0.1"),
		svc("ns", "web.ns.svc.cluster.local", "10.96.0.1"),
		policy("ns", "allow", security.Scope_NAMESPACE),
	))

	badA := pod("a", "ns", "sa", "10.0.0.2")
	badA.Addresses = append(badA.Addresses, []byte{1, 2, 3})
	badWeb := svc("ns", "web.ns.svc.cluster.local", "10.96.0.2")
	badWeb.Ports[0].ServicePort = 0
	badPolicy := policy("ns", "allow", security.Scope_GLOBAL)
	badPolicy.Action = 9
	u := update(badA, badWeb, badPolicy, pod("b", "ns", "sa", "10.0.0.3"), svc("ns", "db.ns.svc.cluster.local", "10.96.0.3"))
	u.Addresses["misnamed"] = &workload.Address{Type: &workload.Address_Workload{Workload: pod("c", "ns", "sa", "10.0.0.4")}}
	u.Addresses["ns/misnamed"] = &workload.Address{Type: &workload.Address_Service{Service: svc("ns", "other", "10.96.0.4")}}
	u.Addresses["empty"] = &workload.Address{}
	u.Policies["ns/misnamed-policy"] = policy("ns", "p", security.Scope_GLOBAL)

	rejected := s.Apply(u)

	want := map[string]string{
		"a":                           "workload.addresses[1]: 3 bytes",
		"ns/web.ns.svc.cluster.local": "service.ports[0].service_port: 0 out of range",
		"ns/allow":                    "action: unknown value 9",
		"misnamed":                    `workload.resource name "misnamed" is not the workload's uid "c"`,
		"ns/misnamed":                 `service.resource name "ns/misnamed" is not the service's namespace/hostname "ns/other"`,
		"empty":                       "type: neither workload nor service",
	}
	for name, prefix := range want {
		if err := rejected[name]; err == nil || !strings.HasPrefix(err.Error(), prefix) {
			t.Errorf("rejected[%q] = %v, want %s…", name, err, prefix)
		}
	}
	if err := rejected["ns/misnamed-policy"]; err == nil || err.Error() != `resource name "ns/misnamed-policy" is not the policy's namespace/name "ns/p"` {
		t.Errorf("rejected[ns/misnamed-policy] = %v, want a name mismatch", err)
	}
	delete(rejected, "ns/misnamed-policy")
	for name := range rejected {
		if _, ok := want[name]; !ok {
			t.Errorf("rejected %q: %v; want it applied", name, rejected[name])
		}
	}

	snap := s.Snapshot()
	if a := snap.Workload("a"); a == nil || a.Addrs[0] != netip.MustParseAddr("10.0.0.1") {
		t.Errorf("workload a = %+v, want the previous version at 10.0.0.1", a)
	}
	if w := snap.WorkloadByAddr(netAddr("", "10.0.0.2")); w != nil {
		t.Errorf("the rejected version of a is indexed at 10.0.0.2: %s", w.UID)
	}
	if web := snap.ServiceByVIP(netAddr("", "10.96.0.1")); web == nil || web.Hostname != "web.ns.svc.cluster.local" {
		t.Errorf("service at 10.96.0.1 = %+v, want the previous web", web)
	}
	if p := snap.Policy("ns/allow"); p == nil || p.Scope != security.Scope_GLOBAL || p.Action != security.Action_DENY ||
		!strings.HasPrefix(p.RejectedBecause(), "action: unknown value 9") {
		t.Errorf("policy ns/allow = %+v, want a GLOBAL deny-all standing in for the rejected version", p)
	}
	if p := snap.Policy("ns/misnamed-policy"); p == nil || p.RejectedBecause() == "" {
		t.Errorf("policy ns/misnamed-policy = %+v, want a deny-all stand-in", p)
	}
	if snap.Workload("b") == nil || snap.Service("ns/db.ns.svc.cluster.local") == nil {
		t.Error("the good resources of the update were not applied")
	}
	if snap.Workload("c") != nil || snap.Workload("misnamed") != nil || snap.Service("ns/other") != nil {
		t.Error("a misnamed resource was applied")
	}
}

// A service and a policy may share a name ("ns/x"); when both are bad,
// neither error may hide the other.
func TestApplyRejectsAServiceAndAPolicyOfTheSameName(t *testing.T) {
	bad := svc("ns", "x", "10.96.0.1")
	bad.Ports[0].ServicePort = 0
	badPolicy := policy("ns", "x", security.Scope_GLOBAL)
	badPolicy.Scope = 7
	rejected := state.NewStore().Apply(update(bad, badPolicy))
	err := rejected["ns/x"]
	if err == nil || !strings.Contains(err.Error(), "service.ports[0].service_port") || !strings.Contains(err.Error(), "scope: unknown value 7") {
		t.Errorf("rejected[ns/x] = %v, want both the service's and the policy's error", err)
	}
}

func TestApplyRemovesByName(t *testing.T) {
	s := state.NewStore()
	web := svc("ns", "web.ns.svc.cluster.local", "10.96.0.1")
	a := pod("a", "ns", "sa", "10.0.0.1")
	a.Services = map[string]*workload.PortList{"ns/web.ns.svc.cluster.local": {}}
	a.AuthorizationPolicies = []string{"ns/sel"}
	mustApply(t, s, update(a, pod("b", "ns", "sa", "10.0.0.2"), web, policy("ns", "sel", security.Scope_WORKLOAD_SELECTOR)))

	mustApply(t, s, state.Update{RemovedAddresses: []string{"b", "ns/web.ns.svc.cluster.local", "never-existed"}, RemovedPolicies: []string{"ns/sel"}})

	snap := s.Snapshot()
	if snap.Workload("b") != nil || snap.WorkloadByAddr(netAddr("", "10.0.0.2")) != nil {
		t.Error("workload b is still there after its removal")
	}
	if snap.Workload("a") == nil {
		t.Error("workload a was removed with b")
	}
	if snap.Service("ns/web.ns.svc.cluster.local") != nil || snap.ServiceByVIP(netAddr("", "10.96.0.1")) != nil ||
		len(snap.ServicesByHostname("web.ns.svc.cluster.local")) != 0 {
		t.Error("service web is still there after its removal")
	}
	if snap.Policy("ns/sel") != nil {
		t.Error("policy ns/sel is still there after its removal")
	}
	if _, missing := snap.PoliciesFor(snap.Workload("a")); !slices.Equal(missing, []string{"ns/sel"}) {
		t.Errorf("after removing ns/sel, PoliciesFor(a) missing = %v, want [ns/sel]", missing)
	}
}

func TestReplaceIsAllOrNothing(t *testing.T) {
	s := state.NewStore()
	if err := s.Replace(update(pod("a", "ns", "sa", "10.0.0.1"), policy("ns", "p", security.Scope_GLOBAL))); err != nil {
		t.Fatal(err)
	}
	before := s.Snapshot()
	changed := s.Changed()

	bad := svc("ns", "web", "10.96.0.1")
	bad.Hostname = ""
	u := update(pod("b", "ns", "sa", "10.0.0.2"), bad)
	u.Addresses["ns/web"] = u.Addresses["ns/"]
	delete(u.Addresses, "ns/")
	u.Addresses["c"] = &workload.Address{Type: &workload.Address_Workload{Workload: pod("c", "", "sa", "10.0.0.3")}}
	err := s.Replace(u)

	var rej state.RejectedError
	if !errors.As(err, &rej) {
		t.Fatalf("Replace with bad resources = %v, want a RejectedError", err)
	}
	if len(rej) != 2 || rej["ns/web"] == nil || rej["c"] == nil {
		t.Errorf("rejected %v, want ns/web and c", rej)
	}
	if want := `rejected: c: workload.namespace: empty on an HBONE workload (its identity needs it); ns/web: service.hostname: empty`; err.Error() != want {
		t.Errorf("error text:\n got: %s\nwant: %s", err, want)
	}
	if s.Snapshot() != before {
		t.Error("a failed Replace swapped the snapshot")
	}
	select {
	case <-changed:
		t.Error("a failed Replace signalled a change")
	default:
	}

	if err := s.Replace(update(pod("b", "ns", "sa", "10.0.0.2"))); err != nil {
		t.Fatal(err)
	}
	after := s.Snapshot()
	if after.Workload("a") != nil || after.Policy("ns/p") != nil || after.WorkloadByAddr(netAddr("", "10.0.0.1")) != nil {
		t.Error("Replace kept resources its update does not list")
	}
	if after.Workload("b") == nil {
		t.Error("Replace did not apply b")
	}
	if after.Version() <= before.Version() {
		t.Errorf("version went from %d to %d", before.Version(), after.Version())
	}
}

// A Replace whose policies are rejected still never leaves a rejected
// policy's previous version (or nothing) in force: with a bad workload the
// last good state stays but the rejected policy becomes a deny-all; with
// only bad policies the update applies with their deny-alls.
func TestReplaceDeniesForRejectedPolicies(t *testing.T) {
	s := state.NewStore()
	allow := policy("ns", "allow", security.Scope_NAMESPACE)
	if err := s.Replace(update(pod("a", "ns", "sa", "10.0.0.1"), allow)); err != nil {
		t.Fatal(err)
	}
	badAllow := policy("ns", "allow", security.Scope_NAMESPACE)
	badAllow.Rules = []*security.Rule{{Clauses: []*security.Clause{{Matches: []*security.Match{{DestinationPorts: []uint32{70000}}}}}}}
	u := update(pod("b", "", "sa", "10.0.0.2"), badAllow)
	if err := s.Replace(u); err == nil || !strings.Contains(err.Error(), "destination_ports[0]") {
		t.Fatalf("Replace = %v, want the bad port named", err)
	}
	snap := s.Snapshot()
	if snap.Workload("a") == nil || snap.Workload("b") != nil {
		t.Error("a Replace with a bad workload did not keep the last good workloads")
	}
	p := snap.Policy("ns/allow")
	if p == nil || p.RejectedBecause() == "" || p.Action != security.Action_DENY || p.Scope != security.Scope_NAMESPACE {
		t.Fatalf("ns/allow = %+v, want a NAMESPACE deny-all in place of the last good version", p)
	}
	if ps, _ := snap.PoliciesFor(snap.Workload("a")); !slices.Contains(keys(ps), "ns/allow") {
		t.Errorf("PoliciesFor(a) = %v, want the deny-all", keys(ps))
	}

	u = update(pod("a", "ns", "sa", "10.0.0.1"), pod("b", "ns", "sa", "10.0.0.2"))
	u.BadPolicies = map[string]state.BadPolicy{"ns/unreadable": {Err: errors.New("decode: bad wire data")}}
	if err := s.Replace(u); err == nil || !strings.Contains(err.Error(), "ns/unreadable: decode: bad wire data") {
		t.Fatalf("Replace = %v, want ns/unreadable rejected", err)
	}
	snap = s.Snapshot()
	if snap.Workload("b") == nil || snap.Policy("ns/allow") != nil {
		t.Error("a Replace with only a bad policy did not apply")
	}
	if p := snap.Policy("ns/unreadable"); p == nil || p.Scope != security.Scope_GLOBAL || p.RejectedBecause() == "" {
		t.Errorf("ns/unreadable = %+v, want a GLOBAL deny-all", p)
	}
	if ps, _ := snap.PoliciesFor(snap.Workload("b")); !slices.Contains(keys(ps), "ns/unreadable") {
		t.Errorf("PoliciesFor(b) = %v, want the GLOBAL deny-all", keys(ps))
	}
}

func TestSnapshotIndexes(t *testing.T) {
	sa := identity.MustWorkloadID("cluster.local", "ns", "sa")
	onNet1 := pod("net1-a", "ns", "sa", "10.0.0.1")
	onNet1.Network = "net1"
	onNet1.Node = "node2"
	vm := &workload.Workload{Uid: "vm", Name: "vm", Addresses: [][]byte{ip("10.0.0.50")}, Node: "node1"}
	c := pod("c", "ns", "sa", "10.0.0.3")
	c.Node = "node1"
	c.Services = map[string]*workload.PortList{"ns/web.example.com": {}}
	c.AuthorizationPolicies = []string{"ns/selects-c", "ns/not-here", "other/namespace-wide", "ns/global-listed"}
	a := pod("a", "ns", "sa", "10.0.0.1", "fd00::1")
	a.Node = "node1"
	a.Services = map[string]*workload.PortList{"ns/web.example.com": {}, "other/web.example.com": {}}
	b := pod("b", "other", "sa", "10.0.0.2")
	b.Services = map[string]*workload.PortList{"ns/web.example.com": {}}
	web2 := svc("other", "web.example.com", "10.96.0.2")
	web2.Addresses[0].Network = "net1"

	s := state.NewStore()
	mustApply(t, s, update(c, a, b, onNet1, vm,
		svc("ns", "web.example.com", "10.96.0.1", "fd00:96::1"), web2,
		policy("istio-system", "global", security.Scope_GLOBAL),
		policy("ns", "global-listed", security.Scope_GLOBAL),
		policy("ns", "namespace-wide", security.Scope_NAMESPACE),
		policy("other", "namespace-wide", security.Scope_NAMESPACE),
		policy("ns", "selects-c", security.Scope_WORKLOAD_SELECTOR),
		policy("ns", "selects-nobody", security.Scope_WORKLOAD_SELECTOR),
	))
	snap := s.Snapshot()

	t.Run("WorkloadByAddr", func(t *testing.T) {
		for _, tt := range []struct {
			at   state.NetAddr
			want string
		}{
			{netAddr("", "10.0.0.1"), "a"},
			{netAddr("", "fd00::1"), "a"},
			{netAddr("net1", "10.0.0.1"), "net1-a"},
			{netAddr("", "10.0.0.50"), "vm"},
			{netAddr("net2", "10.0.0.1"), ""},
			{netAddr("", "10.0.0.99"), ""},
			{netAddr("", "10.96.0.1"), ""}, // a VIP is not a workload
		} {
			got := ""
			if w := snap.WorkloadByAddr(tt.at); w != nil {
				got = w.UID
			}
			if got != tt.want {
				t.Errorf("WorkloadByAddr(%v) = %q, want %q", tt.at, got, tt.want)
			}
		}
	})
	t.Run("ServiceByVIP", func(t *testing.T) {
		for _, tt := range []struct {
			at   state.NetAddr
			want string
		}{
			{netAddr("", "10.96.0.1"), "ns/web.example.com"},
			{netAddr("", "fd00:96::1"), "ns/web.example.com"},
			{netAddr("net1", "10.96.0.2"), "other/web.example.com"},
			{netAddr("", "10.96.0.2"), ""},
			{netAddr("net1", "10.96.0.1"), ""},
			{netAddr("", "10.0.0.1"), ""},
		} {
			got := ""
			if sv := snap.ServiceByVIP(tt.at); sv != nil {
				got = sv.Key()
			}
			if got != tt.want {
				t.Errorf("ServiceByVIP(%v) = %q, want %q", tt.at, got, tt.want)
			}
		}
	})
	t.Run("ServicesByHostname", func(t *testing.T) {
		var got []string
		for _, sv := range snap.ServicesByHostname("web.example.com") {
			got = append(got, sv.Key())
		}
		if want := []string{"ns/web.example.com", "other/web.example.com"}; !slices.Equal(got, want) {
			t.Errorf("ServicesByHostname = %v, want %v", got, want)
		}
		if got := snap.ServicesByHostname("nope.example.com"); len(got) != 0 {
			t.Errorf("ServicesByHostname(unknown) = %v", got)
		}
	})
	t.Run("Endpoints sorted by uid", func(t *testing.T) {
		if got, want := uids(snap.Endpoints("ns/web.example.com")), []string{"a", "b", "c"}; !slices.Equal(got, want) {
			t.Errorf("Endpoints(ns/web) = %v, want %v", got, want)
		}
		if got, want := uids(snap.Endpoints("other/web.example.com")), []string{"a"}; !slices.Equal(got, want) {
			t.Errorf("Endpoints(other/web) = %v, want %v", got, want)
		}
	})
	t.Run("WorkloadsByIdentity", func(t *testing.T) {
		if got, want := uids(snap.WorkloadsByIdentity(sa)), []string{"a", "c", "net1-a"}; !slices.Equal(got, want) {
			t.Errorf("WorkloadsByIdentity(%v) = %v, want %v", sa, got, want)
		}
		if got := snap.WorkloadsByIdentity(spiffeid.ID{}); len(got) != 0 {
			t.Errorf("plain workloads are indexed under the zero identity: %v", uids(got))
		}
	})
	t.Run("WorkloadsOnNode", func(t *testing.T) {
		if got, want := uids(snap.WorkloadsOnNode("node1")), []string{"a", "c", "vm"}; !slices.Equal(got, want) {
			t.Errorf("WorkloadsOnNode(node1) = %v, want %v", got, want)
		}
		if got := snap.WorkloadsOnNode(""); len(got) != 0 {
			t.Errorf("workloads without a node are indexed under \"\": %v", uids(got))
		}
	})
	t.Run("PoliciesFor", func(t *testing.T) {
		for _, tt := range []struct {
			uid          string
			want, missed []string
		}{
			// Global ones, then its namespace's, then the selector policies it
			// lists; listing a policy of another scope adds nothing.
			{"c", []string{"istio-system/global", "ns/global-listed", "ns/namespace-wide", "ns/selects-c"}, []string{"ns/not-here"}},
			{"a", []string{"istio-system/global", "ns/global-listed", "ns/namespace-wide"}, nil},
			{"b", []string{"istio-system/global", "ns/global-listed", "other/namespace-wide"}, nil},
			{"vm", []string{"istio-system/global", "ns/global-listed"}, nil},
		} {
			ps, missing := snap.PoliciesFor(snap.Workload(tt.uid))
			if got := keys(ps); !slices.Equal(got, tt.want) {
				t.Errorf("PoliciesFor(%s) = %v, want %v", tt.uid, got, tt.want)
			}
			if !slices.Equal(missing, tt.missed) {
				t.Errorf("PoliciesFor(%s) missing = %v, want %v", tt.uid, missing, tt.missed)
			}
		}
	})
	t.Run("listings", func(t *testing.T) {
		if got, want := uids(snap.Workloads()), []string{"a", "b", "c", "net1-a", "vm"}; !slices.Equal(got, want) {
			t.Errorf("Workloads() = %v, want %v", got, want)
		}
		if got := len(snap.Services()); got != 2 {
			t.Errorf("Services() has %d, want 2", got)
		}
		if got := keys(snap.Policies()); len(got) != 6 || got[0] != "istio-system/global" {
			t.Errorf("Policies() = %v, want 6 sorted by key", got)
		}
	})
}

func TestSnapshotIsImmutable(t *testing.T) {
	s := state.NewStore()
	a := pod("a", "ns", "sa", "10.0.0.1")
	a.Services = map[string]*workload.PortList{"ns/web": {}}
	mustApply(t, s, update(a, pod("b", "ns", "sa", "10.0.0.2"), svc("ns", "web", "10.96.0.1"), policy("ns", "p", security.Scope_NAMESPACE)))
	old := s.Snapshot()
	oldA := old.Workload("a")

	moved := pod("a", "ns", "sa", "10.0.0.9")
	u := update(moved, svc("ns", "web", "10.96.0.2"))
	u.RemovedAddresses = []string{"b"}
	u.RemovedPolicies = []string{"ns/p"}
	mustApply(t, s, u)

	if old.Workload("a") != oldA || oldA.Addrs[0] != netip.MustParseAddr("10.0.0.1") {
		t.Error("the old snapshot's workload a changed")
	}
	if old.WorkloadByAddr(netAddr("", "10.0.0.1")) != oldA || old.WorkloadByAddr(netAddr("", "10.0.0.9")) != nil {
		t.Error("the old snapshot's address index changed")
	}
	if old.Workload("b") == nil || old.Policy("ns/p") == nil {
		t.Error("removals reached the old snapshot")
	}
	if old.ServiceByVIP(netAddr("", "10.96.0.1")) == nil || old.ServiceByVIP(netAddr("", "10.96.0.2")) != nil {
		t.Error("the old snapshot's VIP index changed")
	}
	if got := uids(old.Endpoints("ns/web")); !slices.Equal(got, []string{"a"}) {
		t.Errorf("old Endpoints(ns/web) = %v, want [a]", got)
	}
	cur := s.Snapshot()
	if cur.WorkloadByAddr(netAddr("", "10.0.0.9")) == nil || cur.Workload("b") != nil || len(cur.Endpoints("ns/web")) != 0 {
		t.Error("the new snapshot does not show the update")
	}
	if cur.Version() != old.Version()+1 {
		t.Errorf("version %d after %d, want +1", cur.Version(), old.Version())
	}
}

func TestChangedClosesOnSwap(t *testing.T) {
	s := state.NewStore()
	first := s.Changed()
	select {
	case <-first:
		t.Fatal("Changed is closed before any update")
	default:
	}
	// Even an update whose every resource is rejected swaps (a new version).
	bad := pod("", "ns", "sa")
	u := update(bad)
	if rej := s.Apply(u); rej[""] == nil {
		t.Fatalf("Apply(workload without uid) rejected %v", rej)
	}
	select {
	case <-first:
	default:
		t.Fatal("Changed not closed after Apply")
	}
	second := s.Changed()
	if second == first {
		t.Fatal("Changed returned the closed channel again")
	}
	select {
	case <-second:
		t.Fatal("the next Changed is already closed")
	default:
	}
	if err := s.Replace(state.Update{}); err != nil {
		t.Fatal(err)
	}
	select {
	case <-second:
	default:
		t.Fatal("Changed not closed after Replace")
	}
}

// A store is synced once told so (the first full xDS response of every
// type) or once given a whole state; partial updates alone do not make it
// so, and nothing unsyncs it.
func TestStoreSynced(t *testing.T) {
	s := state.NewStore()
	if s.Snapshot().Synced() {
		t.Fatal("a new store is synced")
	}
	s.Apply(state.Update{Policies: map[string]*security.Authorization{"a/p": {Name: "p", Namespace: "a", Scope: security.Scope_NAMESPACE}}})
	if s.Snapshot().Synced() {
		t.Fatal("a partial update made the store synced")
	}
	changed := s.Changed()
	s.MarkSynced()
	if !s.Snapshot().Synced() || s.Snapshot().Policy("a/p") == nil {
		t.Fatal("MarkSynced: not synced, or the state was lost")
	}
	select {
	case <-changed:
	default:
		t.Error("MarkSynced swapped no snapshot")
	}
	s.Apply(state.Update{RemovedPolicies: []string{"a/p"}})
	if !s.Snapshot().Synced() {
		t.Fatal("an update unsynced the store")
	}
	r := state.NewStore()
	if err := r.Replace(state.Update{}); err != nil || !r.Snapshot().Synced() {
		t.Fatalf("Replace: synced=%v err=%v", r.Snapshot().Synced(), err)
	}
}
