package report

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"slices"
	"strings"
)

// shownRatios are the comparisons the tables show (path / against):
// the mesh against direct and the L4 proxies, the waypoint path against
// direct, the mesh and the L7 proxies.
var shownRatios = [][2]string{
	{Mesh, Direct}, {Mesh, Stunnel}, {Mesh, HAProxy},
	{Waypoint, Direct}, {Waypoint, Mesh}, {Waypoint, NginxMTLS}, {Waypoint, Nginx}, {Waypoint, HAProxyHTTP},
}

// pathsOf are the paths with a figure among figs, in table order.
func pathsOf(figs []Figure) []string {
	var out []string
	for _, p := range Paths {
		if slices.ContainsFunc(figs, func(f Figure) bool { return f.Stat(p).Valid() }) {
			out = append(out, p)
		}
	}
	return out
}

// ratiosOf are the shown comparisons with a ratio among figs.
func ratiosOf(figs []Figure) [][2]string {
	var out [][2]string
	for _, c := range shownRatios {
		if slices.ContainsFunc(figs, func(f Figure) bool { p, ok := f.Pair(c[0], c[1]); return ok && p.Ratio.Valid() }) {
			out = append(out, c)
		}
	}
	return out
}

// FormatValue prints a figure with about three significant digits.
func FormatValue(v float64) string {
	a := math.Abs(v)
	switch {
	case math.IsNaN(v):
		return "–"
	case a >= 1000:
		return fmt.Sprintf("%.0f", v)
	case a >= 100:
		return fmt.Sprintf("%.1f", v)
	case a >= 10:
		return fmt.Sprintf("%.2f", v)
	case a >= 1:
		return fmt.Sprintf("%.3f", v)
	case a == 0:
		return "0"
	default:
		return fmt.Sprintf("%.3g", v)
	}
}

// cell is "median ±spread%" (spread = (max−min)/median), with the delta
// over direct for latencies.
func cell(f Figure, path string) string {
	s := f.Stat(path)
	if !s.Valid() {
		return "–"
	}
	out := FormatValue(s.Median)
	if f.Metric.Added && path != Direct {
		if p, ok := f.Pair(path, Direct); ok && p.Delta != nil && p.Delta.Valid() {
			out += fmt.Sprintf(" (%+.3f)", p.Delta.Median)
		}
	}
	if s.N > 1 {
		out += fmt.Sprintf(" ±%.0f%%", 100*s.Spread()/2)
	}
	return out
}

func ratioCell(f Figure, path, against string) string {
	p, ok := f.Pair(path, against)
	if !ok || !p.Ratio.Valid() {
		return "–"
	}
	return fmt.Sprintf("%.2f×", p.Ratio.Median)
}

func figuresOf(figs []Figure, workload string) []Figure {
	var out []Figure
	for _, f := range figs {
		if f.Workload == workload {
			out = append(out, f)
		}
	}
	return out
}

