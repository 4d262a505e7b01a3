package e2e

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/zmesh/zmesh/controlplane/l7"
	"github.com/zmesh/zmesh/controlplane/model"
	"github.com/zmesh/zmesh/controlplane/model/modeltest"
	"github.com/zmesh/zmesh/internal/golden"
	"github.com/zmesh/zmesh/waypoint/config"
	"github.com/zmesh/zmesh/waypoint/route"
)

// routeClusters are the clusters a compiled route sends to or mirrors to.
func routeClusters(r *route.Route) []string {
	if r.Forward == nil {
		return nil
	}
	var out []string
	if r.Forward.Cluster != "" {
		out = append(out, r.Forward.Cluster)
	}
	for _, w := range r.Forward.Weighted {
		out = append(out, w.Name)
	}
	for _, m := range r.Forward.Mirrors {
		out = append(out, m.Cluster)
	}
	return out
}

// TestL7ResourcesCompile builds every waypoint of controlplane/l7's golden
// inputs and compiles the route configurations, clusters and endpoints with
// the waypoint's own config package: whatever zmeshd sends, the waypoint
// accepts (no NACK), and every cluster a route names exists.
func TestL7ResourcesCompile(t *testing.T) {
	files, err := filepath.Glob(filepath.Join("..", "controlplane", "l7", "testdata", "*.txtar"))
	if err != nil {
		t.Fatal(err)
	}
	if len(files) == 0 {
		t.Fatal("no controlplane/l7 golden inputs")
	}
	for _, file := range files {
		t.Run(filepath.Base(file), func(t *testing.T) {
			data, err := os.ReadFile(file)
			if err != nil {
				t.Fatal(err)
			}
			input, ok := golden.Parse(data).File("input.yaml")
			if !ok {
				t.Fatal("no input.yaml")
			}
			snap := modeltest.Decode(t, input)
			built := 0
			for _, gw := range snap.Gateways {
				res := l7.Build(l7.Options{Mesh: model.DefaultMesh()}, snap, gw)
				clusters, err := config.CompileClusters(res.Clusters)
				if err != nil {
					t.Fatalf("waypoint %s/%s: clusters refused: %v", gw.Namespace, gw.Name, err)
				}
				las, err := config.CompileAssignments(res.Endpoints)
				if err != nil {
					t.Fatalf("waypoint %s/%s: endpoints refused: %v", gw.Namespace, gw.Name, err)
				}
				if len(clusters) != len(res.Clusters) || len(las) != len(res.Endpoints) {
					t.Fatalf("compiled %d clusters, %d assignments; built %d, %d", len(clusters), len(las), len(res.Clusters), len(res.Endpoints))
				}
				for name := range clusters {
					if _, ok := las[name]; !ok {
						t.Errorf("cluster %s has no load assignment", name)
					}
				}
				for _, rc := range res.Routes {
					table, err := config.CompileRoutes(rc)
					if err != nil {
						t.Fatalf("waypoint %s/%s: routes refused: %v", gw.Namespace, gw.Name, err)
					}
					for _, vh := range table.VirtualHosts {
						for _, r := range vh.Routes {
							for _, c := range routeClusters(r) {
								if _, ok := clusters[c]; !ok {
									t.Errorf("routes %s: route %q names cluster %s, which is not built", rc.Name, r.Name, c)
								}
							}
						}
					}
				}
				built += len(res.Clusters)
			}
			if built == 0 {
				t.Fatal("no cluster built: the input binds nothing")
			}
		})
	}
}
