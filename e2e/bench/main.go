// Command bench is `make bench`: zmesh's L4 mesh and its waypoint measured
// against direct traffic and against what users would deploy instead, in
// one run.
//
// It builds a three-node topology in network namespaces (the demo's and
// the e2e suite's: an underlay bridge in its own namespace, node host
// namespaces routing each other's pod ranges, pods behind their node's
// pod bridge made by the node's CNI chain, where zmesh-cni-agent chains
// zmesh-cni and captures the ambient ones, a ztunnel process per meshed
// node fed by zmeshd over delta xDS, the waypoint's pod on the third)
// and runs every workload on its paths, interleaved, several times: direct
// pod → pod; mesh (both pods ambient); stunnel (client on node A, server on
// node B, mutual TLS 1.3); haproxy (TCP mode, one hop); waypoint (a
// service bound to a waypoint: ztunnel → waypoint → ztunnel); nginx with
// mutual TLS on both sides, nginx and haproxy in HTTP mode on the third
// node. The workloads are fortio (fixed-rate latency, max req/s over
// HTTP/1.1 and HTTP/2, gRPC at a fixed rate, new connections) and iperf3
// (bulk, 1 and 8 streams); proxies' CPU and memory come from /proc,
// ztunnel's state's memory from another ztunnel fed 10 000 workloads, the
// waypoint's config cost from 1 000 services × 5 routes bound to it. It
// prints a table with the targets beside the figures (reported, never
// asserted) and writes JSON, Markdown and a latency plot under -out.
//
// It needs root, fortio and iperf3, stunnel4, haproxy and nginx
// (`ZMESH_BENCH=1 .ci/deps.sh` installs them). The topology's traffic stays
// inside namespaces it creates; its processes talk to each other on
// 127.0.0.1; it removes everything when it ends.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/zmesh/zmesh/e2e/bench/report"
	"github.com/zmesh/zmesh/e2e/noderunner"
	"github.com/zmesh/zmesh/e2e/proc"
)

func main() {
	var (
		bin      = flag.String("bin", "bin", "directory holding zmeshd and ztunnel")
		fortio   = flag.String("fortio", "fortio", "the fortio binary")
		out      = flag.String("out", "e2e/bench/results", "directory for the JSON, Markdown and plot")
		quick    = flag.Bool("quick", false, "fewer repetitions, shorter runs (about 3 minutes)")
		reps     = flag.Int("reps", 0, "repetitions (default 3, quick 2)")
		only     = flag.String("workloads", "", "comma-separated workloads to run (default all: lat1k,maxrps,h2max,grpc,bulk1,bulk8,newconn)")
		paths    = flag.String("paths", "", "comma-separated paths (default all: direct,mesh,stunnel,haproxy,waypoint,nginx-mtls,nginx,haproxy-http)")
		noMem    = flag.Bool("no-memory", false, "skip the memory measurements (idle connections, ztunnel state, waypoint config scale)")
		profile  = flag.String("profile", "", "comma-separated workloads whose first mesh run is profiled (pprof CPU + allocs of both ztunnels; and the heap of the memory measurement)")
		profDir  = flag.String("profile-dir", "", "where profiles go (default <out>/profiles-<stamp>)")
		duration = flag.Duration("lat-duration", 0, "duration of each fixed-rate run (default 30s, quick 3s)")
		render   = flag.String("render", "", "re-render a results JSON (table, Markdown, plot) with this build's report code, run nothing")
	)
	flag.Parse()
	if *render != "" {
		if err := rerender(*render, os.Stdout); err != nil {
			fmt.Fprintln(os.Stderr, "bench:", err)
			os.Exit(1)
		}
		return
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	p := fullPlan()
	if *quick {
		p = quickPlan()
	}
	if *reps > 0 {
		p.reps = *reps
	}
	if *duration > 0 {
		p.lat = *duration
	}
	p.profile = splitList(*profile)
	o := options{bin: *bin, fortio: *fortio, out: *out, quick: *quick, memory: !*noMem, profileDir: *profDir}
	o.workloads = splitList(*only)
	o.paths = splitList(*paths)
	if err := run(ctx, p, o, os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "bench failed:", err)
		os.Exit(1)
	}
}

