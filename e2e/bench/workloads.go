package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/zmesh/zmesh/e2e/bench/report"
)

// plan is how long and how hard each workload runs.
type plan struct {
	reps                          int
	rate, latConns, maxConns      int
	lat, maxRPS, bulk, newConn    time.Duration
	grpc                          time.Duration // the fixed-rate gRPC run
	newConnConns                  int
	profile                       []string // workloads whose first mesh run is profiled
	profileDir                    string
	scaleWorkloads, scaleServices int
	idleConns                     int // connections held open for the idle figure
	wpServices, wpRoutes          int // the waypoint's config scale: services bound, routes each
}

func fullPlan() plan {
	return plan{reps: 3, rate: 1000, latConns: 10, maxConns: 64, lat: 30 * time.Second, maxRPS: 10 * time.Second, bulk: 10 * time.Second,
		newConn: 5 * time.Second, newConnConns: 16, grpc: 10 * time.Second, scaleWorkloads: 10000, scaleServices: 2000, idleConns: 2000,
		wpServices: 1000, wpRoutes: 5}
}

func quickPlan() plan {
	return plan{reps: 2, rate: 1000, latConns: 10, maxConns: 64, lat: 3 * time.Second, maxRPS: 2 * time.Second, bulk: 2 * time.Second,
		newConn: 2 * time.Second, newConnConns: 16, grpc: 2 * time.Second, scaleWorkloads: 10000, scaleServices: 2000, idleConns: 1000,
		wpServices: 1000, wpRoutes: 5}
}

// duration is how long one run of the workload takes, for progress.
func (p plan) duration(w string) time.Duration {
	overhead := time.Second
	switch w {
	case report.Lat1k:
		return p.lat + overhead
	case report.MaxRPS, report.H2Max:
		return p.maxRPS + overhead
	case report.GRPC:
		return p.grpc + overhead
	case report.Bulk1, report.Bulk8:
		return p.bulk + overhead
	case report.NewConn:
		return p.newConn + overhead
	}
	return overhead
}

// runner runs workloads on paths.
type runner struct {
	plan   plan
	fortio string
	tmp    string
	pki    string // the CA and client certificate of the TLS paths
	seq    int
}

