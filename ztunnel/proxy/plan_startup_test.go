package proxy_test

import (
	"errors"
	"net/netip"
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