type options struct {
	bin, fortio, out string
	quick, memory    bool
	workloads, paths []string
	profileDir       string
}

func splitList(s string) []string {
	if s == "" {
		return nil
	}
	return strings.Split(s, ",")
}

func run(ctx context.Context, p plan, o options, stdout, progress io.Writer) (err error) {
	if os.Geteuid() != 0 {
		return errors.New("the bench creates network namespaces and loads eBPF: it needs root")
	}
	fortio, err := exec.LookPath(o.fortio)
	if err != nil {
		return fmt.Errorf("fortio: %w (ZMESH_BENCH=1 .ci/deps.sh installs it)", err)
	}
	for _, tool := range []string{"iperf3", "stunnel4", "haproxy", "nginx", "ip"} {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Errorf("%s: %w (ZMESH_BENCH=1 .ci/deps.sh installs it)", tool, err)
		}
	}
	for _, p := range []string{"bridge", "host-local"} {
		if _, err := os.Stat(filepath.Join(noderunner.DebianCNI, p)); err != nil {
			return fmt.Errorf("the nodes' pod network uses the CNI plugin %s: %w (.ci/deps.sh installs containernetworking-plugins)", p, err)
		}
	}
	bin, err := filepath.Abs(o.bin)
	if err != nil {
		return err
	}
	for _, b := range []string{"zmeshd", "ztunnel", "waypoint", "zmesh-cni-agent", "zmesh-cni"} {
		if _, err := os.Stat(filepath.Join(bin, b)); err != nil {
			return fmt.Errorf("-bin %s: %w (make bench builds it)", o.bin, err)
		}
	}
	started := time.Now()
	host, _ := os.Hostname()
	stamp := started.Format("2006-01-02-1504") + "-" + host
	if o.quick {
		stamp += "-quick"
	}
	if len(p.profile) > 0 {
		p.profileDir = o.profileDir
		if p.profileDir == "" {
			p.profileDir = filepath.Join(o.out, "profiles-"+stamp)
		}
	}
	meta := report.Meta{Date: started, Host: host, Kernel: kernel(), GoVersion: runtime.Version(), CPUs: runtime.NumCPU(),
		Quick: o.quick, Reps: p.reps, Rate: p.rate, Conns: p.maxConns, LoadBefore: loadAvg(),
		Durations: map[string]string{report.Lat1k: p.lat.String(), report.MaxRPS: p.maxRPS.String(), report.H2Max: p.maxRPS.String(), report.GRPC: p.grpc.String(),
			"bulk": p.bulk.String(), report.NewConn: p.newConn.String()},
		Tools: map[string]string{"fortio": toolVersion(fortio, "version"), "iperf3": toolVersion("iperf3", "--version"), "stunnel": toolVersion("stunnel4", "-version"),
			"haproxy": toolVersion("haproxy", "-v"), "nginx": toolVersion("nginx", "-v")},
	}

	tmp, err := os.MkdirTemp("", "zmesh-bench-")
	if err != nil {
		return err
	}
	if os.Getenv("ZMESH_BENCH_KEEP") == "" {
		defer os.RemoveAll(tmp)
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError}))
	slog.SetDefault(log)
	fmt.Fprintf(progress, "bench: setting up three nodes with their pod bridges, six pods, zmeshd, two agents and ztunnels, a waypoint, stunnel, haproxy and nginx (work dir %s)\n", tmp)
	e, err := setup(ctx, bin, tmp, log)
	if err != nil {
		return err
	}
	defer func() {
		if left := e.Close(); len(left) > 0 {
			lerr := fmt.Errorf("cleanup left %d things behind:\n  %s", len(left), strings.Join(left, "\n  "))
			fmt.Fprintln(progress, "bench:", lerr)
			err = errors.Join(err, lerr)
		}
	}()
	allPaths, err := e.startPeers(ctx, fortio)
	if err != nil {
		return err
	}
	var ps []*path
	for _, x := range allPaths {
		if len(o.paths) == 0 || slices.Contains(o.paths, x.name) {
			ps = append(ps, x)
		}
	}
	wls := report.Workloads(p.rate, p.maxConns)
	var order []string
	for _, w := range wls {
		if len(o.workloads) == 0 || slices.Contains(o.workloads, w.Name) {
			order = append(order, w.Name)
		}
	}
	if len(ps) == 0 || len(order) == 0 {
		return errors.New("no path or no workload selected")
	}
	mesh := e.zts[1]
	openedBefore := connectionsOpened(ctx, mesh)
	wpBefore, err := e.wp.requests(ctx)
	if err != nil {
		return fmt.Errorf("waypoint metrics: %w", err)
	}

	r := &runner{plan: p, fortio: fortio, tmp: tmp, pki: e.pkiDir}
	// Each workload runs on the paths that carry it (no iperf through an
	// HTTP proxy, no gRPC through a byte pipe on its own port).
	on := map[string][]*path{}
	var total time.Duration
	steps, step := 0, 0
	for _, w := range order {
		for _, x := range ps {
			if x.runs(w) {
				on[w] = append(on[w], x)
			}
		}
		total += p.duration(w) * time.Duration(len(on[w]))
		steps += p.reps * len(on[w])
	}
	total *= time.Duration(p.reps)
	var samples []report.Sample
	loopStart := time.Now()
	for rep := 1; rep <= p.reps; rep++ {
		for _, w := range order {
			// Each repetition starts the paths at another place, so no path
			// always runs first (or right after the heaviest one).
			wps := on[w]
			for i := range wps {
				pt := wps[(i+rep-1)%len(wps)]
				step++
				el := time.Since(loopStart)
				left := max(0, total-el)
				fmt.Fprintf(progress, "[%3d/%d] rep %d/%d  %-8s %-12s  elapsed %s, about %s left\n", step, steps, rep, p.reps, w, pt.name, el.Round(time.Second), left.Round(time.Second))
				if err := ctx.Err(); err != nil {
					return err
				}
				s, err := r.run(ctx, w, pt, rep)
				if err != nil {
					fmt.Fprintf(progress, "          %s on %s failed: %v\n", w, pt.name, err)
					meta.Notes = append(meta.Notes, fmt.Sprintf("rep %d %s on %s failed: %v", rep, w, pt.name, err))
					continue
				}
				if s.Errors > 0 {
					meta.Notes = append(meta.Notes, fmt.Sprintf("rep %d %s on %s: %d failed requests", rep, w, pt.name, s.Errors))
				}
				samples = append(samples, s)
			}
		}
	}
	if slices.ContainsFunc(ps, func(x *path) bool { return x.name == report.Mesh }) {
		// The mesh path must have gone through the server's ztunnel.
		if opened := connectionsOpened(ctx, mesh); opened <= openedBefore {
			return fmt.Errorf("the server ztunnel counted no inbound connection (%v -> %v): the mesh path was not captured", openedBefore, opened)
		} else {
			meta.Notes = append(meta.Notes, fmt.Sprintf("server ztunnel counted %.0f inbound connections during the runs (the mesh path was captured)", opened-openedBefore))
		}
	}

	if slices.ContainsFunc(ps, func(x *path) bool { return x.name == report.Waypoint }) {
		// The waypoint path must have gone through the waypoint.
		if after, err := e.wp.requests(ctx); err != nil || after <= wpBefore {
			return fmt.Errorf("the waypoint counted no request during the runs (%v -> %v, %v): the waypoint path did not cross it", wpBefore, after, err)
		} else {
			meta.Notes = append(meta.Notes, fmt.Sprintf("the waypoint counted %.0f requests during the runs (the waypoint path crossed it)", after-wpBefore))
		}
	}

	var idle *report.Idle
	if o.memory && slices.ContainsFunc(ps, func(x *path) bool { return x.name == report.Mesh }) {
		fmt.Fprintf(progress, "[idle] %d connections through the mesh, one request each, then quiet\n", p.idleConns)
		if idle, err = e.measureIdle(ctx, p.idleConns); err != nil {
			fmt.Fprintf(progress, "          idle connection measurement failed: %v\n", err)
			meta.Notes = append(meta.Notes, "idle connection measurement failed: "+err.Error())
			idle = nil
		}
	}
	var wpScale *report.WaypointScale
	if o.memory {
		fmt.Fprintf(progress, "[waypoint] %d services × %d routes bound to the waypoint\n", p.wpServices, p.wpRoutes)
		if wpScale, err = e.measureWaypointScale(ctx, p.wpServices, p.wpRoutes); err != nil {
			fmt.Fprintf(progress, "          waypoint config scale measurement failed: %v\n", err)
			meta.Notes = append(meta.Notes, "waypoint config scale measurement failed: "+err.Error())
			wpScale = nil
		}
	}
	var mem *report.Memory
	if o.memory {
		fmt.Fprintf(progress, "[memory] another ztunnel with no pods: idle, then %d workloads and %d services from zmeshd\n", p.scaleWorkloads, p.scaleServices)
		if mem, err = e.measureMemory(ctx, p.scaleWorkloads, p.scaleServices, p.profileDir); err != nil {
			fmt.Fprintf(progress, "          memory measurement failed: %v\n", err)
			meta.Notes = append(meta.Notes, "memory measurement failed: "+err.Error())
			mem = nil
		}
	}
	meta.LoadAfter = loadAvg()
	meta.Elapsed = time.Since(started).Seconds()
	if p.profileDir != "" {
		meta.Notes = append(meta.Notes, "profiles of the first mesh run of "+strings.Join(p.profile, ", ")+": "+p.profileDir)
	}

	rep := report.Build(meta, wls, samples, mem)
	rep.Idle = idle
	rep.Waypoint = wpScale
	fmt.Fprintln(stdout)
	rep.Text(stdout)
	return writeOutputs(rep, o.out, stamp, stdout)
}

