package report

import (
	"bytes"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestQuantile(t *testing.T) {
	for _, c := range []struct {
		xs   []float64
		q    float64
		want float64
	}{
		{[]float64{1}, 0.5, 1},
		{[]float64{1, 2}, 0.5, 1.5},
		{[]float64{1, 2, 3}, 0.5, 2},
		{[]float64{1, 2, 3, 4}, 0.5, 2.5},
		{[]float64{1, 2, 3, 4, 5}, 0.9, 4.6},
		{[]float64{1, 2, 3}, 0, 1},
		{[]float64{1, 2, 3}, 1, 3},
	} {
		if got := Quantile(c.xs, c.q); math.Abs(got-c.want) > 1e-9 {
			t.Errorf("Quantile(%v, %g) = %g, want %g", c.xs, c.q, got, c.want)
		}
	}
	if !math.IsNaN(Quantile(nil, 0.5)) {
		t.Error("Quantile of nothing is not NaN")
	}
}

func TestSummarize(t *testing.T) {
	s := Summarize([]float64{3, math.NaN(), 1, 2, math.Inf(1)})
	if s != (Stat{Median: 2, Min: 1, Max: 3, N: 3}) {
		t.Errorf("Summarize = %+v", s)
	}
	if got := s.Spread(); got != 1 {
		t.Errorf("Spread = %g, want 1", got)
	}
	if e := Summarize(nil); e.Valid() || e != (Stat{}) {
		t.Errorf("Summarize(nil) = %+v, want the zero Stat", e)
	}
}

// samples: three reps; mesh is twice direct's latency in each rep while
// the machine drifts (rep 3 is slow on every path), so the paired ratio
// is exactly 2 whatever the drift.
func testSamples() []Sample {
	var out []Sample
	for rep, scale := range map[int]float64{1: 1, 2: 1.1, 3: 3} {
		for path, mul := range map[string]float64{Direct: 1, Mesh: 2, Stunnel: 4, HAProxy: 1.5} {
			s := Sample{Rep: rep, Workload: Lat1k, Path: path, Values: map[string]float64{
				LatKey(50): 0.1 * scale * mul, LatKey(99): 0.5 * scale * mul, KeyQPS: 1000,
			}}
			for _, p := range LatencyPercentiles {
				s.Latency = append(s.Latency, Point{Percentile: p, Ms: p / 100 * scale * mul})
			}
			if path == Mesh {
				s.Values[KeyZt1CPU], s.Values[KeyZt2CPU] = 0.04, 0.06
				s.Values[KeyZt1HWM], s.Values[KeyZt2HWM] = 12, 20
			}
			out = append(out, s)
			b := Sample{Rep: rep, Workload: Bulk8, Path: path, Values: map[string]float64{KeyGbps: 10 * scale / mul}}
			out = append(out, b)
		}
		out = append(out, Sample{Rep: rep, Workload: NewConn, Path: Mesh, Values: map[string]float64{KeyConnPS: 12000 * scale}})
	}
	return out
}

func TestAggregatePairsWithinARep(t *testing.T) {
	figs := Aggregate(testSamples(), Workloads(1000, 64))
	var p99 *Figure
	for i, f := range figs {
		if f.Workload == Lat1k && f.Metric.Key == LatKey(99) {
			p99 = &figs[i]
		}
	}
	if p99 == nil {
		t.Fatal("no lat1k p99 figure")
	}
	if s := p99.Stat(Direct); s.N != 3 || math.Abs(s.Median-0.55) > 1e-9 || s.Min != 0.5 || math.Abs(s.Max-1.5) > 1e-9 {
		t.Errorf("direct p99 = %+v", s)
	}
	mesh, ok := p99.Pair(Mesh, Direct)
	if !ok || math.Abs(mesh.Ratio.Median-2) > 1e-9 || math.Abs(mesh.Ratio.Max-2) > 1e-9 {
		t.Errorf("mesh/direct = %+v, want 2 in every rep", mesh)
	}
	if mesh.Delta == nil || math.Abs(mesh.Delta.Median-0.55) > 1e-9 {
		t.Errorf("mesh − direct = %+v, want median 0.55", mesh.Delta)
	}
	if st, ok := p99.Pair(Mesh, Stunnel); !ok || math.Abs(st.Ratio.Median-0.5) > 1e-9 {
		t.Errorf("mesh/stunnel = %+v", st)
	}
	if hd, ok := p99.Pair(HAProxy, Direct); !ok || math.Abs(hd.Ratio.Median-1.5) > 1e-9 {
		t.Errorf("haproxy/direct = %+v", hd)
	}
	for _, f := range figs {
		if f.Workload == Lat1k && f.Metric.Key == KeyZt1CPU {
			if _, ok := f.Paths[Direct]; ok {
				t.Error("a mesh-only metric has a direct figure")
			}
		}
	}
}

func TestTargets(t *testing.T) {
	mem := &Memory{Workloads: 10000, Services: 2000, IdleRSS: 20e6, LoadedRSS: 20e6 + 10000*1024}
	ts := Targets(Aggregate(testSamples(), Workloads(1000, 64)), mem, 1000)
	got := map[string]Target{}
	for _, tg := range ts {
		got[tg.Name] = tg
	}
	for name, want := range map[string]struct {
		v        float64
		measured bool
		met      bool
	}{
		"added p99 at 1000 req/s (mesh − direct)":                          {0.55, true, false},
		"client ztunnel vCPU per 1000 req/s":                               {0.04, true, true},
		"server ztunnel vCPU per 1000 req/s":                               {0.06, true, false},
		"client ztunnel peak RSS per 1000 req/s":                           {12, true, true},
		"server ztunnel peak RSS per 1000 req/s":                           {20, true, false},
		"bulk 8 streams: mesh / direct":                                    {0.5, true, false},
		"bulk 8 streams: mesh / stunnel":                                   {2, true, true},
		"bulk 1 stream: mesh / direct":                                     {0, false, false},
		"new connections per second (mesh)":                                {13200, true, true},
		"ztunnel state per workload (10000 workloads, 2000 services; RSS)": {1, true, true},
	} {
		tg, ok := got[name]
		if !ok {
			t.Errorf("no target %q", name)
			continue
		}
		if tg.Measured != want.measured || tg.Met != want.met || math.Abs(tg.Value-want.v) > 1e-9 {
			t.Errorf("%s: %+v, want value %g measured %v met %v", name, tg, want.v, want.measured, want.met)
		}
	}
}

func TestMedianCurve(t *testing.T) {
	c := MedianCurve([][]Point{
		{{99, 3}, {50, 1}},
		{{50, 2}, {99, 5}},
		{{50, 9}, {99, 4}},
	})
	want := []Point{{50, 2}, {99, 4}}
	if len(c) != 2 || c[0] != want[0] || c[1] != want[1] {
		t.Errorf("MedianCurve = %v, want %v", c, want)
	}
}

func testReport() *Report {
	meta := Meta{Date: time.Date(2026, 1, 2, 3, 4, 0, 0, time.UTC), Host: "h", Kernel: "k", GoVersion: "go", CPUs: 2, Reps: 3, Rate: 1000, Conns: 64}
	r := Build(meta, Workloads(1000, 64), testSamples(), &Memory{Workloads: 10000, Services: 2000, IdleRSS: 20e6, LoadedRSS: 40e6, IdleHeap: 1e6, LoadedHeap: 15e6})
	r.Idle = &Idle{Conns: 2000, Ztunnels: []IdleZtunnel{{Node: "node-1", HeapPerConn: 3400, RSSPerConn: 12000, GoroutinesPerConn: 1}}}
	return r
}

func TestJSONRoundTrip(t *testing.T) {
	r := testReport()
	var buf bytes.Buffer
	if err := r.WriteJSON(&buf); err != nil {
		t.Fatal(err)
	}
	f := filepath.Join(t.TempDir(), "r.json")
	if err := os.WriteFile(f, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	back, err := ReadJSON(f)
	if err != nil {
		t.Fatal(err)
	}
	if len(back.Samples) != len(r.Samples) || len(back.Figures) != len(r.Figures) || len(back.Targets) != len(r.Targets) {
		t.Fatalf("round trip lost data: %d/%d samples, %d/%d figures", len(back.Samples), len(r.Samples), len(back.Figures), len(r.Figures))
	}
	if back.Memory.RSSPerWorkload() != 2000 {
		t.Errorf("memory per workload after round trip = %g", back.Memory.RSSPerWorkload())
	}
	if back.Idle == nil || len(back.Idle.Ztunnels) != 1 || back.Idle.Ztunnels[0] != r.Idle.Ztunnels[0] {
		t.Errorf("idle connections after round trip = %+v", back.Idle)
	}
	if len(back.Curves[Mesh]) != len(LatencyPercentiles) {
		t.Errorf("mesh curve has %d points", len(back.Curves[Mesh]))
	}
}

func TestRenderings(t *testing.T) {
	r := testReport()
	var txt, md bytes.Buffer
	r.Text(&txt)
	r.Markdown(&md, "plot.svg")
	for _, want := range []string{
		"1 kB HTTP/1.1 request/response at 1000 req/s",
		"mesh/direct", "mesh/stunnel", "mesh/haproxy",
		"2.00×",
		"MISSED", "met", "not measured",
		"2000 bytes per workload",
		"ztunnel node-1   3400 bytes of heap, 12000 bytes of RSS, 1.000 goroutines per connection",
	} {
		if !strings.Contains(txt.String(), want) {
			t.Errorf("text lacks %q:\n%s", want, txt.String())
		}
	}
	for _, want := range []string{
		"| lat1k | p99 (ms) | 2.00× | 0.50× | 1.33× |",
		"| bulk8 | throughput (Gbit/s) | 0.50× | 2.00× | 0.75× |",
		"![latency percentiles per path](plot.svg)",
		"| p99.9 |",
		"| ztunnel state per workload (10000 workloads, 2000 services; RSS) | 1.953 KB | <= 2 KB | met |",
		"| node-1 | 3400 B | 12000 B | 1.000 |",
	} {
		if !strings.Contains(md.String(), want) {
			t.Errorf("markdown lacks %q:\n%s", want, md.String())
		}
	}
}

func TestPlot(t *testing.T) {
	r := testReport()
	for _, ext := range []string{".svg", ".png"} {
		f := filepath.Join(t.TempDir(), "lat"+ext)
		if err := r.Plot(f); err != nil {
			t.Fatal(err)
		}
		if st, err := os.Stat(f); err != nil || st.Size() < 1000 {
			t.Errorf("%s: %v, %d bytes", f, err, st.Size())
		}
	}
	if err := (&Report{}).Plot(filepath.Join(t.TempDir(), "x.svg")); err == nil {
		t.Error("a report without curves plotted")
	}
}

func TestFormatValue(t *testing.T) {
	for v, want := range map[float64]string{12345.6: "12346", 123.45: "123.5", 12.345: "12.35", 1.2345: "1.234", 0.012345: "0.0123", 0: "0"} {
		if got := FormatValue(v); got != want {
			t.Errorf("FormatValue(%g) = %q, want %q", v, got, want)
		}
	}
	if FormatValue(math.NaN()) != "–" {
		t.Error("NaN not shown as a dash")
	}
}

// waypointSamples: two reps of the L7 paths beside direct and mesh. Per
// rep, the waypoint path adds 1.5× the mesh's p99 over direct, makes
// 0.8× nginx-mtls's max req/s, and the waypoint alone uses 0.08 s of CPU
// and 24 MB of private memory per 1000 requests at 1000 req/s.
func waypointSamples() []Sample {
	var out []Sample
	for rep, scale := range map[int]float64{1: 1, 2: 2} {
		p99 := map[string]float64{Direct: 1, Mesh: 1.2, Waypoint: 1.3, NginxMTLS: 2, Nginx: 1.1, HAProxyHTTP: 1.1}
		qps := map[string]float64{Direct: 10000, Mesh: 8000, Waypoint: 4000, NginxMTLS: 5000, Nginx: 6000, HAProxyHTTP: 7000}
		for path := range p99 {
			lat := Sample{Rep: rep, Workload: Lat1k, Path: path, Values: map[string]float64{LatKey(99): p99[path] * scale}}
			if path == Waypoint {
				lat.Values[KeyWpCPU], lat.Values[KeyWpAnonPeak], lat.Values[KeyProxyAnonPeak] = 0.08, 24, 40
			}
			out = append(out, lat,
				Sample{Rep: rep, Workload: MaxRPS, Path: path, Values: map[string]float64{KeyQPS: qps[path] / scale}},
				Sample{Rep: rep, Workload: H2Max, Path: path, Values: map[string]float64{KeyQPS: qps[path]}})
		}
	}
	return out
}

func TestWaypointTargets(t *testing.T) {
	figs := Aggregate(waypointSamples(), Workloads(1000, 64))
	got := map[string]Target{}
	for _, tg := range Targets(figs, nil, 1000) {
		got[tg.Name] = tg
	}
	for name, want := range map[string]struct {
		v   float64
		met bool
	}{
		"max req/s: waypoint / nginx mTLS":                   {0.8, false},
		"waypoint vCPU per 1000 req/s":                       {0.08, true},
		"waypoint peak private RSS per 1000 req/s":           {24, true},
		"added p99 at 1000 req/s: waypoint path / mesh path": {1.5, true},
		"added p99 at 1000 req/s (mesh − direct)":            {0.3, false},
	} {
		tg, ok := got[name]
		if !ok {
			t.Errorf("no target %q", name)
			continue
		}
		if !tg.Measured || tg.Met != want.met || math.Abs(tg.Value-want.v) > 1e-9 {
			t.Errorf("%s: %+v, want value %g met %v", name, tg, want.v, want.met)
		}
	}
	// The mesh adding nothing (or less than nothing, noise) leaves the
	// ratio of added latencies unmeasured rather than infinite.
	if _, ok := AddedRatio(0.2, 0); ok {
		t.Error("AddedRatio to a zero delta is measured")
	}
	if _, ok := AddedRatio(0.2, -0.1); ok {
		t.Error("AddedRatio to a negative delta is measured")
	}
	// L7-only figures are not shown on L4 paths, L4-only ones not on L7.
	for _, f := range figs {
		if f.Metric.Key == KeyWpCPU && (f.Stat(Mesh).Valid() || !f.Stat(Waypoint).Valid()) {
			t.Errorf("waypoint CPU shown on %v", f.Paths)
		}
	}
}

func TestWaypointRenderings(t *testing.T) {
	meta := Meta{Date: time.Date(2026, 1, 2, 3, 4, 0, 0, time.UTC), Host: "h", Reps: 2, Rate: 1000, Conns: 64}
	r := Build(meta, Workloads(1000, 64), waypointSamples(), nil)
	r.Waypoint = &WaypointScale{Services: 1000, RoutesPerService: 5, IdleAnon: 10e6, LoadedAnon: 30e6, PeakAnon: 50e6, ApplySeconds: 1.5}
	var txt, md bytes.Buffer
	r.Text(&txt)
	r.Markdown(&md, "")
	for _, want := range []string{
		"waypoint/nginx-mtls", "waypoint/mesh", "nginx-mtls", "haproxy-http",
		"waypoint config: 1000 services × 5 routes bound to it, applied (file written → waypoint acked) in 1.5 s",
		"→ 20000 bytes per service",
		"max req/s: waypoint / nginx mTLS", "0.8 ×",
	} {
		if !strings.Contains(txt.String(), want) {
			t.Errorf("text lacks %q:\n%s", want, txt.String())
		}
	}
	// Only the paths and comparisons with figures get a column: stunnel
	// ran nothing.
	if strings.Contains(txt.String(), "mesh/stunnel") || strings.Contains(md.String(), "mesh/stunnel") {
		t.Errorf("text shows a column for a path that ran nothing:\n%s", txt.String())
	}
	for _, want := range []string{
		"| maxrps | req/s (req/s) | 0.80× | 0.40× | 0.50× | 0.80× | 0.67× | 0.57× |",
		"| private RSS (RssAnon) | 10.00 MB | 30.00 MB | 50.00 MB | 20000 B |",
		"| added p99 at 1000 req/s: waypoint path / mesh path | 1.500 × | <= 2 × | met |",
	} {
		if !strings.Contains(md.String(), want) {
			t.Errorf("markdown lacks %q:\n%s", want, md.String())
		}
	}
	var buf bytes.Buffer
	if err := r.WriteJSON(&buf); err != nil {
		t.Fatal(err)
	}
	f := filepath.Join(t.TempDir(), "r.json")
	if err := os.WriteFile(f, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	back, err := ReadJSON(f)
	if err != nil {
		t.Fatal(err)
	}
	if back.Waypoint == nil || *back.Waypoint != *r.Waypoint {
		t.Errorf("waypoint scale after round trip = %+v", back.Waypoint)
	}
}
