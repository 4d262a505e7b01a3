package report

import (
	"fmt"
	"math"
	"time"
)

// Workload is one measurement the benchmark repeats on every path.
type Workload struct {
	Name    string   `json:"name"`
	Title   string   `json:"title"`
	Metrics []Metric `json:"metrics"`
}

// Workload names.
const (
	Lat1k   = "lat1k"
	MaxRPS  = "maxrps"
	Bulk1   = "bulk1"
	Bulk8   = "bulk8"
	NewConn = "newconn"
	// H2Max is max req/s over HTTP/2 (h2c from the client, h2 over TLS
	// to nginx's TLS listener), GRPC unary calls at a fixed rate.
	H2Max = "h2max"
	GRPC  = "grpc"
)

// L4Workloads measure a byte pipe: they run on the L4 paths alone.
var L4Workloads = []string{Bulk1, Bulk8, NewConn}

// L7Workloads speak HTTP/2 or gRPC: they run on direct, the mesh and the
// L7 paths.
var L7Workloads = []string{H2Max, GRPC}

// Metric keys shared by several workloads.
const (
	KeyQPS      = "qps"
	KeyProxyCPU = "proxy_cpu_per_1k" // CPU seconds of the path's proxies per 1000 requests
	KeyZt1CPU   = "zt_client_cpu_per_1k"
	KeyZt2CPU   = "zt_server_cpu_per_1k"
	KeyZt1HWM   = "zt_client_peak_rss_mb"
	KeyZt2HWM   = "zt_server_peak_rss_mb"
	// RssAnon at the end of the run: the memory ztunnel allocated itself,
	// without the pages of its binary that RSS also counts.
	KeyZt1Anon = "zt_client_anon_rss_mb"
	KeyZt2Anon = "zt_server_anon_rss_mb"
	// The highest RssAnon seen during the run (sampled every 100 ms).
	KeyZt1AnonPeak = "zt_client_peak_anon_rss_mb"
	KeyZt2AnonPeak = "zt_server_peak_anon_rss_mb"
	KeyGbps        = "gbps"
	// Syscalls of the path's proxies through read(2)/write(2) and their
	// vectored forms (/proc/<pid>/io): a figure the machine's load does
	// not move. Not shown for haproxy, whose send/recv/splice it misses.
	KeySyscallsPerReq = "proxy_syscalls_per_req"
	KeySyscallsPerMB  = "proxy_syscalls_per_mb"
	KeyCPUPerGB       = "proxy_cpu_per_gb" // CPU seconds of the path's proxies per GB carried
	KeyConnPS         = "conn_per_s"
	// The sum over the path's proxy processes of each one's highest
	// RssAnon during the run (nginx: master and workers).
	KeyProxyAnonPeak = "proxy_peak_anon_rss_mb"
	// The waypoint alone (its path's proxies also hold both ztunnels).
	KeyWpCPU      = "waypoint_cpu_per_1k"
	KeyWpAnonPeak = "waypoint_peak_anon_rss_mb"
)

var (
	proxyPaths = []string{Mesh, Stunnel, HAProxy, Waypoint, NginxMTLS, Nginx, HAProxyHTTP}
	// read/write syscalls: nginx and haproxy use recv/send, which
	// /proc/<pid>/io does not count.
	rwPaths = []string{Mesh, Stunnel, Waypoint}
)

// LatencyPercentiles are the percentiles asked of fortio; the table shows
// some of them, the plot all.
var LatencyPercentiles = []float64{50, 75, 90, 95, 99, 99.5, 99.9}

// LatKey is the metric key of a latency percentile.
func LatKey(p float64) string { return fmt.Sprintf("p%g", p) }

