package e2e

import (
	"bufio"
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

const module = "github.com/zmesh/zmesh"

// rule forbids packages matching From from depending on packages matching
// any of Deny. Patterns are module-relative prefixes ("identity/", "cmd/ztunnel")
// or, when they contain a dot, import-path prefixes ("k8s.io/").
type rule struct {
	from []string
	deny []string
	why  string
}

// The dependency rules of docs/architecture.md, "Folders and dependency
// rules".
var rules = []rule{
	{from: []string{"identity"}, deny: []string{""}, why: "identity/ imports nothing of ours"},
	{from: []string{"bpf"}, deny: []string{""}, why: "bpf/ imports nothing of ours"},
	{from: []string{"ztunnel", "waypoint", "cni"}, deny: []string{"controlplane"}, why: "data planes never import the control plane"},
	{from: []string{"controlplane"}, deny: []string{"ztunnel", "waypoint", "cni"}, why: "the control plane never imports the data planes"},
	{from: []string{"cmd/ztunnel", "cmd/waypoint", "cmd/zmesh-cni"}, deny: []string{"k8s.io/"}, why: "k8s.io/* stays out of the data-plane binaries"},
	{from: []string{"ztunnel"}, deny: []string{"waypoint"}, why: "the two data planes never import each other"},
	{from: []string{"waypoint"}, deny: []string{"ztunnel"}, why: "the two data planes never import each other"},
	{from: []string{"internal"}, deny: []string{"ztunnel", "waypoint", "cni", "controlplane"}, why: "internal/ is shared by every binary and imports none of their trees"},
	{from: []string{""}, deny: []string{"cmd"}, why: "nothing imports cmd/"},
}

func under(pkg, prefix string) bool {
	if strings.Contains(prefix, ".") {
		return strings.HasPrefix(pkg, prefix)
	}
	if !strings.HasPrefix(pkg, module) {
		return false
	}
	rel := strings.TrimPrefix(strings.TrimPrefix(pkg, module), "/")
	return prefix == "" || rel == prefix || strings.HasPrefix(rel, prefix+"/")
}

// violations checks a package → dependencies graph against the rules.
// An "imports nothing of ours" rule (deny "") allows the package's own tree.
func violations(graph map[string][]string, rules []rule) []string {
	var out []string
	for pkg, deps := range graph {
		for _, r := range rules {
			fromRoot, matched := "", false
			for _, f := range r.from {
				if under(pkg, f) {
					fromRoot, matched = f, true
				}
			}
			if !matched {
				continue
			}
			for _, d := range deps {
				for _, deny := range r.deny {
					if !under(d, deny) {
						continue
					}
					if deny == "" && under(d, fromRoot) {
						continue // its own tree
					}
					out = append(out, pkg+" -> "+d+": "+r.why)
				}
			}
		}
	}
	return out
}

func TestRulesCatchForbiddenImports(t *testing.T) {
	graph := map[string][]string{
		module + "/identity":        {"crypto/x509", module + "/identity/internal", module + "/internal/hbone"},
		module + "/ztunnel/proxy":   {module + "/identity", module + "/controlplane/model"},
		module + "/controlplane/x":  {module + "/identity", module + "/cni/plugin"},
		module + "/cmd/ztunnel":     {"k8s.io/client-go/kubernetes"},
		module + "/cmd/zmeshd":      {"k8s.io/client-go/kubernetes"},
		module + "/internal/hbone":  {module + "/identity", "golang.org/x/net/http2"},
		module + "/waypoint/router": {module + "/internal/hbone", module + "/ztunnel/state"},
		module + "/internal/x":      {module + "/controlplane/model"},
		module + "/e2e/x":           {module + "/cmd/zmeshd"},
	}
	got := violations(graph, rules)
	want := []string{
		module + "/identity -> " + module + "/internal/hbone",
		module + "/waypoint/router -> " + module + "/ztunnel/state",
		module + "/internal/x -> " + module + "/controlplane/model",
		module + "/e2e/x -> " + module + "/cmd/zmeshd",
		module + "/ztunnel/proxy -> " + module + "/controlplane/model",
		module + "/controlplane/x -> " + module + "/cni/plugin",
		module + "/cmd/ztunnel -> k8s.io/client-go/kubernetes",
	}
	if len(got) != len(want) {
		t.Fatalf("violations = %q, want exactly %d", got, len(want))
	}
	for _, w := range want {
		found := false
		for _, g := range got {
			found = found || strings.HasPrefix(g, w+":")
		}
		if !found {
			t.Errorf("missing violation %s in %q", w, got)
		}
	}
}

// TestDependencyDirection runs the rules on the real module with go list.
func TestDependencyDirection(t *testing.T) {
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("go", "list", "-deps", "-json=ImportPath,Deps", "./...")
	cmd.Dir = root
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, stderr.String())
	}
	graph := map[string][]string{}
	dec := json.NewDecoder(bufio.NewReader(bytes.NewReader(out)))
	for dec.More() {
		var p struct {
			ImportPath string
			Deps       []string
		}
		if err := dec.Decode(&p); err != nil {
			t.Fatal(err)
		}
		if strings.HasPrefix(p.ImportPath, module) {
			graph[p.ImportPath] = p.Deps
		}
	}
	if len(graph) < 4 {
		t.Fatalf("go list found only %d packages of the module", len(graph))
	}
	for _, v := range violations(graph, rules) {
		t.Error(v)
	}
	// The top-level folders of the design exist.
	for _, d := range []string{"cmd", "ztunnel", "waypoint", "cni", "bpf", "identity", "controlplane", "api", "deploy", "e2e"} {
		if _, err := os.Stat(filepath.Join(root, d)); err != nil {
			t.Errorf("top-level folder %s: %v", d, err)
		}
	}
}
