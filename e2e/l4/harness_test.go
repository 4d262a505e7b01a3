package l4

import (
	"testing"
)

// TestHarness shows the cluster: nodes, their pods' CIDRs, who runs where.
func TestHarness(t *testing.T) {
	ctx := t.Context()
	out, err := mesh.Kubectl(ctx, "get", "nodes", "-o", "wide")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("kubectl get nodes:\n%s", out)
}