// Text writes the stdout table: every workload's figures on every path,
// mesh's ratios, then the targets.
func (r *Report) Text(w io.Writer) {
	m := r.Meta
	fmt.Fprintf(w, "zmesh bench  %s  host %s  %d CPUs  kernel %s  %s\n", m.Date.Format("2006-01-02 15:04"), m.Host, m.CPUs, m.Kernel, m.GoVersion)
	fmt.Fprintf(w, "%d repetitions, paths interleaved within each; cells: median ±half-spread (max−min)/2 over reps, (+added over direct); ratios paired per rep\n", m.Reps)
	fmt.Fprintf(w, "load average before %.2f, after %.2f (other work on the machine inflates every path)\n", m.LoadBefore[0], m.LoadAfter[0])
	const lw, cw, rw = 46, 23, 22
	for _, wl := range r.Workloads {
		figs := figuresOf(r.Figures, wl.Name)
		if len(figs) == 0 {
			continue
		}
		paths, ratios := pathsOf(figs), ratiosOf(figs)
		fmt.Fprintf(w, "\n%s\n", wl.Title)
		fmt.Fprintf(w, "  %-*s", lw, "")
		for _, p := range paths {
			fmt.Fprintf(w, "%-*s", cw, p)
		}
		fmt.Fprintln(w)
		for _, f := range figs {
			fmt.Fprintf(w, "  %-*s", lw, fmt.Sprintf("%s (%s)", f.Metric.Label, f.Metric.Unit))
			for _, p := range paths {
				fmt.Fprintf(w, "%-*s", cw, cell(f, p))
			}
			fmt.Fprintln(w)
		}
		if len(ratios) == 0 {
			continue
		}
		// The ratios below the figures: eight paths and eight ratios do
		// not fit one line.
		fmt.Fprintf(w, "  %-*s", lw, "ratios")
		for _, c := range ratios {
			fmt.Fprintf(w, "%-*s", rw, c[0]+"/"+c[1])
		}
		fmt.Fprintln(w)
		for _, f := range figs {
			if len(f.Metric.Only) == 1 || len(ratiosOf([]Figure{f})) == 0 {
				continue
			}
			fmt.Fprintf(w, "  %-*s", lw, fmt.Sprintf("%s (%s)", f.Metric.Label, f.Metric.Unit))
			for _, c := range ratios {
				fmt.Fprintf(w, "%-*s", rw, ratioCell(f, c[0], c[1]))
			}
			fmt.Fprintln(w)
		}
	}
	if mem := r.Memory; mem != nil {
		fmt.Fprintf(w, "\nztunnel state: %d workloads + %d services over delta xDS (synced in %.1f s)\n", mem.Workloads, mem.Services, mem.SyncTime)
		fmt.Fprintf(w, "  RSS   idle %s MB  loaded %s MB  → %s bytes per workload (settled; %s MB right after the update)\n", FormatValue(mem.IdleRSS/1e6), FormatValue(mem.LoadedRSS/1e6), FormatValue(mem.RSSPerWorkload()), FormatValue(mem.PeakRSS/1e6))
		fmt.Fprintf(w, "  heap  idle %s MB  loaded %s MB  → %s bytes per workload (live heap after GC)\n", FormatValue(mem.IdleHeap/1e6), FormatValue(mem.LoadedHeap/1e6), FormatValue(mem.HeapPerWorkload()))
	}
	if ws := r.Waypoint; ws != nil {
		fmt.Fprintf(w, "\nwaypoint config: %d services × %d routes bound to it, applied (file written → waypoint acked) in %.1f s\n", ws.Services, ws.RoutesPerService, ws.ApplySeconds)
		fmt.Fprintf(w, "  private RSS  idle %s MB  loaded %s MB (peak %s MB while applying)  → %s bytes per service\n", FormatValue(ws.IdleAnon/1e6), FormatValue(ws.LoadedAnon/1e6), FormatValue(ws.PeakAnon/1e6), FormatValue(ws.AnonPerService()))
	}
	if idle := r.Idle; idle != nil {
		fmt.Fprintf(w, "\nidle connections: %d through the mesh, one request each, then quiet\n", idle.Conns)
		for _, z := range idle.Ztunnels {
			fmt.Fprintf(w, "  ztunnel %-8s %s bytes of heap, %s bytes of RSS, %s goroutines per connection\n", z.Node, FormatValue(z.HeapPerConn), FormatValue(z.RSSPerConn), FormatValue(z.GoroutinesPerConn))
		}
	}
	fmt.Fprintf(w, "\nTargets (reported, never asserted)\n")
	for _, t := range r.Targets {
		v := "–"
		if t.Measured {
			v = FormatValue(t.Value) + " " + t.Unit
		}
		fmt.Fprintf(w, "  %-66s %-16s %s %-16s %s\n", t.Name, v, t.Op, fmt.Sprintf("%g %s", t.Limit, t.Unit), t)
	}
	for _, n := range m.Notes {
		fmt.Fprintf(w, "note: %s\n", n)
	}
}

