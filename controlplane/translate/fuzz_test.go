package translate

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"github.com/zmesh/zmesh/controlplane/model"
	"github.com/zmesh/zmesh/internal/golden"
)

// FuzzTranslate feeds arbitrary YAML through decoding and translation:
// Translate must never panic, and ztunnel must accept whatever it
// produces, since one rejected resource would be one ztunnel NACKs.
func FuzzTranslate(f *testing.F) {
	files, _ := filepath.Glob(filepath.Join("testdata", "*.txtar"))
	for _, file := range files {
		data, err := os.ReadFile(file)
		if err != nil {
			f.Fatal(err)
		}
		if in, ok := golden.Parse(data).File("input.yaml"); ok {
			f.Add(in, false)
		}
	}
	f.Fuzz(func(t *testing.T, input []byte, requireAnnotation bool) {
		snap := &model.Snapshot{}
		_ = snap.Decode(bytes.NewReader(input), "fuzz")
		for _, p := range snap.Pods {
			if p != nil {
				model.NormalizeFilePod(p)
			}
		}
		snap.Sort()
		out := Translate(Options{Mesh: model.DefaultMesh(), RequireRedirectionAnnotation: requireAnnotation}, snap)
		acceptedByZtunnel(t, out)
	})
}
