package proxy_test

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/zmesh/zmesh/internal/golden"
	"github.com/zmesh/zmesh/ztunnel/proxy"
	"github.com/zmesh/zmesh/ztunnel/state"
)

var updateGolden = flag.Bool("update", false, "rewrite the expected outcomes in testdata/{plan,authorize}/*.txtar")

// TestPlan runs every testdata/plan/*.txtar archive. An archive holds:
//
//   - state.yaml: the mesh, in the --local-config format (state.ParseLocalConfig).
//   - plan: one outbound connection per line,
//     "src=UID|- [net=NETWORK] [node=NODE] dst=ADDR:PORT [rr=N] -> OUTCOME".
//     src is the connecting workload's uid ("-": not in the state); net and
//     node default to that workload's. OUTCOME is what formatPlan prints.
//     Blank lines and #-comments are kept.
//
// With -update the OUTCOME parts are rewritten from the current behaviour,
// so that a change of behaviour shows as a diff of the archives.
func TestPlan(t *testing.T) {
	runGoldenDir(t, "plan", func(t *testing.T, snap *state.Snapshot, args map[string]string) string {
		src := proxy.Source{}
		if uid := args["src"]; uid != "-" {
			src.Workload = snap.Workload(uid)
			if src.Workload == nil {
				t.Fatalf("src=%s: no such workload in state.yaml", uid)
			}
			src.Network, src.Node = src.Workload.Network, src.Workload.Node
		}
		if n, ok := args["net"]; ok {
			src.Network = n
		}
		if n, ok := args["node"]; ok {
			src.Node = n
		}
		dst, err := netip.ParseAddrPort(args["dst"])
		if err != nil {
			t.Fatalf("dst: %v", err)
		}
		var rr uint64
		if s, ok := args["rr"]; ok {
			if rr, err = strconv.ParseUint(s, 10, 64); err != nil {
				t.Fatalf("rr: %v", err)
			}
		}
		return formatPlan(proxy.PlanOutbound(snap, src, dst, rr))
	})
}

// formatPlan prints a decision on one line: the route, then each field that
// is set. An error prints as the sentinel it wraps and its text.
func formatPlan(p proxy.Plan, err error) string {
	if err != nil {
		sentinel := "(no sentinel)"
		for name, s := range map[string]error{
			"ErrNoHealthyUpstream": proxy.ErrNoHealthyUpstream,
			"ErrNoServicePort":     proxy.ErrNoServicePort,
			"ErrWaypointUnknown":   proxy.ErrWaypointUnknown,
			"ErrSelfCall":          proxy.ErrSelfCall,
			"ErrNotVisible":        proxy.ErrNotVisible,
		} {
			if errors.Is(err, s) {
				sentinel = name
			}
		}
		return fmt.Sprintf("error %s: %v", sentinel, err)
	}
	var b strings.Builder
	b.WriteString(p.Route.String())
	b.WriteString(" dial=" + p.Dial.String())
	if p.Target.IsValid() {
		b.WriteString(" target=" + p.Target.String())
	}
	if !p.Identity.IsZero() {
		b.WriteString(" id=" + p.Identity.String())
	}
	if p.Waypoint != nil {
		b.WriteString(" wp=" + p.Waypoint.UID)
	}
	if p.Workload != nil {
		b.WriteString(" wl=" + p.Workload.UID)
	}
	if p.Service != nil {
		b.WriteString(" svc=" + p.Service.Key())
	}
	return b.String()
}

// runGoldenDir runs each testdata/<kind>/*.txtar: it loads state.yaml into
// a store and checks each line of the section named kind against decide.
func runGoldenDir(t *testing.T, kind string, decide func(t *testing.T, snap *state.Snapshot, args map[string]string) string) {
	files, err := filepath.Glob(filepath.Join("testdata", kind, "*.txtar"))
	if err != nil {
		t.Fatal(err)
	}
	if len(files) == 0 {
		t.Fatalf("no testdata/%s/*.txtar archives", kind)
	}
	for _, file := range files {
		t.Run(strings.TrimSuffix(filepath.Base(file), ".txtar"), func(t *testing.T) {
			data, err := os.ReadFile(file)
			if err != nil {
				t.Fatal(err)
			}
			ar := golden.Parse(data)
			stateYAML, _ := ar.File("state.yaml")
			u, err := state.ParseLocalConfig(stateYAML)
			if err != nil {
				t.Fatalf("state.yaml: %v", err)
			}
			store := state.NewStore()
			if err := store.Replace(u); err != nil {
				t.Fatalf("state.yaml: %v", err)
			}
			snap := store.Snapshot()

			cases, _ := ar.File(kind)
			if len(bytes.TrimSpace(cases)) == 0 {
				t.Fatalf("archive has no %s section", kind)
			}
			var out bytes.Buffer
			changed := false
			for i, line := range strings.SplitAfter(string(cases), "\n") {
				input, want, ok := strings.Cut(strings.TrimRight(line, "\n"), " -> ")
				if trimmed := strings.TrimSpace(line); !ok || trimmed == "" || trimmed[0] == '#' {
					if trimmed != "" && trimmed[0] != '#' {
						t.Errorf("%s:%d: no \" -> \" in %q", kind, i+1, trimmed)
					}
					out.WriteString(line)
					continue
				}
				args := map[string]string{}
				for _, f := range strings.Fields(input) {
					k, v, _ := strings.Cut(f, "=")
					args[k] = v
				}
				got := decide(t, snap, args)
				if got != strings.TrimSpace(want) {
					changed = true
					if !*updateGolden {
						t.Errorf("%s:%d: %s\n got: %s\nwant: %s", kind, i+1, input, got, strings.TrimSpace(want))
					}
				}
				fmt.Fprintf(&out, "%s -> %s", input, got)
				if strings.HasSuffix(line, "\n") {
					out.WriteString("\n")
				}
			}
			if *updateGolden && changed {
				ar.Set(kind, out.Bytes())
				if err := os.WriteFile(file, ar.Format(), 0o644); err != nil {
					t.Fatal(err)
				}
			}
		})
	}
}
