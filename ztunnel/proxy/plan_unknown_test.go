package proxy_test

import (
	"errors"
	"net/netip"
	"strings"
	"testing"

	"github.com/zmesh/zmesh/ztunnel/proxy"
	"github.com/zmesh/zmesh/ztunnel/state"
)

// Before its first complete config, ztunnel cannot tell a mesh address
// from one outside the mesh: every outbound connection is refused, none
// passed through in plaintext. Once synced, an address outside the mesh
// passes through.
func TestPlanRefusesBeforeSync(t *testing.T) {
	store := state.NewStore()
	dst := netip.MustParseAddrPort("10.0.0.2:8080")
	p, err := proxy.PlanOutbound(store.Snapshot(), proxy.Source{}, dst, 0)
	if !errors.Is(err, proxy.ErrNotSynced) || p.Route == proxy.Passthrough && p.Dial.IsValid() {
		t.Fatalf("before sync: plan %+v, err %v; want ErrNotSynced and nothing to dial", p, err)
	}
	store.MarkSynced()
	p, err = proxy.PlanOutbound(store.Snapshot(), proxy.Source{}, netip.MustParseAddrPort("192.0.2.1:443"), 0)
	if err != nil || p.Route != proxy.Passthrough {
		t.Fatalf("after sync, an address outside the mesh: plan %+v, err %v; want passthrough", p, err)
	}
}

// An address the state does not know is held (ErrUnknownInMesh) when it
// lies in the mesh's ranges — given, or else derived per network from the
// /24 or /64 of known addresses — and passes through when it lies outside.
func TestPlanUnknownInMeshRanges(t *testing.T) {
	u, err := state.ParseLocalConfig([]byte(`
workloads:
  - {uid: client, namespace: app, serviceAccount: client, addresses: [10.0.0.1], tunnelProtocol: HBONE}
  - {uid: server6, namespace: app, serviceAccount: server, addresses: ["fd00::1"], tunnelProtocol: HBONE}
  - {uid: remote, namespace: app, serviceAccount: remote, network: net2, addresses: [10.5.0.1], tunnelProtocol: HBONE}
  - {uid: plain, namespace: legacy, addresses: [10.0.0.3]}
services:
  - {namespace: app, hostname: web.app.svc.cluster.local, addresses: [10.96.0.10], ports: [{servicePort: 80}]}
`))
	if err != nil {
		t.Fatal(err)
	}
	store := state.NewStore()
	if err := store.Replace(u); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		cidrs   string // "" = derived
		network string
		dst     string
		want    string // route, or "hold"
	}{
		{"", "", "10.0.0.1:80", "direct"},
		{"", "", "10.0.0.3:80", "passthrough"}, // known, not captured
		{"", "", "10.0.0.77:80", "hold"},       // a pod not pushed yet
		{"", "", "[::ffff:10.0.0.77]:80", "hold"},
		{"", "", "10.96.0.99:80", "hold"}, // a service not pushed yet
		{"", "", "10.0.1.5:80", "passthrough"},
		{"", "", "192.0.2.1:443", "passthrough"},
		{"", "", "[fd00::99]:80", "hold"},
		{"", "", "[fd00:0:0:1::1]:80", "passthrough"},
		{"", "net2", "10.5.0.9:80", "hold"},
		{"", "net2", "10.0.0.77:80", "passthrough"}, // ranges are per network
		{"10.0.0.0/16,10.96.0.0/12", "", "10.0.1.5:80", "hold"},
		{"10.0.0.0/16,10.96.0.0/12", "", "10.100.0.1:80", "hold"},
		{"10.0.0.0/16,10.96.0.0/12", "", "10.0.0.1:80", "direct"},
		{"10.0.0.0/16,10.96.0.0/12", "", "192.0.2.1:443", "passthrough"},
		{"10.0.0.0/16,10.96.0.0/12", "", "[fd00::99]:80", "passthrough"}, // given ranges replace derived ones
	}
	for _, c := range cases {
		var cidrs []netip.Prefix
		for _, s := range strings.Split(c.cidrs, ",") {
			if s != "" {
				cidrs = append(cidrs, netip.MustParsePrefix(s))
			}
		}
		store.SetMeshCIDRs(cidrs)
		p, err := proxy.PlanOutbound(store.Snapshot(), proxy.Source{Network: c.network}, netip.MustParseAddrPort(c.dst), 0)
		got := p.Route.String()
		switch {
		case errors.Is(err, proxy.ErrUnknownInMesh):
			got = "hold"
		case err != nil:
			got = "error: " + err.Error()
		}
		if got != c.want {
			t.Errorf("cidrs=%q net=%q dst=%s: %s, want %s", c.cidrs, c.network, c.dst, got, c.want)
		}
	}
}
