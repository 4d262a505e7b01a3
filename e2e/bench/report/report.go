// Package report holds the pure half of zmesh's end-to-end benchmark
// (`make bench`): the figures each run yields, their medians and spreads
// over repetitions, ratios between paths taken pairwise within a
// repetition (the paths of one repetition ran back to back, so a ratio
// cancels most of the machine's drift), the targets the issue sets, and the
// renderings: a text table, JSON, Markdown and a latency plot. Nothing here
// starts a process or opens a socket, so `make test` covers it.
//
// Targets are reported, never asserted: the benchmark does not fail on them.
package report

import (
	"math"
	"slices"
	"sort"
	"time"
)

// The paths a workload runs on. Direct is the baseline of every ratio.
// The first four carry bytes (L4); the last four parse HTTP (L7), each
// through a proxy on a third node.
const (
	Direct  = "direct"
	Mesh    = "mesh"
	Stunnel = "stunnel"
	HAProxy = "haproxy"
	// Waypoint: client pod → service VIP → ztunnel → waypoint (HBONE) →
	// ztunnel → server pod.
	Waypoint = "waypoint"
	// NginxMTLS: client → TLS with a client certificate → nginx → TLS with
	// a client certificate → stunnel → server: the waypoint's two mutual
	// TLS hops.
	NginxMTLS   = "nginx-mtls"
	Nginx       = "nginx"
	HAProxyHTTP = "haproxy-http"
)

// Paths lists the paths in the order tables show them.
var Paths = []string{Direct, Mesh, Stunnel, HAProxy, Waypoint, NginxMTLS, Nginx, HAProxyHTTP}

// L7Paths are the paths through an HTTP proxy.
var L7Paths = []string{Waypoint, NginxMTLS, Nginx, HAProxyHTTP}

// Comparisons are the pairs the figures carry (path / against), besides
// every path against direct: the mesh against the L4 proxies, the
// waypoint against the mesh and the L7 proxies.
var Comparisons = [][2]string{
	{Mesh, Stunnel}, {Mesh, HAProxy},
	{Waypoint, Mesh}, {Waypoint, NginxMTLS}, {Waypoint, Nginx}, {Waypoint, HAProxyHTTP},
}

// Better says which way a metric improves.
type Better string

const (
	Lower  Better = "lower"
	Higher Better = "higher"
)

// Metric names one figure a workload yields.
type Metric struct {
	Key    string `json:"key"`   // e.g. "lat1k.p99"
	Label  string `json:"label"` // e.g. "1 kB @ 1000 req/s, p99"
	Unit   string `json:"unit"`  // e.g. "ms"
	Better Better `json:"better"`
	// Added: the table also shows path − direct (latencies).
	Added bool `json:"added,omitempty"`
	// Only: the metric exists on these paths alone (e.g. ztunnel CPU).
	Only []string `json:"only,omitempty"`
}

// on reports whether the metric is shown for path.
func (m Metric) on(path string) bool { return len(m.Only) == 0 || slices.Contains(m.Only, path) }

// Sample is one run of one workload on one path.
type Sample struct {
	Rep      int                `json:"rep"`
	Workload string             `json:"workload"`
	Path     string             `json:"path"`
	Start    time.Time          `json:"start"`
	Seconds  float64            `json:"seconds"`
	Values   map[string]float64 `json:"values"`
	Errors   int                `json:"errors,omitempty"` // failed requests/streams
	Note     string             `json:"note,omitempty"`
	// Latency is the percentile curve of a fixed-rate run (percent -> ms).
	Latency []Point `json:"latency,omitempty"`
}

// Point is one point of a latency percentile curve.
type Point struct {
	Percentile float64 `json:"percentile"`
	Ms         float64 `json:"ms"`
}

// Stat is a figure over repetitions.
type Stat struct {
	Median float64 `json:"median"`
	Min    float64 `json:"min"`
	Max    float64 `json:"max"`
	N      int     `json:"n"`
}

// Summarize returns the median, min and max of the finite values; N = 0
// (and zeros, which JSON can carry where NaN cannot) when there are none.
func Summarize(vs []float64) Stat {
	var xs []float64
	for _, v := range vs {
		if !math.IsNaN(v) && !math.IsInf(v, 0) {
			xs = append(xs, v)
		}
	}
	if len(xs) == 0 {
		return Stat{}
	}
	sort.Float64s(xs)
	return Stat{Median: Quantile(xs, 0.5), Min: xs[0], Max: xs[len(xs)-1], N: len(xs)}
}

// Valid reports whether the stat holds at least one value.
func (s Stat) Valid() bool { return s.N > 0 }

// Spread is (max − min) / median, the relative width of the values.
func (s Stat) Spread() float64 {
	if !s.Valid() || s.Median == 0 {
		return math.NaN()
	}
	return (s.Max - s.Min) / math.Abs(s.Median)
}