// run runs one workload once on one path and returns its sample.
func (r *runner) run(ctx context.Context, w string, p *path, rep int) (report.Sample, error) {
	s := report.Sample{Rep: rep, Workload: w, Path: p.name, Start: time.Now(), Values: map[string]float64{}}
	// nginx's work is done by its workers, the master's children.
	pids := withChildren(p.proxies)
	before, sysBefore := cpuOfPids(pids), syscallsOfPids(pids)
	zts := p.name == report.Mesh && len(p.ztunnels) == 2 // the ztunnels' own figures
	for _, z := range p.ztunnels {
		resetPeakRSS(z.Pid())
	}
	var prof *profiler
	if slices.Contains(r.plan.profile, w) && p.name == report.Mesh && r.plan.profileDir != "" && rep == 1 {
		prof = startProfiles(ctx, r.plan.profileDir, w, p.ztunnels, r.seconds(w))
	}
	var anonPeaks func() []float64
	if len(pids) > 0 && w != report.Bulk1 && w != report.Bulk8 && w != report.NewConn {
		anonPeaks = sampleAnonPeak(pids)
	}
	var wpBefore float64
	if p.wp != nil {
		wpBefore = cpuOfPids([]int{p.wp.Pid()})[0]
	}
	var requests, bytes float64
	var err error
	switch w {
	case report.Lat1k:
		requests, err = r.fortio_(ctx, p, &s, r.plan.rate, r.plan.latConns, r.plan.lat, r.url(p, p.http), "-payload-size", "1024")
	case report.MaxRPS:
		requests, err = r.fortio_(ctx, p, &s, 0, r.plan.maxConns, r.plan.maxRPS, r.url(p, p.http), "-payload-size", "1024")
	case report.H2Max:
		requests, err = r.fortio_(ctx, p, &s, 0, r.plan.maxConns, r.plan.maxRPS, r.url(p, p.h2), "-payload-size", "1024", "-h2")
	case report.GRPC:
		// fortio's gRPC client speaks TLS when given a CA (-cacert).
		requests, err = r.fortio_(ctx, p, &s, r.plan.rate, r.plan.latConns, r.plan.grpc, p.grpc.String(), "-grpc", "-ping")
	case report.NewConn:
		requests, err = r.fortio_(ctx, p, &s, 0, r.plan.newConnConns, r.plan.newConn, r.url(p, p.http), "-keepalive=false")
		if err == nil {
			s.Values[report.KeyConnPS] = s.Values[report.KeyQPS]
			delete(s.Values, report.KeyQPS)
		}
	case report.Bulk1:
		bytes, err = r.iperf(ctx, p, &s, 1)
	case report.Bulk8:
		bytes, err = r.iperf(ctx, p, &s, 8)
	default:
		err = fmt.Errorf("unknown workload %q", w)
	}
	s.Seconds = time.Since(s.Start).Seconds()
	if anonPeaks != nil {
		peaks := anonPeaks()
		var sum float64
		for i, pid := range pids {
			sum += peaks[i]
			switch {
			case zts && w == report.Lat1k && pid == p.ztunnels[0].Pid():
				s.Values[report.KeyZt1AnonPeak] = peaks[i] / 1e6
			case zts && w == report.Lat1k && pid == p.ztunnels[1].Pid():
				s.Values[report.KeyZt2AnonPeak] = peaks[i] / 1e6
			case p.wp != nil && pid == p.wp.Pid():
				s.Values[report.KeyWpAnonPeak] = peaks[i] / 1e6
			}
		}
		s.Values[report.KeyProxyAnonPeak] = sum / 1e6
	}
	if prof != nil {
		if perr := prof.wait(); perr != nil {
			s.Note = "profile: " + perr.Error()
		}
	}
	if err != nil {
		return s, err
	}
	after, sysAfter := cpuOfPids(pids), syscallsOfPids(pids)
	var calls float64
	for i := range sysBefore {
		calls += sysAfter[i] - sysBefore[i]
	}
	var cpu float64
	for i := range before {
		cpu += after[i] - before[i]
	}
	if bytes > 0 && len(p.proxies) > 0 {
		s.Values[report.KeySyscallsPerMB] = calls / (bytes / 1e6)
		s.Values[report.KeyCPUPerGB] = cpu / (bytes / 1e9)
	}
	if requests > 0 && len(p.proxies) > 0 {
		s.Values[report.KeySyscallsPerReq] = calls / requests
	}
	if requests > 0 && p.wp != nil {
		s.Values[report.KeyWpCPU] = (cpuOfPids([]int{p.wp.Pid()})[0] - wpBefore) / (requests / 1000)
	}
	if requests > 0 && len(p.proxies) > 0 {
		s.Values[report.KeyProxyCPU] = cpu / (requests / 1000)
		if zts && w == report.Lat1k {
			s.Values[report.KeyZt1CPU] = (after[0] - before[0]) / (requests / 1000)
			s.Values[report.KeyZt2CPU] = (after[1] - before[1]) / (requests / 1000)
			s.Values[report.KeyZt1HWM] = peakRSS(p.ztunnels[0].Pid()) / 1e6
			s.Values[report.KeyZt2HWM] = peakRSS(p.ztunnels[1].Pid()) / 1e6
			s.Values[report.KeyZt1Anon] = statusBytes(p.ztunnels[0].Pid(), "RssAnon") / 1e6
			s.Values[report.KeyZt2Anon] = statusBytes(p.ztunnels[1].Pid(), "RssAnon") / 1e6
		}
	}
	return s, nil
}