// writeOutputs writes <stamp>.json, <stamp>.md and <stamp>-latency.png
// and .svg under dir.
func writeOutputs(r *report.Report, dir, stamp string, stdout io.Writer) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	base := filepath.Join(dir, stamp)
	f, err := os.Create(base + ".json")
	if err != nil {
		return err
	}
	if err := r.WriteJSON(f); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	plotName := ""
	if len(r.Curves) > 0 {
		for _, ext := range []string{".svg", ".png"} {
			if err := r.Plot(base + "-latency" + ext); err != nil {
				return err
			}
		}
		plotName = stamp + "-latency.svg"
	}
	md, err := os.Create(base + ".md")
	if err != nil {
		return err
	}
	r.Markdown(md, plotName)
	if err := md.Close(); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "\nwrote %s.json, %s.md", base, base)
	if plotName != "" {
		fmt.Fprintf(stdout, ", %s-latency.svg and .png", base)
	}
	fmt.Fprintln(stdout)
	return nil
}

// rerender rebuilds a report from the samples of a results JSON and
// writes it back beside it (same stamp).
func rerender(file string, stdout io.Writer) error {
	old, err := report.ReadJSON(file)
	if err != nil {
		return err
	}
	r := report.Build(old.Meta, report.Workloads(old.Meta.Rate, old.Meta.Conns), old.Samples, old.Memory)
	r.Idle = old.Idle
	r.Waypoint = old.Waypoint
	r.Text(stdout)
	return writeOutputs(r, filepath.Dir(file), strings.TrimSuffix(filepath.Base(file), ".json"), stdout)
}