// Markdown writes the summary: ratios first, then the figures per path,
// the targets and the plot.
func (r *Report) Markdown(w io.Writer, plotFile string) {
	m := r.Meta
	fmt.Fprintf(w, "# zmesh bench — %s, %s\n\n", m.Date.Format("2006-01-02 15:04 MST"), m.Host)
	mode := "full"
	if m.Quick {
		mode = "quick"
	}
	fmt.Fprintf(w, "%s run: %d repetitions, the paths interleaved within each; %d CPUs, kernel %s, %s; load average %.2f before, %.2f after; %.0f s.\n\n",
		mode, m.Reps, m.CPUs, m.Kernel, m.GoVersion, m.LoadBefore[0], m.LoadAfter[0], m.Elapsed)
	fmt.Fprintf(w, "Paths: **direct** pod → pod; **mesh** both pods ambient (eBPF capture, two ztunnels, HBONE mTLS); **stunnel** pod → stunnel client on node A → TLS → stunnel server on node B → pod; **haproxy** pod → haproxy (TCP mode) on node B → pod. "+
		"Through an HTTP proxy on node C: **waypoint** client pod → service VIP → ztunnel (node A) → HBONE → waypoint → HBONE → ztunnel (node B) → pod; **nginx-mtls** pod → mutual TLS 1.3 → nginx → mutual TLS 1.3 → stunnel server on node B → pod; **nginx** and **haproxy-http** (HTTP mode) pod → proxy → pod in plain HTTP.\n\n")
	fmt.Fprintf(w, "Ratios are taken per repetition between runs made back to back, then the median; cells show median ±half the spread.\n\n")

	ratios := ratiosOf(r.Figures)
	fmt.Fprintf(w, "## Ratios\n\n| workload | figure |")
	for _, c := range ratios {
		fmt.Fprintf(w, " %s |", c[0]+"/"+c[1])
	}
	fmt.Fprintf(w, "\n|---|---|%s\n", strings.Repeat("---|", len(ratios)))
	for _, f := range r.Figures {
		if len(f.Metric.Only) == 1 || len(ratiosOf([]Figure{f})) == 0 {
			continue // a figure of one path alone: no ratio
		}
		fmt.Fprintf(w, "| %s | %s (%s) |", f.Workload, f.Metric.Label, f.Metric.Unit)
		for _, c := range ratios {
			fmt.Fprintf(w, " %s |", ratioCell(f, c[0], c[1]))
		}
		fmt.Fprintln(w)
	}

	fmt.Fprintf(w, "\n## Targets (reported, never asserted)\n\n| target | measured | goal | |\n|---|---|---|---|\n")
	for _, t := range r.Targets {
		v := "–"
		if t.Measured {
			v = FormatValue(t.Value) + " " + t.Unit
		}
		fmt.Fprintf(w, "| %s | %s | %s %g %s | %s |\n", t.Name, v, t.Op, t.Limit, t.Unit, t)
	}

	fmt.Fprintf(w, "\n## Figures\n")
	for _, wl := range r.Workloads {
		figs := figuresOf(r.Figures, wl.Name)
		if len(figs) == 0 {
			continue
		}
		paths := pathsOf(figs)
		fmt.Fprintf(w, "\n### %s\n\n| figure | %s |\n|---|%s\n", wl.Title, strings.Join(paths, " | "), strings.Repeat("---|", len(paths)))
		for _, f := range figs {
			fmt.Fprintf(w, "| %s (%s) |", f.Metric.Label, f.Metric.Unit)
			for _, p := range paths {
				fmt.Fprintf(w, " %s |", cell(f, p))
			}
			fmt.Fprintln(w)
		}
	}
	if mem := r.Memory; mem != nil {
		fmt.Fprintf(w, "\n### ztunnel state\n\n%d workloads and %d services fed by zmeshd over delta xDS to a ztunnel with no pods.\n\n| | idle | loaded | per workload |\n|---|---|---|---|\n", mem.Workloads, mem.Services)
		fmt.Fprintf(w, "| RSS, settled (%s MB right after the update) | %s MB | %s MB | %s B |\n", FormatValue(mem.PeakRSS/1e6), FormatValue(mem.IdleRSS/1e6), FormatValue(mem.LoadedRSS/1e6), FormatValue(mem.RSSPerWorkload()))
		fmt.Fprintf(w, "| heap in use after GC | %s MB | %s MB | %s B |\n", FormatValue(mem.IdleHeap/1e6), FormatValue(mem.LoadedHeap/1e6), FormatValue(mem.HeapPerWorkload()))
	}
	if ws := r.Waypoint; ws != nil {
		fmt.Fprintf(w, "\n### Waypoint config scale\n\n%d services bound to the waypoint, each with a VirtualService of %d routes, written at once into zmeshd's config directory; applied (file written → the waypoint acknowledged every type) in %.1f s.\n\n| | idle | loaded | peak while applying | per service |\n|---|---|---|---|---|\n",
			ws.Services, ws.RoutesPerService, ws.ApplySeconds)
		fmt.Fprintf(w, "| private RSS (RssAnon) | %s MB | %s MB | %s MB | %s B |\n", FormatValue(ws.IdleAnon/1e6), FormatValue(ws.LoadedAnon/1e6), FormatValue(ws.PeakAnon/1e6), FormatValue(ws.AnonPerService()))
	}
	if idle := r.Idle; idle != nil {
		fmt.Fprintf(w, "\n### Idle connections\n\n%d connections from the mesh client pod to the mesh server pod, one request each, then open and quiet; per connection:\n\n| ztunnel | heap after GC | RSS | goroutines |\n|---|---|---|---|\n", idle.Conns)
		for _, z := range idle.Ztunnels {
			fmt.Fprintf(w, "| %s | %s B | %s B | %s |\n", z.Node, FormatValue(z.HeapPerConn), FormatValue(z.RSSPerConn), FormatValue(z.GoroutinesPerConn))
		}
	}
	if plotFile != "" {
		fmt.Fprintf(w, "\n## Latency at the fixed rate\n\n![latency percentiles per path](%s)\n", plotFile)
	}
	if len(r.Curves) > 0 {
		fmt.Fprintf(w, "\n| percentile |")
		paths := r.curvePaths()
		for _, p := range paths {
			fmt.Fprintf(w, " %s (ms) |", p)
		}
		fmt.Fprintf(w, "\n|---|%s\n", strings.Repeat("---|", len(paths)))
		for i, pt := range r.Curves[paths[0]] {
			fmt.Fprintf(w, "| p%g |", pt.Percentile)
			for _, p := range paths {
				c := r.Curves[p]
				if i < len(c) {
					fmt.Fprintf(w, " %s |", FormatValue(c[i].Ms))
				} else {
					fmt.Fprintf(w, " – |")
				}
			}
			fmt.Fprintln(w)
		}
	}
	if len(m.Notes) > 0 {
		fmt.Fprintf(w, "\n## Notes\n\n")
		for _, n := range m.Notes {
			fmt.Fprintf(w, "- %s\n", n)
		}
	}
}

func (r *Report) curvePaths() []string {
	var out []string
	for _, p := range Paths {
		if len(r.Curves[p]) > 0 {
			out = append(out, p)
		}
	}
	return out
}

// WriteJSON writes the whole report, indented.
func (r *Report) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(r)
}

// ReadJSON reads a report written by WriteJSON.
func ReadJSON(path string) (*Report, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var r Report
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return &r, nil
}

// percentiles lists the percentiles present in any curve, sorted.
func (r *Report) percentiles() []float64 {
	var ps []float64
	for _, c := range r.Curves {
		for _, p := range c {
			if !slices.Contains(ps, p.Percentile) {
				ps = append(ps, p.Percentile)
			}
		}
	}
	slices.Sort(ps)
	return ps
}