func (r *runner) seconds(w string) int {
	d := r.plan.duration(w) - time.Second
	if d < time.Second {
		d = time.Second
	}
	return int(d / time.Second)
}

func (r *runner) nextFile(ext string) string {
	r.seq++
	return filepath.Join(r.tmp, fmt.Sprintf("run-%04d.%s", r.seq, ext))
}

// url is the fortio target of an HTTP workload on the path.
func (r *runner) url(p *path, at netip.AddrPort) string {
	if p.tls {
		return "https://" + at.String() + "/echo"
	}
	return "http://" + at.String() + "/echo"
}

// fortio_ runs `fortio load` against target from the path's client pod
// and fills the sample; it returns how many requests were made.
func (r *runner) fortio_(ctx context.Context, p *path, s *report.Sample, qps, conns int, d time.Duration, target string, extra ...string) (float64, error) {
	out := r.nextFile("json")
	var ps []string
	for _, pc := range report.LatencyPercentiles {
		ps = append(ps, strconv.FormatFloat(pc, 'g', -1, 64))
	}
	args := []string{"netns", "exec", p.client.Name, r.fortio, "load", "-quiet", "-json", out,
		"-qps", strconv.Itoa(qps), "-c", strconv.Itoa(conns), "-t", d.String(), "-p", strings.Join(ps, ","), "-timeout", "5s"}
	if p.tls {
		args = append(args, "-cacert", filepath.Join(r.pki, "ca.pem"), "-cert", filepath.Join(r.pki, "cert.pem"), "-key", filepath.Join(r.pki, "key.pem"))
	}
	args = append(args, extra...)
	args = append(args, target)
	cctx, cancel := context.WithTimeout(ctx, d+60*time.Second)
	defer cancel()
	cmdOut, err := exec.CommandContext(cctx, "ip", args...).CombinedOutput()
	if err != nil {
		return 0, fmt.Errorf("fortio: %v: %s", err, tail(cmdOut))
	}
	b, err := os.ReadFile(out)
	if err != nil {
		return 0, err
	}
	os.Remove(out)
	res, err := parseFortio(b)
	if err != nil {
		return 0, err
	}
	s.Values[report.KeyQPS] = res.qps
	for pc, ms := range res.percentiles {
		s.Values[report.LatKey(pc)] = ms
		s.Latency = append(s.Latency, report.Point{Percentile: pc, Ms: ms})
	}
	s.Errors = res.errors
	if res.ok == 0 {
		return 0, fmt.Errorf("fortio: no successful request (%d errors)", res.errors)
	}
	return float64(res.ok + res.errors), nil
}

// iperf runs iperf3 with n parallel streams from the client pod and
// returns the bytes received.
func (r *runner) iperf(ctx context.Context, p *path, s *report.Sample, n int) (float64, error) {
	secs := int(r.plan.bulk / time.Second)
	args := []string{"netns", "exec", p.client.Name, "iperf3", "-J", "-c", p.iperf.Addr().String(), "-p", strconv.Itoa(int(p.iperf.Port())),
		"-t", strconv.Itoa(secs), "-P", strconv.Itoa(n)}
	if secs >= 5 {
		args = append(args, "-O", "1") // leave slow start out of the figure
	}
	cctx, cancel := context.WithTimeout(ctx, r.plan.bulk+60*time.Second)
	defer cancel()
	out, err := exec.CommandContext(cctx, "ip", args...).Output()
	gbps, bytes, perr := parseIperf(out)
	if perr != nil {
		if err != nil {
			return 0, fmt.Errorf("iperf3: %v: %v", err, perr)
		}
		return 0, perr
	}
	s.Values[report.KeyGbps] = gbps
	return bytes, nil
}

// fortioResult is what the bench reads of fortio's JSON.
type fortioResult struct {
	qps         float64
	ok, errors  int
	percentiles map[float64]float64 // percent -> ms
}

