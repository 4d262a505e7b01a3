package translate

import (
	"encoding/base64"
	"encoding/json"
	"flag"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"sigs.k8s.io/yaml"

	"github.com/zmesh/zmesh/controlplane/model"
	"github.com/zmesh/zmesh/controlplane/model/modeltest"
	"github.com/zmesh/zmesh/internal/golden"
	"github.com/zmesh/zmesh/ztunnel/authz"
	"github.com/zmesh/zmesh/ztunnel/state"
)

var update = flag.Bool("update", false, "rewrite the output and cases sections of testdata/*.txtar")

// TestGolden runs every testdata/*.txtar archive:
//
//   - options (optional): "key: value" lines: requireRedirectionAnnotation
//     (true/false), rootNamespace, network, trustDomain.
//   - input.yaml: Kubernetes, Istio and Gateway API objects; pods are
//     completed with model.NormalizeFilePod.
//   - output: the rendered translation (renderOutput).
//   - cases (optional): connections decided by ztunnel's own code on the
//     output (its waypoint rule, then its policies), one per line:
//     "to NS/POD:PORT from IP [as PRINCIPAL] -> DECISION" (PRINCIPAL
//     without spiffe://; no "as" = plaintext).
//
// With -update, output and the decisions of cases are rewritten.
func TestGolden(t *testing.T) {
	golden.Each(t, *update, func(t *testing.T, ar golden.Archive) {
		input, ok := ar.File("input.yaml")
		if !ok {
			t.Fatal("no input.yaml section")
		}
		opts := Options{Mesh: model.DefaultMesh()}
		if o, ok := ar.File("options"); ok {
			parseOptions(t, &opts, string(o))
		}
		snap := modeltest.Decode(t, input)
		out := Translate(opts, snap)
		snapZ := acceptedByZtunnel(t, out)

		got := renderOutput(t, out)
		if want, _ := ar.File("output"); !*update && string(want) != got {
			t.Errorf("output differs (run with -update to accept):\n%s", diffLines(string(want), got))
		}
		ar.Set("output", []byte(got))
		if _, ok := ar.File("cases"); ok {
			golden.CheckLines(t, ar, "cases", *update, func(conn string) (string, error) {
				return decide(t, snapZ, opts, conn), nil
			})
		}
	})
}

func parseOptions(t *testing.T, opts *Options, s string) {
	t.Helper()
	for _, line := range strings.Split(s, "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		v = strings.TrimSpace(v)
		switch strings.TrimSpace(k) {
		case "requireRedirectionAnnotation":
			opts.RequireRedirectionAnnotation = v == "true"
		case "rootNamespace":
			opts.Mesh.RootNamespace = v
		case "network":
			opts.Mesh.Network = v
		case "trustDomain":
			opts.Mesh.TrustDomain = v
		default:
			t.Fatalf("options: unknown key %q", k)
		}
	}
}

// decide evaluates "to NS/POD:PORT from IP [as PRINCIPAL]" with ztunnel's
// state and authz packages on the translated output.
func decide(t *testing.T, snap *state.Snapshot, opts Options, conn string) string {
	t.Helper()
	f := strings.Fields(conn)
	if len(f) != 4 && len(f) != 6 || f[0] != "to" || f[2] != "from" || (len(f) == 6 && f[4] != "as") {
		t.Fatalf("case %q: want to NS/POD:PORT from IP [as PRINCIPAL]", conn)
	}
	podName, port, ok := strings.Cut(f[1], ":")
	ns, name, ok2 := strings.Cut(podName, "/")
	if !ok || !ok2 {
		t.Fatalf("case %q: bad destination %q", conn, f[1])
	}
	w := snap.Workload(PodUID(opts.Mesh.ClusterID, ns, name))
	if w == nil {
		return "no workload"
	}
	dst, err := netip.ParseAddrPort(w.Addrs[0].String() + ":" + port)
	if err != nil {
		t.Fatalf("case %q: %v", conn, err)
	}
	src, err := netip.ParseAddr(f[3])
	if err != nil {
		t.Fatalf("case %q: %v", conn, err)
	}
	c := authz.Conn{Src: netip.AddrPortFrom(src, 40000), Dst: dst}
	if len(f) == 6 {
		if c.Peer, err = spiffeid.FromString("spiffe://" + f[5]); err != nil {
			t.Fatalf("case %q: %v", conn, err)
		}
	}
	// ztunnel's waypoint rule comes first, as in its inbound decision.
	if reason := snap.WaypointRefusal(w, dst.Port(), c.Peer); reason != "" {
		return "deny (" + reason + ")"
	}
	pols, missing := snap.PoliciesFor(w)
	if len(missing) > 0 {
		t.Fatalf("workload %s lists missing policies %v", w.UID, missing)
	}
	d := authz.Evaluate(pols, c)
	verdict := "deny"
	if d.Allowed {
		verdict = "allow"
	}
	if d.Policy != "" {
		return verdict + " " + d.Policy
	}
	return verdict + " (" + d.Reason + ")"
}

