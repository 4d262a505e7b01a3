package l7

import (
	"os"
	"strings"
	"testing"

	"github.com/zmesh/zmesh/controlplane/model"
	"github.com/zmesh/zmesh/controlplane/model/modeltest"
	"github.com/zmesh/zmesh/internal/golden"
)

// A Gateway of another class is no waypoint: nothing is built, even for
// Services whose labels name it, and the reason is reported.
func TestBuildRefusesOtherGatewayClasses(t *testing.T) {
	data, err := os.ReadFile("testdata/waypoint_binding.txtar")
	if err != nil {
		t.Fatal(err)
	}
	input, _ := golden.Parse(data).File("input.yaml")
	snap := modeltest.Decode(t, input)
	for _, gw := range snap.Gateways {
		if gw.Name != "waypoint" {
			continue
		}
		gw = gw.DeepCopy()
		gw.Spec.GatewayClassName = "istio"
		res := Build(Options{Mesh: model.DefaultMesh()}, snap, gw)
		if len(res.Clusters) != 0 || len(res.Endpoints) != 0 {
			t.Fatalf("built %d clusters for a Gateway of class istio", len(res.Clusters))
		}
		if len(res.Problems) != 1 || res.Problems[0].Field != "spec.gatewayClassName" || !strings.Contains(res.Problems[0].Message, "istio-waypoint") {
			t.Fatalf("problems = %v, want one on spec.gatewayClassName", res.Problems)
		}
		return
	}
	t.Fatal("no Gateway shop/waypoint in the input")
}