var (
	proxyCPU       = Metric{Key: KeyProxyCPU, Label: "proxies' CPU s per 1000 req", Unit: "s", Better: Lower, Only: proxyPaths}
	proxySysPerReq = Metric{Key: KeySyscallsPerReq, Label: "proxies' read/write syscalls per req", Unit: "calls", Better: Lower, Only: rwPaths}
	proxyAnonPeak  = Metric{Key: KeyProxyAnonPeak, Label: "proxies' peak private RSS", Unit: "MB", Better: Lower, Only: proxyPaths}
	wpCPU          = Metric{Key: KeyWpCPU, Label: "waypoint CPU s per 1000 req", Unit: "s", Better: Lower, Only: []string{Waypoint}}
	wpAnonPeak     = Metric{Key: KeyWpAnonPeak, Label: "waypoint peak private RSS", Unit: "MB", Better: Lower, Only: []string{Waypoint}}
	proxySysPerMB  = Metric{Key: KeySyscallsPerMB, Label: "proxies' read/write syscalls per MB", Unit: "calls", Better: Lower, Only: []string{Mesh, Stunnel}}
	proxyCPUPerGB  = Metric{Key: KeyCPUPerGB, Label: "proxies' CPU s per GB", Unit: "s", Better: Lower, Only: []string{Mesh, Stunnel, HAProxy}}
)

// Workloads lists what one repetition runs, in order. rate is the fixed
// request rate of Lat1k and conns the connection count of MaxRPS.
func Workloads(rate, conns int) []Workload {
	lat := Workload{Name: Lat1k, Title: fmt.Sprintf("1 kB HTTP/1.1 request/response at %d req/s (fortio)", rate)}
	for _, p := range []float64{50, 90, 99, 99.9} {
		lat.Metrics = append(lat.Metrics, Metric{Key: LatKey(p), Label: fmt.Sprintf("p%g", p), Unit: "ms", Better: Lower, Added: true})
	}
	lat.Metrics = append(lat.Metrics,
		Metric{Key: KeyQPS, Label: "achieved req/s", Unit: "req/s", Better: Higher},
		proxyCPU,
		proxySysPerReq,
		proxyAnonPeak,
		wpCPU,
		wpAnonPeak,
		Metric{Key: KeyZt1CPU, Label: "client ztunnel CPU s per 1000 req", Unit: "s", Better: Lower, Only: []string{Mesh}},
		Metric{Key: KeyZt2CPU, Label: "server ztunnel CPU s per 1000 req", Unit: "s", Better: Lower, Only: []string{Mesh}},
		Metric{Key: KeyZt1HWM, Label: "client ztunnel peak RSS", Unit: "MB", Better: Lower, Only: []string{Mesh}},
		Metric{Key: KeyZt2HWM, Label: "server ztunnel peak RSS", Unit: "MB", Better: Lower, Only: []string{Mesh}},
		Metric{Key: KeyZt1AnonPeak, Label: "client ztunnel peak private RSS", Unit: "MB", Better: Lower, Only: []string{Mesh}},
		Metric{Key: KeyZt2AnonPeak, Label: "server ztunnel peak private RSS", Unit: "MB", Better: Lower, Only: []string{Mesh}},
		Metric{Key: KeyZt1Anon, Label: "client ztunnel private RSS after the run", Unit: "MB", Better: Lower, Only: []string{Mesh}},
		Metric{Key: KeyZt2Anon, Label: "server ztunnel private RSS after the run", Unit: "MB", Better: Lower, Only: []string{Mesh}},
	)
	grpc := Workload{Name: GRPC, Title: fmt.Sprintf("gRPC unary ping at %d calls/s, 10 connections (fortio grpcping)", rate)}
	for _, p := range []float64{50, 90, 99, 99.9} {
		grpc.Metrics = append(grpc.Metrics, Metric{Key: LatKey(p), Label: fmt.Sprintf("p%g", p), Unit: "ms", Better: Lower, Added: true})
	}
	grpc.Metrics = append(grpc.Metrics,
		Metric{Key: KeyQPS, Label: "achieved calls/s", Unit: "calls/s", Better: Higher},
		proxyCPU, proxyAnonPeak, wpCPU, wpAnonPeak)
	return []Workload{
		lat,
		{Name: MaxRPS, Title: fmt.Sprintf("max req/s, %d connections, 1 kB request/response (fortio)", conns), Metrics: []Metric{
			{Key: KeyQPS, Label: "req/s", Unit: "req/s", Better: Higher},
			{Key: LatKey(99), Label: "p99", Unit: "ms", Better: Lower},
			proxyCPU,
			proxySysPerReq,
			proxyAnonPeak,
			wpCPU,
			wpAnonPeak,
		}},
		{Name: H2Max, Title: fmt.Sprintf("max req/s over HTTP/2 (h2c; h2 over TLS to nginx-mtls), %d connections, 1 kB (fortio -h2)", conns), Metrics: []Metric{
			{Key: KeyQPS, Label: "req/s", Unit: "req/s", Better: Higher},
			{Key: LatKey(99), Label: "p99", Unit: "ms", Better: Lower},
			proxyCPU,
			proxyAnonPeak,
			wpCPU,
			wpAnonPeak,
		}},
		grpc,
		{Name: Bulk1, Title: "bulk TCP, 1 stream (iperf3)", Metrics: []Metric{{Key: KeyGbps, Label: "throughput", Unit: "Gbit/s", Better: Higher}, proxyCPUPerGB, proxySysPerMB}},
		{Name: Bulk8, Title: "bulk TCP, 8 streams (iperf3)", Metrics: []Metric{{Key: KeyGbps, Label: "throughput", Unit: "Gbit/s", Better: Higher}, proxyCPUPerGB, proxySysPerMB}},
		{Name: NewConn, Title: "new connections: connect, one small request, close (fortio -keepalive=false)", Metrics: []Metric{
			{Key: KeyConnPS, Label: "connections/s", Unit: "conn/s", Better: Higher},
			proxyCPU,
			proxySysPerReq,
		}},
	}
}

