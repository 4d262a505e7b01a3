package translate

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"testing"

	utilyaml "k8s.io/apimachinery/pkg/util/yaml"

	"github.com/zmesh/zmesh/controlplane/model"
	"github.com/zmesh/zmesh/internal/golden"
)

// maxFuzzSeed bounds each seed. The fuzzing engine minimises every input
// that finds new coverage before it goes on, for up to a minute, by
// trying it without each of its bytes: fed whole golden inputs (up to
// 9 KB, a few ms a run), it spent all its time minimising and ran a dozen
// mutations a minute. One document, edited in the middle of a mesh that
// is not itself fuzzed, minimises in a second or two.
const maxFuzzSeed = 2048

// fuzzMesh is one golden input, each document decoded alone (once: the
// fuzz loop only assembles them).
type fuzzMesh struct {
	name string
	docs [][]byte
	objs []*model.Snapshot
}

func loadFuzzMeshes(tb testing.TB) []fuzzMesh {
	tb.Helper()
	files, err := filepath.Glob(filepath.Join("testdata", "*.txtar"))
	if err != nil || len(files) == 0 {
		tb.Fatalf("no golden inputs: %v", err)
	}
	var out []fuzzMesh
	for _, file := range files {
		data, err := os.ReadFile(file)
		if err != nil {
			tb.Fatal(err)
		}
		in, ok := golden.Parse(data).File("input.yaml")
		if !ok {
			continue
		}
		m := fuzzMesh{name: file}
		yr := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(in)))
		for {
			doc, err := yr.Read()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				tb.Fatalf("%s: %v", file, err)
			}
			if len(bytes.TrimSpace(doc)) == 0 {
				continue
			}
			snap := &model.Snapshot{}
			snap.Decode(bytes.NewReader(doc), file)
			for _, p := range snap.Pods {
				model.NormalizeFilePod(p)
			}
			m.docs = append(m.docs, doc)
			m.objs = append(m.objs, snap)
		}
		out = append(out, m)
	}
	return out
}

// FuzzTranslate edits one document of a golden mesh into arbitrary YAML
// (or adds it, when doc is past the end) and translates the result:
// Translate must never panic, and ztunnel must accept whatever it
// produces, since one rejected resource would be one ztunnel NACKs.
func FuzzTranslate(f *testing.F) {
	meshes := loadFuzzMeshes(f)
	for i, m := range meshes {
		for j, doc := range m.docs {
			f.Add(doc, uint8(i), uint8(j), false)
		}
	}
	f.Fuzz(func(t *testing.T, input []byte, mesh, doc uint8, requireAnnotation bool) {
		m := meshes[int(mesh)%len(meshes)]
		snap := &model.Snapshot{}
		for j, objs := range m.objs {
			if j != int(doc) {
				appendSnapshot(snap, objs)
			}
		}
		edited := &model.Snapshot{}
		_ = edited.Decode(bytes.NewReader(input), "fuzz")
		for _, p := range edited.Pods {
			if p != nil {
				model.NormalizeFilePod(p)
			}
		}
		appendSnapshot(snap, edited)
		snap.Sort()
		out := Translate(Options{Mesh: model.DefaultMesh(), RequireRedirectionAnnotation: requireAnnotation}, snap)
		acceptedByZtunnel(t, out)
	})
}

// appendSnapshot appends every list of src to dst's.
func appendSnapshot(dst, src *model.Snapshot) {
	d, s := reflect.ValueOf(dst).Elem(), reflect.ValueOf(src).Elem()
	for i := range d.NumField() {
		d.Field(i).Set(reflect.AppendSlice(d.Field(i), s.Field(i)))
	}
}

func TestFuzzSeedsAreSmall(t *testing.T) {
	n := 0
	for _, m := range loadFuzzMeshes(t) {
		for j, doc := range m.docs {
			n++
			if len(doc) > maxFuzzSeed {
				t.Errorf("%s document %d: a %d-byte seed (max %d) takes the fuzzer minutes to minimise", m.name, j+1, len(doc), maxFuzzSeed)
			}
		}
	}
	if n < 20 {
		t.Errorf("%d seeds: the golden inputs should give one per document", n)
	}
}
