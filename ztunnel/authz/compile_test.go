package authz

import (
	"net/netip"
	"testing"

	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/zmesh/zmesh/api/workload/security"
)

// withMatch returns a valid policy whose rules[0].clauses[1].matches[0] is m,
// so that every error test also checks the full path.
func withMatch(m *security.Match) *security.Authorization {
	return &security.Authorization{
		Name:      "p",
		Namespace: "ns",
		Rules: []*security.Rule{{Clauses: []*security.Clause{
			{Matches: []*security.Match{{DestinationPorts: []uint32{80}}}},
			{Matches: []*security.Match{m}},
		}}},
	}
}

func addr(s string) *security.Address {
	p := netip.MustParsePrefix(s)
	return &security.Address{Address: p.Addr().AsSlice(), Length: uint32(p.Bits())}
}

func TestCompileErrors(t *testing.T) {
	const at = "rules[0].clauses[1].matches[0]."
	exactA := &security.StringMatch{MatchType: &security.StringMatch_Exact{Exact: "a"}}
	tests := []struct {
		name string
		in   *security.Authorization
		want string
	}{
		{"nil", nil, "nil authorization"},
		{"empty name", &security.Authorization{Namespace: "ns"}, "name: empty"},
		{"empty namespace", &security.Authorization{Name: "p"}, "namespace: empty"},
		{"unknown scope", &security.Authorization{Name: "p", Namespace: "ns", Scope: 3}, "scope: unknown value 3"},
		{"unknown action", &security.Authorization{Name: "p", Namespace: "ns", Action: 2}, "action: unknown value 2"},
		{"negative action", &security.Authorization{Name: "p", Namespace: "ns", Action: -1}, "action: unknown value -1"},
		{
			"nil rule",
			&security.Authorization{Name: "p", Namespace: "ns", Rules: []*security.Rule{{}, nil}},
			"rules[1]: nil rule",
		},
		{
			"nil clause",
			&security.Authorization{Name: "p", Namespace: "ns", Rules: []*security.Rule{{Clauses: []*security.Clause{{}, {}, nil}}}},
			"rules[0].clauses[2]: nil clause",
		},
		{"nil match", withMatch(nil), "rules[0].clauses[1].matches[0]: nil match"},
		{
			"source ip 5 bytes",
			withMatch(&security.Match{SourceIps: []*security.Address{addr("10.0.0.0/8"), addr("10.0.0.1/32"), {Address: []byte{1, 2, 3, 4, 5}, Length: 8}}}),
			at + "source_ips[2]: 5 address bytes, want 4 or 16",
		},
		{
			"not source ip empty",
			withMatch(&security.Match{NotSourceIps: []*security.Address{{}}}),
			at + "not_source_ips[0]: 0 address bytes, want 4 or 16",
		},
		{
			"destination ip v4 length",
			withMatch(&security.Match{DestinationIps: []*security.Address{{Address: []byte{10, 0, 0, 0}, Length: 33}}}),
			at + "destination_ips[0]: prefix length 33, want at most 32",
		},
		{
			"not destination ip v6 length",
			withMatch(&security.Match{NotDestinationIps: []*security.Address{addr("fd00::/8"), {Address: make([]byte, 16), Length: 129}}}),
			at + "not_destination_ips[1]: prefix length 129, want at most 128",
		},
		{
			"nil address",
			withMatch(&security.Match{SourceIps: []*security.Address{nil}}),
			at + "source_ips[0]: nil address",
		},
		{
			"port 0",
			withMatch(&security.Match{DestinationPorts: []uint32{80, 0}}),
			at + "destination_ports[1]: port 0, want 1 to 65535",
		},
		{
			"not port too big",
			withMatch(&security.Match{NotDestinationPorts: []uint32{65536}}),
			at + "not_destination_ports[0]: port 65536, want 1 to 65535",
		},
		{
			"namespace without match type",
			withMatch(&security.Match{Namespaces: []*security.StringMatch{exactA, {}}}),
			at + "namespaces[1]: no match type",
		},
		{
			"not namespace without match type",
			withMatch(&security.Match{NotNamespaces: []*security.StringMatch{{}}}),
			at + "not_namespaces[0]: no match type",
		},
		{
			"principal without match type",
			withMatch(&security.Match{Principals: []*security.StringMatch{{}}}),
			at + "principals[0]: no match type",
		},
		{
			"not principal nil",
			withMatch(&security.Match{NotPrincipals: []*security.StringMatch{exactA, exactA, nil}}),
			at + "not_principals[2]: nil string match",
		},
		{
			"nil service account",
			withMatch(&security.Match{ServiceAccounts: []*security.ServiceAccountMatch{nil}}),
			at + "service_accounts[0]: nil service account match",
		},
		{
			"nil not service account",
			withMatch(&security.Match{NotServiceAccounts: []*security.ServiceAccountMatch{{Namespace: "a", ServiceAccount: "b"}, nil}}),
			at + "not_service_accounts[1]: nil service account match",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := Compile(tt.in)
			if err == nil {
				t.Fatalf("Compile succeeded (%+v), want error %q", p, tt.want)
			}
			if err.Error() != tt.want {
				t.Errorf("Compile error:\n got: %s\nwant: %s", err, tt.want)
			}
		})
	}
}

