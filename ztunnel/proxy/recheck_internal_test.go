package proxy

import (
	"net/netip"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/protobuf/proto"

	"github.com/zmesh/zmesh/api/workload"
	"github.com/zmesh/zmesh/api/workload/security"
	"github.com/zmesh/zmesh/ztunnel/authz"
	"github.com/zmesh/zmesh/ztunnel/state"
)

// TestRecheck is the decision a policy change takes on a live connection:
// closed only when the policies now in force refuse it; left alone when
// they are the same ones, or when the destination or a listed policy is
// missing (transient while config streams in).
func TestRecheck(t *testing.T) {
	server := &workload.Workload{Uid: "server", Name: "server", Namespace: "demo", Addresses: [][]byte{{10, 0, 0, 2}},
		TunnelProtocol: workload.TunnelProtocol_HBONE}
	denyOther := &security.Authorization{Name: "deny-other", Namespace: "demo", Scope: security.Scope_NAMESPACE, Action: security.Action_DENY,
		Rules: []*security.Rule{{Clauses: []*security.Clause{{Matches: []*security.Match{{
			Namespaces: []*security.StringMatch{{MatchType: &security.StringMatch_Exact{Exact: "other"}}}}}}}}}}
	allowNobody := &security.Authorization{Name: "allow-nobody", Namespace: "demo", Scope: security.Scope_NAMESPACE, Action: security.Action_ALLOW}
	listing := func(keys ...string) *workload.Workload {
		w := proto.Clone(server).(*workload.Workload)
		w.AuthorizationPolicies = keys
		return w
	}
	snapshot := func(w *workload.Workload, pols ...*security.Authorization) *state.Snapshot {
		s := state.NewStore()
		u := state.Update{Addresses: map[string]*workload.Address{}, Policies: map[string]*security.Authorization{}}
		if w != nil {
			u.Addresses[w.Uid] = &workload.Address{Type: &workload.Address_Workload{Workload: w}}
		}
		for _, p := range pols {
			u.Policies[p.Namespace+"/"+p.Name] = p
		}
		if err := s.Replace(u); err != nil {
			t.Fatal(err)
		}
		return s.Snapshot()
	}
	conn := func(ns string) authz.Conn {
		return authz.Conn{Src: netip.MustParseAddrPort("10.0.0.1:5555"), Dst: netip.MustParseAddrPort("10.0.0.2:8080"),
			Peer: spiffeid.RequireFromString("spiffe://cluster.local/ns/" + ns + "/sa/default")}
	}
	before := snapshot(server)
	tests := []struct {
		name        string
		from        string
		after       *state.Snapshot
		wantChanged bool
		wantAllowed bool
		wantBy      string
	}{
		{"unchanged policies", "other", before, false, false, ""},
		{"a DENY naming it", "other", snapshot(server, denyOther), true, false, "demo/deny-other"},
		{"a DENY not naming it", "demo", snapshot(server, denyOther), true, true, ""},
		{"an ALLOW not naming it", "demo", snapshot(server, allowNobody), true, false, "demo/allow-nobody"},
		{"the destination gone", "other", snapshot(nil, denyOther), false, false, ""},
		{"a listed policy not received yet", "other", snapshot(listing("demo/later"), denyOther), false, false, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ic := &inboundConn{conn: conn(tt.from)}
			ic.policies, _ = before.PoliciesFor(before.Workload("server"))
			sel := policySelection{snap: tt.after}
			d, _, changed := sel.recheck(ic)
			if changed != tt.wantChanged || changed && d.Allowed != tt.wantAllowed {
				t.Fatalf("changed=%v allowed=%v (%s), want changed=%v allowed=%v", changed, d.Allowed, d.Reason, tt.wantChanged, tt.wantAllowed)
			}
			if changed && !d.Allowed {
				ps, _ := tt.after.PoliciesFor(tt.after.Workload("server"))
				if by := refusedBy(d, ps); by != tt.wantBy {
					t.Errorf("refused by %q, want %q", by, tt.wantBy)
				}
			}
			if changed {
				// Decided once: the same policies do not decide again.
				if _, _, again := sel.recheck(ic); again {
					t.Error("the same snapshot decided the connection twice")
				}
			}
		})
	}
}

// TestRecheckWaypoint: a service of the destination that comes behind a
// waypoint closes the live connections to its target port that did not
// come through that waypoint, and only those.
func TestRecheckWaypoint(t *testing.T) {
	snapshot := func(waypoint string) *state.Snapshot {
		u, err := state.ParseLocalConfig([]byte(`
workloads:
  - {uid: server, namespace: demo, serviceAccount: server, addresses: [10.0.0.2], tunnelProtocol: HBONE,
     services: {demo/api.demo: {ports: [{servicePort: 80, targetPort: 8080}]}}}
  - {uid: wp, namespace: demo, serviceAccount: waypoint, addresses: [10.0.9.1], tunnelProtocol: HBONE,
     services: {demo/waypoint.demo: {}}}
services:
  - {namespace: demo, hostname: waypoint.demo, addresses: [10.96.9.1], ports: [{servicePort: 15008}]}
  - {namespace: demo, hostname: api.demo, addresses: [10.96.0.1], ports: [{servicePort: 80, targetPort: 8080}]` + waypoint + `}
`))
		if err != nil {
			t.Fatal(err)
		}
		s := state.NewStore()
		if err := s.Replace(u); err != nil {
			t.Fatal(err)
		}
		return s.Snapshot()
	}
	before, after := snapshot(""), snapshot(", waypoint: {address: 10.96.9.1}")
	tests := []struct {
		name        string
		sa          string
		port        uint16
		wantChanged bool
	}{
		{"a direct client on the target port", "client", 8080, true},
		{"the waypoint", "waypoint", 8080, false},
		{"a direct client on another port", "client", 9090, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ic := &inboundConn{conn: authz.Conn{Src: netip.MustParseAddrPort("10.0.0.1:5555"), Dst: netip.AddrPortFrom(netip.MustParseAddr("10.0.0.2"), tt.port),
				Peer: spiffeid.RequireFromString("spiffe://cluster.local/ns/demo/sa/" + tt.sa)}}
			ic.policies, _ = before.PoliciesFor(before.Workload("server"))
			if ic.policies == nil {
				ic.policies = []*authz.Policy{}
			}
			sel := policySelection{snap: after}
			d, bypass, changed := sel.recheck(ic)
			if changed != tt.wantChanged {
				t.Fatalf("changed=%v (%s), want %v", changed, d.Reason, tt.wantChanged)
			}
			if changed && (d.Allowed || !bypass) {
				t.Fatalf("allowed=%v bypass=%v (%s), want refused as a bypass", d.Allowed, bypass, d.Reason)
			}
		})
	}
}
