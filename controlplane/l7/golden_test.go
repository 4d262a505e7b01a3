package l7

import (
	"encoding/json"
	"flag"
	"fmt"
	"strings"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"sigs.k8s.io/yaml"

	"github.com/zmesh/zmesh/controlplane/model"
	"github.com/zmesh/zmesh/controlplane/model/modeltest"
	"github.com/zmesh/zmesh/internal/golden"
)

var update = flag.Bool("update", false, "rewrite the output section of testdata/*.txtar")

// TestGolden runs every testdata/*.txtar archive: input.yaml holds
// Kubernetes, Istio and Gateway API objects (pods completed with
// model.NormalizeFilePod); output is the rendered Build of every Gateway of
// class istio-waypoint in it. With -update, output is rewritten.
func TestGolden(t *testing.T) {
	golden.Each(t, *update, func(t *testing.T, ar golden.Archive) {
		input, ok := ar.File("input.yaml")
		if !ok {
			t.Fatal("no input.yaml section")
		}
		var opts Options
		if loc, ok := ar.File("waypoint-locality"); ok {
			// The waypoint's locality, "region/zone/subzone".
			parts := strings.SplitN(strings.TrimSpace(string(loc)), "/", 3)
			for len(parts) < 3 {
				parts = append(parts, "")
			}
			opts.Locality = &corev3.Locality{Region: parts[0], Zone: parts[1], SubZone: parts[2]}
		}
		got := renderAll(t, modeltest.Decode(t, input), opts)
		if want, _ := ar.File("output"); !*update && string(want) != got {
			t.Errorf("output differs (run with -update to accept):\n--- want\n%s\n--- got\n%s", want, got)
		}
		ar.Set("output", []byte(got))
	})
}

// RenderAll builds every waypoint of snap and renders the resources: each
// as YAML under a "# kind name" line (listener, routes, clusters,
// endpoints), then one line per problem.
func RenderAll(t testing.TB, snap *model.Snapshot) string { return renderAll(t, snap, Options{}) }

// renderAll is RenderAll with opts (its Mesh is always the default).
func renderAll(t testing.TB, snap *model.Snapshot, opts Options) string {
	opts.Mesh = model.DefaultMesh()
	if opts.JWKS == nil {
		opts.JWKS = goldenJWKS
	}
	var b strings.Builder
	for _, gw := range snap.Gateways {
		if gw.Spec.GatewayClassName != model.WaypointClass {
			continue
		}
		res := Build(opts, snap, gw)
		fmt.Fprintf(&b, "## waypoint %s/%s\n", gw.Namespace, gw.Name)
		for _, l := range res.Listeners {
			fmt.Fprintf(&b, "# listener %s\n%s", l.Name, renderProto(t, l))
		}
		for _, r := range res.Routes {
			fmt.Fprintf(&b, "# routes %s\n%s", r.Name, renderProto(t, r))
		}
		for _, c := range res.Clusters {
			fmt.Fprintf(&b, "# cluster %s\n%s", c.Name, renderProto(t, c))
		}
		for _, e := range res.Endpoints {
			fmt.Fprintf(&b, "# endpoints %s\n%s", e.ClusterName, renderProto(t, e))
		}
		b.WriteString("# problems\n")
		for _, p := range res.Problems {
			fmt.Fprintln(&b, p)
		}
	}
	if unbound := Unbound(Options{Mesh: model.DefaultMesh()}, snap); len(unbound) > 0 {
		b.WriteString("## bound to no waypoint\n")
		for _, p := range unbound {
			fmt.Fprintln(&b, p)
		}
	}
	return b.String()
}

func renderProto(t testing.TB, m proto.Message) string {
	t.Helper()
	j, err := protojson.MarshalOptions{UseProtoNames: true}.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	var v any
	if err := json.Unmarshal(j, &v); err != nil {
		t.Fatal(err)
	}
	y, err := yaml.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(y)
}