func TestCompileKeepsFields(t *testing.T) {
	p, err := Compile(&security.Authorization{
		Name:      "strict",
		Namespace: "istio-system",
		Scope:     security.Scope_WORKLOAD_SELECTOR,
		Action:    security.Action_DENY,
		DryRun:    true,
		Rules: []*security.Rule{{Clauses: []*security.Clause{{Matches: []*security.Match{{
			NotPrincipals:     []*security.StringMatch{{MatchType: &security.StringMatch_Presence{Presence: &emptypb.Empty{}}}},
			SourceIps:         []*security.Address{addr("::ffff:10.0.0.0/104"), addr("10.1.2.3/8")},
			DestinationPorts:  []uint32{1, 65535},
			NotDestinationIps: []*security.Address{addr("::/0")},
		}}}}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	if p.Name != "strict" || p.Namespace != "istio-system" || p.Scope != security.Scope_WORKLOAD_SELECTOR ||
		p.Action != security.Action_DENY || !p.DryRun {
		t.Errorf("Compile lost fields: %+v", p)
	}
	if got, want := p.Key(), "istio-system/strict"; got != want {
		t.Errorf("Key() = %q, want %q", got, want)
	}
	m := p.rules[0][0][0]
	wantIPs := []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("10.0.0.0/8")}
	if len(m.sourceIPs) != 2 || m.sourceIPs[0] != wantIPs[0] || m.sourceIPs[1] != wantIPs[1] {
		t.Errorf("source IPs compiled to %v, want %v (unmapped and masked)", m.sourceIPs, wantIPs)
	}
	if len(m.notDestinationIPs) != 1 || m.notDestinationIPs[0] != netip.MustParsePrefix("::/0") {
		t.Errorf("not destination IPs compiled to %v, want [::/0]", m.notDestinationIPs)
	}
}

func TestCanonicalPrefix(t *testing.T) {
	tests := []struct{ in, want string }{
		{"10.1.2.3/8", "10.0.0.0/8"},
		{"::ffff:10.1.2.3/104", "10.0.0.0/8"},
		{"::ffff:10.1.2.3/128", "10.1.2.3/32"},
		{"::ffff:0.0.0.0/96", "0.0.0.0/0"},
		// Wider than the mapped range: stays IPv6.
		{"::ffff:0.0.0.0/95", "::fffe:0:0/95"},
		{"fd00::1/64", "fd00::/64"},
		{"::/0", "::/0"},
	}
	for _, tt := range tests {
		if got := canonicalPrefix(netip.MustParsePrefix(tt.in)); got.String() != tt.want {
			t.Errorf("canonicalPrefix(%s) = %s, want %s", tt.in, got, tt.want)
		}
	}
}
