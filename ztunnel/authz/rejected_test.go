package authz

import (
	"errors"
	"net/netip"
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/zmesh/zmesh/api/workload/security"
)

// TestRejectedScope is the decision of what a refused policy denies.
func TestRejectedScope(t *testing.T) {
	tests := []struct {
		name      string
		key       string
		a         *security.Authorization
		wantKey   string
		wantScope security.Scope
		wantNS    string
		wantDry   bool
	}{
		{"nothing decoded: mesh-wide", "ns/p", nil, "ns/p", security.Scope_GLOBAL, "ns", false},
		{"selector policy keeps its scope", "ns/p",
			&security.Authorization{Name: "p", Namespace: "ns", Scope: security.Scope_WORKLOAD_SELECTOR, Action: security.Action_ALLOW},
			"ns/p", security.Scope_WORKLOAD_SELECTOR, "ns", false},
		{"namespace policy keeps its scope", "ns/p",
			&security.Authorization{Name: "p", Namespace: "ns", Scope: security.Scope_NAMESPACE},
			"ns/p", security.Scope_NAMESPACE, "ns", false},
		{"unknown scope: mesh-wide", "ns/p",
			&security.Authorization{Name: "p", Namespace: "ns", Scope: 7},
			"ns/p", security.Scope_GLOBAL, "ns", false},
		{"namespace from the resource name when the body has none", "ns/p",
			&security.Authorization{Name: "", Scope: security.Scope_NAMESPACE},
			"ns/p", security.Scope_NAMESPACE, "ns", false},
		{"a namespace that contradicts the resource name: mesh-wide", "other/p",
			&security.Authorization{Name: "p", Namespace: "ns", Scope: security.Scope_NAMESPACE},
			"other/p", security.Scope_GLOBAL, "other", false},
		{"an unsplittable name keeps its key", "policies[3]", nil, "policies[3]", security.Scope_GLOBAL, "", false},
		{"no namespace: mesh-wide", "policies[3]",
			&security.Authorization{Scope: security.Scope_NAMESPACE},
			"policies[3]", security.Scope_GLOBAL, "", false},
		{"dry-run stays dry-run", "ns/p",
			&security.Authorization{Name: "p", Namespace: "ns", Scope: security.Scope_NAMESPACE, DryRun: true},
			"ns/p", security.Scope_NAMESPACE, "ns", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := Rejected(tt.key, tt.a, errors.New("rules[0]: bad"))
			if p.Key() != tt.wantKey || p.Scope != tt.wantScope || p.Namespace != tt.wantNS || p.DryRun != tt.wantDry {
				t.Errorf("key %q scope %v ns %q dry-run %v; want %q %v %q %v",
					p.Key(), p.Scope, p.Namespace, p.DryRun, tt.wantKey, tt.wantScope, tt.wantNS, tt.wantDry)
			}
			if p.Action != security.Action_DENY || p.Raw().GetAction() != security.Action_DENY {
				t.Errorf("action %v (raw %v), want DENY", p.Action, p.Raw().GetAction())
			}
			if p.RejectedBecause() != "rules[0]: bad" {
				t.Errorf("RejectedBecause = %q", p.RejectedBecause())
			}
			// What the config dump shows compiles to the same deny-all.
			if tt.wantNS != "" {
				if _, err := Compile(p.Raw()); err != nil {
					t.Errorf("the stand-in's wire form does not compile: %v", err)
				}
			}
		})
	}
}

// A refused ALLOW denies everyone, where leaving it out would leave "no
// ALLOW policies" and allow everyone; a refused dry-run policy only
// reports.
func TestEvaluateRejected(t *testing.T) {
	c := Conn{
		Src:  netip.MustParseAddrPort("10.0.0.1:5555"),
		Dst:  netip.MustParseAddrPort("10.0.0.2:80"),
		Peer: spiffeid.RequireFromString("spiffe://cluster.local/ns/a/sa/b"),
	}
	bad := &security.Authorization{Name: "allow-a", Namespace: "ns", Scope: security.Scope_NAMESPACE, Action: security.Action_ALLOW}
	d := Evaluate([]*Policy{Rejected("ns/allow-a", bad, errors.New("rules[0].clauses[0].matches[0].source_ips[0]: 5 address bytes, want 4 or 16"))}, c)
	if d.Allowed || d.Policy != "ns/allow-a" {
		t.Fatalf("decision %+v, want denied by ns/allow-a", d)
	}
	if !strings.Contains(d.Reason, "ns/allow-a was rejected") || !strings.Contains(d.Reason, "source_ips[0]") {
		t.Errorf("reason %q names neither the policy's rejection nor its cause", d.Reason)
	}
	dry := &security.Authorization{Name: "d", Namespace: "ns", DryRun: true}
	d = Evaluate([]*Policy{Rejected("ns/d", dry, errors.New("x"))}, c)
	if !d.Allowed || len(d.DryRun) != 1 {
		t.Errorf("a refused dry-run policy: %+v, want allowed with a dry-run report", d)
	}
}

func TestPeerAuthentication(t *testing.T) {
	tests := []struct {
		key, want string
		ok        bool
	}{
		{"prod/istio_converted_peer_authentication_default", "prod/default", true},
		{"istio-system/istio_converted_peer_authentication_mesh", "istio-system/mesh", true},
		{"prod/istio_converted_peer_authentication_", "", false},
		{"prod/deny-all", "", false},
		{"istio_converted_peer_authentication_x", "", false},
		{"/istio_converted_peer_authentication_x", "", false},
	}
	for _, tt := range tests {
		got, ok := PeerAuthentication(tt.key)
		if got != tt.want || ok != tt.ok {
			t.Errorf("PeerAuthentication(%q) = %q, %v; want %q, %v", tt.key, got, ok, tt.want, tt.ok)
		}
	}
	deny := mustCompile(t, &security.Authorization{
		Name: "istio_converted_peer_authentication_default", Namespace: "prod", Action: security.Action_DENY,
		Rules: []*security.Rule{{}},
	})
	d := Evaluate([]*Policy{deny}, Conn{Src: netip.MustParseAddrPort("10.0.0.1:1"), Dst: netip.MustParseAddrPort("10.0.0.2:80")})
	if d.Allowed || d.Reason != "mutual TLS required by PeerAuthentication prod/default" {
		t.Errorf("decision %+v, want a refusal naming PeerAuthentication prod/default", d)
	}
}
