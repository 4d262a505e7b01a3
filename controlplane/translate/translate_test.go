package translate

import (
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	"github.com/zmesh/zmesh/controlplane/model"
	"github.com/zmesh/zmesh/controlplane/model/modeltest"
	"github.com/zmesh/zmesh/internal/golden"
)

// TestPureAndDeterministic: translating a snapshot twice gives the same
// output (no map order leaks into it) and leaves the snapshot untouched.
func TestPureAndDeterministic(t *testing.T) {
	files, _ := filepath.Glob(filepath.Join("testdata", "*.txtar"))
	for _, file := range files {
		data, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		in, _ := golden.Parse(data).File("input.yaml")
		snap := modeltest.Decode(t, in)
		before := snapshotJSON(t, snap)
		opts := Options{Mesh: model.DefaultMesh()}
		first := renderOutput(t, Translate(opts, snap))
		for range 5 {
			if again := renderOutput(t, Translate(opts, snap)); again != first {
				t.Fatalf("%s: output differs between runs:\n%s", file, diffLines(first, again))
			}
		}
		if snapshotJSON(t, snap) != before {
			t.Errorf("%s: Translate modified the snapshot", file)
		}
	}
}

// snapshotJSON is a comparable image of a snapshot (protobuf specs hold
// internal state that reflect.DeepEqual would see).
func snapshotJSON(t *testing.T, s *model.Snapshot) string {
	b, err := json.Marshal(s)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
