package render

import (
	"flag"
	"fmt"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"

	"github.com/zmesh/zmesh/internal/golden"
)

var update = flag.Bool("update", false, "rewrite the expected sections of testdata/*.txtar")

// TestGolden renders the chart with each archive's values.yaml (and
// namespace, default istio-system) and its CRDs, and compares:
// manifest.yaml holds every object but the CRDs, crds lists those by kind
// and name, and error holds the refusal of values the chart does not
// accept.
func TestGolden(t *testing.T) {
	golden.Each(t, *update, func(t *testing.T, ar golden.Archive) {
		in, ok := ar.File("values.yaml")
		if !ok {
			t.Fatal("archive has no values.yaml")
		}
		var vals map[string]any
		if err := yaml.Unmarshal(in, &vals); err != nil {
			t.Fatalf("values.yaml: %v", err)
		}
		ns := "istio-system"
		if b, ok := ar.File("namespace"); ok {
			ns = strings.TrimSpace(string(b))
		}
		var manifest, crds, errText string
		ms, err := Render(Options{Namespace: ns, Values: vals, IncludeCRDs: true})
		if err != nil {
			errText = err.Error() + "\n"
		} else {
			var rest []Manifest
			var b strings.Builder
			for _, m := range ms {
				if strings.HasPrefix(m.Source, "zmesh/crds/") {
					fmt.Fprintf(&b, "%s %s\n", m.Kind, m.Name)
					continue
				}
				rest = append(rest, m)
			}
			manifest, crds = string(YAML(rest)), b.String()
		}
		for _, sec := range []struct{ name, got string }{{"manifest.yaml", manifest}, {"crds", crds}, {"error", errText}} {
			want, _ := ar.File(sec.name)
			if !*update && string(want) != sec.got {
				t.Errorf("%s differs (run go test ./deploy/render -run TestGolden -update and read the diff):\n%s", sec.name, diff(string(want), sec.got))
			}
			if sec.got != "" || len(want) > 0 {
				ar.Set(sec.name, []byte(sec.got))
			}
		}
	})
}

// diff shows the first lines where want and got part.
func diff(want, got string) string {
	w, g := strings.Split(want, "\n"), strings.Split(got, "\n")
	for i := 0; i < len(w) || i < len(g); i++ {
		var a, b string
		if i < len(w) {
			a = w[i]
		}
		if i < len(g) {
			b = g[i]
		}
		if a != b {
			return fmt.Sprintf("line %d:\nwant: %q\n got: %q", i+1, a, b)
		}
	}
	return "(equal)"
}