// connectionsOpened sums the ztunnel's istio_tcp_connections_opened_total.
func connectionsOpened(ctx context.Context, z *ztunnel) float64 {
	body, err := proc.HTTPGet(ctx, "http://"+z.metrics+"/metrics")
	if err != nil {
		return 0
	}
	var sum float64
	for line := range strings.SplitSeq(body, "\n") {
		if strings.HasPrefix(line, "istio_tcp_connections_opened_total{") {
			var v float64
			if _, err := fmt.Sscan(line[strings.LastIndexByte(line, ' ')+1:], &v); err == nil {
				sum += v
			}
		}
	}
	return sum
}

func loadAvg() [3]float64 {
	var l [3]float64
	b, err := os.ReadFile("/proc/loadavg")
	if err == nil {
		fmt.Sscan(string(b), &l[0], &l[1], &l[2])
	}
	return l
}

func kernel() string {
	b, err := os.ReadFile("/proc/sys/kernel/osrelease")
	if err != nil {
		return "?"
	}
	return strings.TrimSpace(string(b))
}

func toolVersion(bin string, args ...string) string {
	out, _ := exec.Command(bin, args...).CombinedOutput()
	for line := range strings.SplitSeq(string(out), "\n") {
		if line = strings.TrimSpace(line); line != "" {
			return line
		}
	}
	return "?"
}
