package render

import (
	"bytes"
	"testing"
)

// TestEmbeddedChartIsTheDirectory: the chart zmeshctl carries renders
// exactly as the repository's directory does (templates starting with _,
// the CRDs behind the crds/ link, .helmignore honoured).
func TestEmbeddedChartIsTheDirectory(t *testing.T) {
	for _, vals := range []map[string]any{nil, {"createNamespace": true, "zmeshd": map[string]any{"replicas": 3}}} {
		dir, err := Render(Options{Chart: ChartDir(), IncludeCRDs: true, Values: vals})
		if err != nil {
			t.Fatal(err)
		}
		emb, err := Render(Options{IncludeCRDs: true, Values: vals})
		if err != nil {
			t.Fatal(err)
		}
		if len(emb) != len(dir) {
			t.Errorf("embedded chart renders %d objects, the directory %d", len(emb), len(dir))
		}
		if !bytes.Equal(YAML(emb), YAML(dir)) {
			t.Error("the embedded chart renders differently from deploy/charts/zmesh")
		}
	}
}
