package l4

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/zmesh/zmesh/identity"
)

// TestIdentity: with node-1's ztunnel token, the CA grants the identity of
// a pod on node-1 and refuses that of a pod only on node-2.
func TestIdentity(t *testing.T) {
	apply(t, "identity.yaml", "ident")
	waitPods(t, "ident", 2)
	node1 := mesh.Node("node-1")
	cc, err := mesh.DialZmeshd(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	tokenFile, err := node1.ZtunnelTokenFile()
	if err != nil {
		t.Fatal(err)
	}
	token := func(context.Context) (string, error) {
		b, err := os.ReadFile(tokenFile)
		return strings.TrimSpace(string(b)), err
	}
	client, err := identity.NewCertClient(cc, token, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	own := spiffeid.RequireFromString("spiffe://cluster.local/ns/ident/sa/on-node-1")
	svid, err := client.Fetch(ctx, own)
	if err != nil {
		t.Fatalf("node-1's ztunnel asking for %s (pod a on node-1): %v", own, err)
	}
	t.Logf("node-1's ztunnel token -> %s: granted, serial %x, expires %s", own, svid.Certificates[0].SerialNumber, svid.Certificates[0].NotAfter.Format(time.RFC3339))
	other := spiffeid.RequireFromString("spiffe://cluster.local/ns/ident/sa/on-node-2")
	_, err = client.Fetch(ctx, other)
	if err == nil {
		t.Fatalf("node-1's ztunnel got a certificate for %s, whose only pod runs on node-2", other)
	}
	if c := status.Code(err); c != codes.PermissionDenied && c != codes.Unauthenticated {
		t.Errorf("refusal code %s, want PermissionDenied: %v", c, err)
	}
	t.Logf("node-1's ztunnel token -> %s (pod b on node-2): refused: %v", other, err)
}