// renderOutput prints an Output for golden files: every resource as YAML
// under a "# name" line, by name, with IP addresses as text and enums always
// shown; then one line per condition.
func renderOutput(t testing.TB, out *Output) string {
	var b strings.Builder
	for _, k := range slices.Sorted(mapsKeys(out.Addresses)) {
		fmt.Fprintf(&b, "# address %s\n%s", k, renderProto(t, out.Addresses[k]))
	}
	for _, k := range slices.Sorted(mapsKeys(out.Authorizations)) {
		fmt.Fprintf(&b, "# authorization %s\n%s", k, renderProto(t, out.Authorizations[k]))
	}
	b.WriteString("# conditions\n")
	for _, c := range out.Conditions {
		status := "False"
		if c.Status {
			status = "True"
		}
		fmt.Fprintf(&b, "%s %s=%s %s: %s\n", c.Object, c.Type, status, c.Reason, c.Message)
	}
	return b.String()
}

func mapsKeys[V any](m map[string]V) func(func(string) bool) {
	return func(yield func(string) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

func renderProto(t testing.TB, m proto.Message) string {
	t.Helper()
	j, err := protojson.MarshalOptions{UseProtoNames: true, EmitDefaultValues: true}.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	var v any
	if err := json.Unmarshal(j, &v); err != nil {
		t.Fatal(err)
	}
	v = prune("", v)
	y, err := yaml.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(y)
}

// prune drops empty values (keeping enums, which protojson writes as
// names, and presence matches) and turns address bytes into IPs.
func prune(key string, v any) any {
	switch x := v.(type) {
	case map[string]any:
		for k, e := range x {
			e = prune(k, e)
			if e == nil && k != "presence" {
				delete(x, k)
				continue
			}
			if e == nil {
				e = map[string]any{}
			}
			x[k] = e
		}
		if len(x) == 0 {
			return nil
		}
		return x
	case []any:
		if len(x) == 0 {
			return nil
		}
		for i, e := range x {
			if x[i] = prune(key, e); x[i] == nil {
				x[i] = map[string]any{} // an empty rule or match
			}
		}
		return x
	case string:
		if x == "" || quietDefaults[key] == x {
			return nil
		}
		if key == "address" || key == "addresses" {
			if raw, err := base64.StdEncoding.DecodeString(x); err == nil {
				if a, ok := netip.AddrFromSlice(raw); ok {
					return a.String()
				}
			}
		}
		return x
	case bool:
		if !x {
			return nil
		}
		return x
	case float64:
		if x == 0 {
			return nil
		}
		return x
	}
	return v
}

// quietDefaults are enum defaults too common to be worth a line.
var quietDefaults = map[string]string{"app_protocol": "UNKNOWN", "ip_families": "AUTOMATIC", "network_mode": "STANDARD"}

func diffLines(want, got string) string {
	w, g := strings.Split(want, "\n"), strings.Split(got, "\n")
	var b strings.Builder
	for i := 0; i < len(w) || i < len(g); i++ {
		var wl, gl string
		if i < len(w) {
			wl = w[i]
		}
		if i < len(g) {
			gl = g[i]
		}
		if wl != gl {
			fmt.Fprintf(&b, "line %d:\n- %s\n+ %s\n", i+1, wl, gl)
			if b.Len() > 4000 {
				break
			}
		}
	}
	return b.String()
}