// Idle is what open, quiet connections cost each ztunnel: Conns
// connections from the mesh client pod to the mesh server pod, each
// having carried one request, measured against the same ztunnels before
// they were opened. Heap figures are taken right after a forced GC; RSS
// also holds the goroutines' stacks.
type Idle struct {
	Conns    int           `json:"connections"`
	Ztunnels []IdleZtunnel `json:"ztunnels"`
}

// IdleZtunnel is one ztunnel's cost per idle connection.
type IdleZtunnel struct {
	Node              string  `json:"node"`
	HeapPerConn       float64 `json:"heap_bytes_per_connection"`
	RSSPerConn        float64 `json:"rss_bytes_per_connection"`
	GoroutinesPerConn float64 `json:"goroutines_per_connection"`
}

// Memory is ztunnel's state cost: one ztunnel with no pods, measured
// idle, then once its state holds Workloads workloads and Services
// services (fed by zmeshd over delta xDS). Heap figures are taken right
// after a forced GC.
type Memory struct {
	Workloads  int     `json:"workloads"`
	Services   int     `json:"services"`
	IdleRSS    float64 `json:"idle_rss_bytes"`
	LoadedRSS  float64 `json:"loaded_rss_bytes"`
	IdleHeap   float64 `json:"idle_heap_inuse_bytes"`
	LoadedHeap float64 `json:"loaded_heap_inuse_bytes"`
	// PeakRSS is the RSS right after the update was taken in; LoadedRSS
	// is once the runtime has returned the update's garbage.
	PeakRSS  float64 `json:"peak_rss_bytes,omitempty"`
	SyncTime float64 `json:"sync_seconds"` // file written -> ztunnel acked
}

// RSSPerWorkload is the RSS above idle divided by the workloads.
func (m Memory) RSSPerWorkload() float64 {
	if m.Workloads == 0 {
		return math.NaN()
	}
	return (m.LoadedRSS - m.IdleRSS) / float64(m.Workloads)
}

// HeapPerWorkload is the live heap above idle divided by the workloads.
func (m Memory) HeapPerWorkload() float64 {
	if m.Workloads == 0 {
		return math.NaN()
	}
	return (m.LoadedHeap - m.IdleHeap) / float64(m.Workloads)
}

// AddedRatio is the waypoint path's added latency over the mesh path's
// (both over direct). Not defined when the mesh adds nothing measurable:
// a ratio to zero or to a negative delta (noise) says nothing.
func AddedRatio(waypoint, mesh float64) (float64, bool) {
	if mesh <= 0 || math.IsNaN(mesh) || math.IsNaN(waypoint) {
		return 0, false
	}
	return waypoint / mesh, true
}

