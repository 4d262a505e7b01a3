package authz

import (
	"net/netip"
	"reflect"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/zmesh/zmesh/api/workload/security"
)

func mustCompile(t testing.TB, a *security.Authorization) *Policy {
	t.Helper()
	p, err := Compile(a)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func portPolicy(t testing.TB, name string, action security.Action, dryRun bool, port uint32) *Policy {
	return mustCompile(t, &security.Authorization{
		Name: name, Namespace: "ns", Action: action, DryRun: dryRun,
		Rules: []*security.Rule{{Clauses: []*security.Clause{{Matches: []*security.Match{{DestinationPorts: []uint32{port}}}}}}},
	})
}

// TestEvaluateDecision checks every field of a Decision; the golden tests
// show only their summary.
func TestEvaluateDecision(t *testing.T) {
	deny80 := portPolicy(t, "deny-80", security.Action_DENY, false, 80)
	allow443 := portPolicy(t, "allow-443", security.Action_ALLOW, false, 443)
	dryDeny443 := portPolicy(t, "dry-deny-443", security.Action_DENY, true, 443)
	dryAllow443 := portPolicy(t, "dry-allow-443", security.Action_ALLOW, true, 443)
	conn := func(port uint16) Conn {
		return Conn{
			Src:  netip.MustParseAddrPort("10.0.0.1:5555"),
			Dst:  netip.AddrPortFrom(netip.MustParseAddr("10.0.0.2"), port),
			Peer: spiffeid.RequireFromString("spiffe://cluster.local/ns/a/sa/b"),
		}
	}
	tests := []struct {
		name     string
		policies []*Policy
		conn     Conn
		want     Decision
	}{
		{"no policies", nil, conn(80), Decision{Allowed: true, Reason: "no ALLOW policies"}},
		{"nil policies skipped", []*Policy{nil, nil}, conn(80), Decision{Allowed: true, Reason: "no ALLOW policies"}},
		{
			"denied", []*Policy{nil, allow443, deny80}, conn(80),
			Decision{Policy: "ns/deny-80", Reason: "denied by DENY policy ns/deny-80"},
		},
		{
			"allowed", []*Policy{deny80, allow443}, conn(443),
			Decision{Allowed: true, Policy: "ns/allow-443", Reason: "allowed by ALLOW policy ns/allow-443"},
		},
		{
			"none matched", []*Policy{deny80, allow443}, conn(22),
			Decision{Reason: "no ALLOW policy matched"},
		},
		{
			"dry-run deny only reports", []*Policy{dryDeny443}, conn(443),
			Decision{Allowed: true, Reason: "no ALLOW policies", DryRun: []string{"ns/dry-deny-443: would deny"}},
		},
		{
			"dry-run allow is not an allow policy", []*Policy{dryAllow443}, conn(22),
			Decision{Allowed: true, Reason: "no ALLOW policies", DryRun: []string{"no dry-run ALLOW policy matched: would deny"}},
		},
		{
			"dry-run allow matched", []*Policy{dryAllow443, allow443}, conn(443),
			Decision{
				Allowed: true, Policy: "ns/allow-443", Reason: "allowed by ALLOW policy ns/allow-443",
				DryRun: []string{"ns/dry-allow-443: would allow"},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Evaluate(tt.policies, tt.conn); !reflect.DeepEqual(got, tt.want) {
				t.Errorf("Evaluate:\n got: %#v\nwant: %#v", got, tt.want)
			}
		})
	}
}

func TestEvaluateZeroConn(t *testing.T) {
	// A connection with no addresses at all must not match address or port
	// lists, and must be matched by their not_ forms.
	p := mustCompile(t, &security.Authorization{
		Name: "p", Namespace: "ns", Action: security.Action_DENY,
		Rules: []*security.Rule{{Clauses: []*security.Clause{{Matches: []*security.Match{
			{SourceIps: []*security.Address{addr("0.0.0.0/0")}},
			{NotSourceIps: []*security.Address{addr("0.0.0.0/0")}, NotDestinationPorts: []uint32{80}},
		}}}}},
	})
	if got := Evaluate([]*Policy{p}, Conn{}); got.Allowed || got.Policy != "ns/p" {
		t.Errorf("Evaluate(zero Conn) = %+v, want denied by the not_ match", got)
	}
}

func BenchmarkEvaluate(b *testing.B) {
	strict := mustCompile(b, &security.Authorization{
		Name: "strict", Namespace: "istio-system", Action: security.Action_DENY,
		Rules: []*security.Rule{{Clauses: []*security.Clause{{Matches: []*security.Match{{
			NotPrincipals: []*security.StringMatch{{MatchType: &security.StringMatch_Presence{}}},
		}}}}}},
	})
	allow := mustCompile(b, &security.Authorization{
		Name: "allow", Namespace: "ns", Action: security.Action_ALLOW,
		Rules: []*security.Rule{{Clauses: []*security.Clause{{Matches: []*security.Match{{
			Namespaces: []*security.StringMatch{{MatchType: &security.StringMatch_Exact{Exact: "a"}}},
			SourceIps:  []*security.Address{addr("10.0.0.0/8")},
		}}}}}},
	})
	policies := []*Policy{strict, allow}
	c := Conn{
		Src:  netip.MustParseAddrPort("10.0.0.1:5555"),
		Dst:  netip.MustParseAddrPort("10.0.0.2:80"),
		Peer: spiffeid.RequireFromString("spiffe://cluster.local/ns/a/sa/b"),
	}
	b.ReportAllocs()
	for b.Loop() {
		if d := Evaluate(policies, c); !d.Allowed {
			b.Fatal(d.Reason)
		}
	}
}
