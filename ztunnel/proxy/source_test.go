package proxy_test

import (
	"net/netip"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/zmesh/zmesh/ztunnel/proxy"
	"github.com/zmesh/zmesh/ztunnel/state"
)

// TestInboundSource runs every testdata/source/*.txtar archive: state.yaml
// as for TestPlan, and a source section of inbound HBONE requests,
// "dst=ADDR peer=SPIFFE-ID|- tcp=ADDR fwd=ADDR:PORT|- -> SRC TRUST": the
// destination pod, the verified peer, the tunnel's TCP peer and the
// Forwarded for= the client sent. -update rewrites the outcome.
func TestInboundSource(t *testing.T) {
	runGoldenDir(t, "source", func(t *testing.T, snap *state.Snapshot, args map[string]string) string {
		dst, err := netip.ParseAddr(args["dst"])
		if err != nil {
			t.Fatalf("dst: %v", err)
		}
		var peer spiffeid.ID
		if p := args["peer"]; p != "-" {
			if peer, err = spiffeid.FromString(p); err != nil {
				t.Fatalf("peer: %v", err)
			}
		}
		tcp, err := netip.ParseAddr(args["tcp"])
		if err != nil {
			t.Fatalf("tcp: %v", err)
		}
		var fwd netip.AddrPort
		if f := args["fwd"]; f != "-" {
			if fwd, err = netip.ParseAddrPort(f); err != nil {
				t.Fatalf("fwd: %v", err)
			}
		}
		w := snap.WorkloadByAddr(state.NetAddr{Addr: dst})
		src, trust := proxy.InboundSource(snap, w, peer, tcp, fwd)
		return src.String() + " " + trust.String()
	})
}
