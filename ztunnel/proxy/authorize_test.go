package proxy_test

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/zmesh/zmesh/ztunnel/authz"
	"github.com/zmesh/zmesh/ztunnel/proxy"
	"github.com/zmesh/zmesh/ztunnel/state"
)

// TestAuthorize runs every testdata/authorize/*.txtar archive: state.yaml as
// for TestPlan, and an authorize section of inbound connections,
// "[net=NETWORK] src=ADDR:PORT dst=ADDR:PORT peer=SPIFFE-ID|- -> VERDICT",
// peer "-" meaning plaintext. VERDICT is what formatVerdict prints; -update
// rewrites it.
func TestAuthorize(t *testing.T) {
	runGoldenDir(t, "authorize", func(t *testing.T, snap *state.Snapshot, args map[string]string) string {
		c := authz.Conn{}
		var err error
		if c.Src, err = netip.ParseAddrPort(args["src"]); err != nil {
			t.Fatalf("src: %v", err)
		}
		if c.Dst, err = netip.ParseAddrPort(args["dst"]); err != nil {
			t.Fatalf("dst: %v", err)
		}
		if p := args["peer"]; p != "-" {
			if c.Peer, err = spiffeid.FromString(p); err != nil {
				t.Fatalf("peer: %v", err)
			}
		}
		return formatVerdict(proxy.AuthorizeInbound(snap, args["net"], c))
	})
}

func formatVerdict(v proxy.Verdict) string {
	var b strings.Builder
	if v.Allowed {
		b.WriteString("allow")
	} else {
		b.WriteString("deny")
	}
	if v.Workload != nil {
		b.WriteString(" wl=" + v.Workload.UID)
	}
	if v.Policy != "" {
		b.WriteString(" policy=" + v.Policy)
	}
	fmt.Fprintf(&b, ": %s", v.Reason)
	if len(v.DryRun) > 0 {
		fmt.Fprintf(&b, " [dry run: %s]", strings.Join(v.DryRun, "; "))
	}
	return b.String()
}