// Quantile is the q-quantile (0..1) of sorted xs, interpolating linearly
// between the two nearest ranks (type 7, as R and numpy do by default).
func Quantile(sorted []float64, q float64) float64 {
	n := len(sorted)
	switch {
	case n == 0:
		return math.NaN()
	case n == 1 || q <= 0:
		return sorted[0]
	case q >= 1:
		return sorted[n-1]
	}
	h := q * float64(n-1)
	lo := math.Floor(h)
	return sorted[int(lo)] + (h-lo)*(sorted[int(lo)+1]-sorted[int(lo)])
}

// Pair is a comparison of one path with another, computed per repetition.
type Pair struct {
	Path    string `json:"path"`
	Against string `json:"against"`
	Ratio   Stat   `json:"ratio"`           // path / against
	Delta   *Stat  `json:"delta,omitempty"` // path − against, for Added metrics
}

// Figure is one metric summarised on every path.
type Figure struct {
	Workload string          `json:"workload"`
	Metric   Metric          `json:"metric"`
	Paths    map[string]Stat `json:"paths"`
	// Ratios of every path against direct, and the Comparisons.
	Pairs []Pair `json:"pairs"`
}

// Stat returns the figure's stat on path (N = 0 when absent).
func (f Figure) Stat(path string) Stat {
	return f.Paths[path]
}

// Pair returns the comparison of path against another, if computed.
func (f Figure) Pair(path, against string) (Pair, bool) {
	for _, p := range f.Pairs {
		if p.Path == path && p.Against == against {
			return p, true
		}
	}
	return Pair{}, false
}

// Aggregate turns samples into figures, for the given metrics of each
// workload, in that order. Ratios and deltas pair the samples of one
// repetition.
func Aggregate(samples []Sample, workloads []Workload) []Figure {
	// workload -> metric -> path -> rep -> value
	vals := map[string]map[string]map[string]map[int]float64{}
	for _, s := range samples {
		for k, v := range s.Values {
			m := vals[s.Workload]
			if m == nil {
				m = map[string]map[string]map[int]float64{}
				vals[s.Workload] = m
			}
			if m[k] == nil {
				m[k] = map[string]map[int]float64{}
			}
			if m[k][s.Path] == nil {
				m[k][s.Path] = map[int]float64{}
			}
			m[k][s.Path][s.Rep] = v
		}
	}
	var out []Figure
	for _, w := range workloads {
		for _, m := range w.Metrics {
			byPath := vals[w.Name][m.Key]
			if len(byPath) == 0 {
				continue
			}
			f := Figure{Workload: w.Name, Metric: m, Paths: map[string]Stat{}}
			for _, p := range Paths {
				if reps, ok := byPath[p]; ok && m.on(p) {
					f.Paths[p] = Summarize(values(reps))
				}
			}
			pair := func(path, against string) {
				if !m.on(path) || !m.on(against) {
					return
				}
				a, b := byPath[path], byPath[against]
				if a == nil || b == nil {
					return
				}
				var ratios, deltas []float64
				for _, rep := range sortedKeys(a) {
					y, ok := b[rep]
					if !ok {
						continue
					}
					x := a[rep]
					if y != 0 {
						ratios = append(ratios, x/y)
					}
					deltas = append(deltas, x-y)
				}
				p := Pair{Path: path, Against: against, Ratio: Summarize(ratios)}
				if m.Added {
					d := Summarize(deltas)
					p.Delta = &d
				}
				f.Pairs = append(f.Pairs, p)
			}
			for _, p := range Paths {
				if p != Direct {
					pair(p, Direct)
				}
			}
			for _, c := range Comparisons {
				pair(c[0], c[1])
			}
			out = append(out, f)
		}
	}
	return out
}

func values(m map[int]float64) []float64 {
	out := make([]float64, 0, len(m))
	for _, k := range sortedKeys(m) {
		out = append(out, m[k])
	}
	return out
}

func sortedKeys(m map[int]float64) []int {
	keys := make([]int, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// MedianCurve is the per-percentile median of several latency curves of
// one path (curves with the same percentiles, as fortio reports them).
func MedianCurve(curves [][]Point) []Point {
	byP := map[float64][]float64{}
	for _, c := range curves {
		for _, p := range c {
			byP[p.Percentile] = append(byP[p.Percentile], p.Ms)
		}
	}
	var out []Point
	for p, ms := range byP {
		out = append(out, Point{Percentile: p, Ms: Summarize(ms).Median})
	}
	slices.SortFunc(out, func(a, b Point) int {
		switch {
		case a.Percentile < b.Percentile:
			return -1
		case a.Percentile > b.Percentile:
			return 1
		}
		return 0
	})
	return out
}