func parseFortio(b []byte) (fortioResult, error) {
	var v struct {
		ActualQPS         float64
		RetCodes          map[string]int
		DurationHistogram struct {
			Count       int
			Percentiles []struct {
				Percentile float64
				Value      float64 // seconds
			}
		}
	}
	if err := json.Unmarshal(b, &v); err != nil {
		return fortioResult{}, fmt.Errorf("fortio JSON: %w", err)
	}
	r := fortioResult{qps: v.ActualQPS, percentiles: map[float64]float64{}}
	for code, n := range v.RetCodes {
		// gRPC pings answer SERVING.
		if code == "200" || code == "SERVING" {
			r.ok += n
		} else {
			r.errors += n
		}
	}
	for _, p := range v.DurationHistogram.Percentiles {
		r.percentiles[p.Percentile] = p.Value * 1000
	}
	if v.DurationHistogram.Count == 0 {
		return r, errors.New("fortio JSON: no request measured")
	}
	return r, nil
}

// parseIperf returns the received throughput in Gbit/s of iperf3 -J, and
// the bytes received (with the omitted first second, which the proxies'
// counters see too).
func parseIperf(b []byte) (gbps, bytes float64, err error) {
	var v struct {
		Error     string `json:"error"`
		Intervals []struct {
			Sum struct {
				Bytes float64 `json:"bytes"`
			} `json:"sum"`
		} `json:"intervals"`
		End struct {
			SumReceived struct {
				Bytes         float64 `json:"bytes"`
				BitsPerSecond float64 `json:"bits_per_second"`
			} `json:"sum_received"`
		} `json:"end"`
	}
	if err := json.Unmarshal(b, &v); err != nil {
		return 0, 0, fmt.Errorf("iperf3 JSON: %w: %s", err, tail(b))
	}
	if v.Error != "" {
		return 0, 0, fmt.Errorf("iperf3: %s", v.Error)
	}
	if v.End.SumReceived.BitsPerSecond == 0 {
		return 0, 0, errors.New("iperf3: nothing received")
	}
	bytes = v.End.SumReceived.Bytes
	if sent := 0.0; len(v.Intervals) > 0 {
		for _, i := range v.Intervals {
			sent += i.Sum.Bytes
		}
		bytes = max(bytes, sent)
	}
	return v.End.SumReceived.BitsPerSecond / 1e9, bytes, nil
}

func tail(b []byte) string {
	if len(b) > 600 {
		b = b[len(b)-600:]
	}
	return strings.TrimSpace(string(b))
}

// profiler fetches CPU profiles from the ztunnels' admin endpoints during
// a run, and their allocation profiles before and after it.
type profiler struct {
	errc chan error
	n    int
}

func startProfiles(ctx context.Context, dir, w string, zts []*ztunnel, secs int) *profiler {
	pr := &profiler{errc: make(chan error, 2*len(zts))}
	os.MkdirAll(dir, 0o755)
	for _, z := range zts {
		pr.n++
		base := filepath.Join(dir, fmt.Sprintf("%s-%s", w, z.node))
		if err := fetchTo(ctx, "http://"+z.admin+"/debug/pprof/allocs", base+".allocs-before.pprof"); err != nil {
			pr.errc <- err
			continue
		}
		go func() {
			err := fetchTo(ctx, fmt.Sprintf("http://%s/debug/pprof/profile?seconds=%d", z.admin, secs), base+".cpu.pprof")
			if err == nil {
				err = fetchTo(ctx, "http://"+z.admin+"/debug/pprof/allocs", base+".allocs-after.pprof")
			}
			pr.errc <- err
		}()
	}
	return pr
}

func (pr *profiler) wait() error {
	var errs []error
	for range pr.n {
		errs = append(errs, <-pr.errc)
	}
	return errors.Join(errs...)
}

func fetchTo(ctx context.Context, url, file string) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	f, err := os.Create(file)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, resp.Body); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