// WaypointScale is the waypoint's config cost: Services services bound
// to it, each with a VirtualService of RoutesPerService routes, written
// into zmeshd's config directory at once; memory is RssAnon (what the
// waypoint allocated, not its binary's pages), before and after.
type WaypointScale struct {
	Services         int     `json:"services"`
	RoutesPerService int     `json:"routes_per_service"`
	IdleAnon         float64 `json:"idle_anon_rss_bytes"`
	LoadedAnon       float64 `json:"loaded_anon_rss_bytes"`
	PeakAnon         float64 `json:"peak_anon_rss_bytes"` // highest while it took the update in
	// ApplySeconds: file written → the waypoint has acknowledged every
	// type (it acknowledges once the snapshot is compiled and swapped in).
	ApplySeconds float64 `json:"apply_seconds"`
}

// AnonPerService is the private memory above idle per bound service.
func (w WaypointScale) AnonPerService() float64 {
	if w.Services == 0 {
		return math.NaN()
	}
	return (w.LoadedAnon - w.IdleAnon) / float64(w.Services)
}

// Target is one of the goals, with what this run measured.
type Target struct {
	Name  string  `json:"name"`
	Op    string  `json:"op"` // "<=" or ">="
	Limit float64 `json:"limit"`
	Unit  string  `json:"unit"`
	Value float64 `json:"value"`
	// Measured is false when the run lacks the figure (Value is then 0).
	Measured bool `json:"measured"`
	Met      bool `json:"met"`
}

func (t Target) String() string {
	if !t.Measured {
		return "not measured"
	}
	if t.Met {
		return "met"
	}
	return "MISSED"
}

// Targets evaluates the goals against the figures. rate is the
// fixed request rate of Lat1k: CPU and memory goals are per 1000 req/s.
func Targets(figs []Figure, mem *Memory, rate int) []Target {
	find := func(workload, key string) (Figure, bool) {
		for _, f := range figs {
			if f.Workload == workload && f.Metric.Key == key {
				return f, true
			}
		}
		return Figure{}, false
	}
	var out []Target
	add := func(name, op string, limit float64, unit string, v float64, ok bool) {
		t := Target{Name: name, Op: op, Limit: limit, Unit: unit}
		if ok && !math.IsNaN(v) {
			t.Value, t.Measured = v, true
			t.Met = (op == "<=" && v <= limit) || (op == ">=" && v >= limit)
		}
		out = append(out, t)
	}
	pairMedian := func(workload, key, path, against string, delta bool) (float64, bool) {
		f, ok := find(workload, key)
		if !ok {
			return 0, false
		}
		p, ok := f.Pair(path, against)
		if !ok {
			return 0, false
		}
		if delta {
			if p.Delta == nil || !p.Delta.Valid() {
				return 0, false
			}
			return p.Delta.Median, true
		}
		return p.Ratio.Median, p.Ratio.Valid()
	}
	pathMedian := func(workload, key, path string) (float64, bool) {
		f, ok := find(workload, key)
		if !ok {
			return 0, false
		}
		s := f.Stat(path)
		return s.Median, s.Valid()
	}
	v, ok := pairMedian(Lat1k, LatKey(99), Mesh, Direct, true)
	add(fmt.Sprintf("added p99 at %d req/s (mesh − direct)", rate), "<=", 0.15, "ms", v, ok)
	per1k := float64(rate) / 1000
	for _, z := range []struct{ who, cpu, hwm string }{{"client", KeyZt1CPU, KeyZt1HWM}, {"server", KeyZt2CPU, KeyZt2HWM}} {
		// CPU seconds per 1000 requests at a steady rate of 1000 req/s
		// is the vCPU share.
		v, ok := pathMedian(Lat1k, z.cpu, Mesh)
		add(fmt.Sprintf("%s ztunnel vCPU per 1000 req/s", z.who), "<=", 0.05, "vCPU", v, ok)
		v, ok = pathMedian(Lat1k, z.hwm, Mesh)
		add(fmt.Sprintf("%s ztunnel peak RSS per 1000 req/s", z.who), "<=", 16, "MB", v/per1k, ok)
	}
	for _, b := range []struct{ w, n string }{{Bulk1, "1 stream"}, {Bulk8, "8 streams"}} {
		v, ok := pairMedian(b.w, KeyGbps, Mesh, Direct, false)
		add("bulk "+b.n+": mesh / direct", ">=", 0.60, "×", v, ok)
		v, ok = pairMedian(b.w, KeyGbps, Mesh, Stunnel, false)
		add("bulk "+b.n+": mesh / stunnel", ">=", 1.0, "×", v, ok)
	}
	v, ok = pathMedian(NewConn, KeyConnPS, Mesh)
	add("new connections per second (mesh)", ">=", 10000, "conn/s", v, ok)
	// The waypoint against what users would run instead, and against the
	// L4 mesh it extends.
	v, ok = pairMedian(MaxRPS, KeyQPS, Waypoint, NginxMTLS, false)
	add("max req/s: waypoint / nginx mTLS", ">=", 1.0, "×", v, ok)
	v, ok = pathMedian(Lat1k, KeyWpCPU, Waypoint)
	add("waypoint vCPU per 1000 req/s", "<=", 0.10, "vCPU", v, ok)
	v, ok = pathMedian(Lat1k, KeyWpAnonPeak, Waypoint)
	add("waypoint peak private RSS per 1000 req/s", "<=", 30, "MB", v/per1k, ok)
	wp, okW := pairMedian(Lat1k, LatKey(99), Waypoint, Direct, true)
	l4, okM := pairMedian(Lat1k, LatKey(99), Mesh, Direct, true)
	v, ok = AddedRatio(wp, l4)
	add(fmt.Sprintf("added p99 at %d req/s: waypoint path / mesh path", rate), "<=", 2, "×", v, ok && okW && okM)
	if mem != nil {
		add(fmt.Sprintf("ztunnel state per workload (%d workloads, %d services; RSS)", mem.Workloads, mem.Services), "<=", 2, "KB", mem.RSSPerWorkload()/1024, true)
	} else {
		add("ztunnel state per workload", "<=", 2, "KB", 0, false)
	}
	return out
}

// Meta describes the run.
type Meta struct {
	Date       time.Time         `json:"date"`
	Host       string            `json:"host"`
	Kernel     string            `json:"kernel"`
	GoVersion  string            `json:"go_version"`
	CPUs       int               `json:"cpus"`
	Quick      bool              `json:"quick"`
	Reps       int               `json:"reps"`
	Rate       int               `json:"rate"`
	Conns      int               `json:"conns"`
	Durations  map[string]string `json:"durations"`
	LoadBefore [3]float64        `json:"load_before"`
	LoadAfter  [3]float64        `json:"load_after"`
	Tools      map[string]string `json:"tools"`
	Elapsed    float64           `json:"elapsed_seconds"`
	Notes      []string          `json:"notes,omitempty"`
}

// Report is everything one run wrote: the JSON file holds it whole.
type Report struct {
	Meta      Meta               `json:"meta"`
	Workloads []Workload         `json:"workloads"`
	Figures   []Figure           `json:"figures"`
	Curves    map[string][]Point `json:"latency_curves"` // path -> median curve at the fixed rate
	Memory    *Memory            `json:"memory,omitempty"`
	Idle      *Idle              `json:"idle_connections,omitempty"`
	Waypoint  *WaypointScale     `json:"waypoint_scale,omitempty"`
	Targets   []Target           `json:"targets"`
	Samples   []Sample           `json:"samples"`
}

// Build aggregates samples into a report.
func Build(meta Meta, workloads []Workload, samples []Sample, mem *Memory) *Report {
	r := &Report{Meta: meta, Workloads: workloads, Samples: samples, Memory: mem, Curves: map[string][]Point{}}
	r.Figures = Aggregate(samples, workloads)
	curves := map[string][][]Point{}
	for _, s := range samples {
		if s.Workload == Lat1k && len(s.Latency) > 0 {
			curves[s.Path] = append(curves[s.Path], s.Latency)
		}
	}
	for p, cs := range curves {
		r.Curves[p] = MedianCurve(cs)
	}
	r.Targets = Targets(r.Figures, mem, meta.Rate)
	return r
}
