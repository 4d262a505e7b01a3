package main

import (
	"math"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/zmesh/zmesh/controlplane/source/dir"
)

// The bench's pure parts: what it reads of fortio, iperf3 and /proc, and
// the YAML it feeds zmeshd. The bench itself needs root and minutes, and
// is not part of `make test`.

func TestParseFortio(t *testing.T) {
	const out = `{"RunType":"HTTP","ActualQPS":998.7,"RetCodes":{"200":2990,"-1":6,"503":4},
	"DurationHistogram":{"Count":3000,"Percentiles":[{"Percentile":50,"Value":0.00042},{"Percentile":99.9,"Value":0.0031}]}}`
	r, err := parseFortio([]byte(out))
	if err != nil {
		t.Fatal(err)
	}
	if r.qps != 998.7 || r.ok != 2990 || r.errors != 10 {
		t.Errorf("qps %g ok %d errors %d", r.qps, r.ok, r.errors)
	}
	if math.Abs(r.percentiles[50]-0.42) > 1e-9 || math.Abs(r.percentiles[99.9]-3.1) > 1e-9 {
		t.Errorf("percentiles (ms) = %v", r.percentiles)
	}
	if _, err := parseFortio([]byte(`{"DurationHistogram":{"Count":0}}`)); err == nil {
		t.Error("an empty run parsed")
	}
	if _, err := parseFortio([]byte(`not json`)); err == nil {
		t.Error("garbage parsed")
	}
}

func TestParseIperf(t *testing.T) {
	g, n, err := parseIperf([]byte(`{"intervals":[{"sum":{"bytes":1e9}},{"sum":{"bytes":1.2e9}}],
	"end":{"sum_sent":{"bits_per_second":9e9},"sum_received":{"bytes":2e9,"bits_per_second":8.5e9}}}`))
	if err != nil || g != 8.5 || n != 2.2e9 {
		t.Errorf("parseIperf = %g Gbit/s, %g bytes, %v; want 8.5 received, 2.2e9 bytes with the omitted interval", g, n, err)
	}
	if _, _, err := parseIperf([]byte(`{"error":"unable to connect to server: Connection refused"}`)); err == nil || !strings.Contains(err.Error(), "refused") {
		t.Errorf("iperf3's error not reported: %v", err)
	}
	if _, _, err := parseIperf(nil); err == nil {
		t.Error("no output parsed")
	}
}

func TestParseStatCPU(t *testing.T) {
	// A command name with a space and a parenthesis; utime 250, stime 150.
	stat := "4242 (zt (x) 1) S 1 4242 4242 0 -1 4194560 1000 0 0 0 250 150 0 0 20 0 12 0 100 200000000 5000"
	got, err := parseStatCPU([]byte(stat))
	if err != nil || got != 4 {
		t.Errorf("parseStatCPU = %g, %v; want 4 s", got, err)
	}
	if _, err := parseStatCPU([]byte("4242 (short) S 1")); err == nil {
		t.Error("a short stat line parsed")
	}
}

func TestParseStatus(t *testing.T) {
	status := "Name:\tztunnel\nVmPeak:\t 1300000 kB\nVmHWM:\t   25160 kB\nVmRSS:\t   24000 kB\nThreads:\t12\n"
	if v, err := parseStatusField([]byte(status), "VmHWM"); err != nil || v != 25160*1024 {
		t.Errorf("VmHWM = %g, %v", v, err)
	}
	if _, err := parseStatusField([]byte(status), "VmSwap"); err == nil {
		t.Error("a missing field parsed")
	}
	io := "rchar: 100\nwchar: 200\nsyscr: 7\nsyscw: 35\nread_bytes: 0\n"
	if r, err := parseIOField([]byte(io), "syscr"); err != nil || r != 7 {
		t.Errorf("syscr = %g, %v", r, err)
	}
	heap := "heap profile: 1: 2 [3: 4] @ heap/1048576\n# runtime.MemStats\n# Alloc = 1517000\n# HeapAlloc = 1517000\n# HeapInuse = 2000000\n"
	if v, err := parseMemStatsLine([]byte(heap), "HeapAlloc"); err != nil || v != 1517000 {
		t.Errorf("HeapAlloc = %g, %v", v, err)
	}
}

// The YAML the bench gives zmeshd loads in its directory source, with
// every pod and service.
func TestYAMLLoads(t *testing.T) {
	d := t.TempDir()
	writeFile(t, d+"/00-bench.yaml", meshYAML())
	writeFile(t, d+"/90-scale.yaml", scaleYAML(1000, 200))
	u, err := (&dir.Source{Dir: d}).Load()
	if err != nil {
		t.Fatal(err)
	}
	if len(u.Errors) > 0 {
		t.Fatalf("errors: %v", u.Errors)
	}
	if n := len(u.Snapshot.Pods); n != 1004 {
		t.Errorf("%d pods, want 1004", n)
	}
	if n := len(u.Snapshot.Services); n != 200 {
		t.Errorf("%d services, want 200", n)
	}
	ips := map[string]bool{}
	for _, p := range u.Snapshot.Pods {
		if ips[p.Status.PodIP] {
			t.Fatalf("pod IP %s given twice", p.Status.PodIP)
		}
		ips[p.Status.PodIP] = true
	}
}

func writeFile(t *testing.T, name, s string) {
	t.Helper()
	if err := os.WriteFile(name, []byte(s), 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestSampleAnonPeak(t *testing.T) {
	stop := sampleAnonPeak([]int{os.Getpid(), -1})
	ballast := make([]byte, 32<<20)
	for i := range ballast { // touch it: private memory
		ballast[i] = byte(i)
	}
	time.Sleep(250 * time.Millisecond)
	peaks := stop()
	if peaks[0] < 32<<20 {
		t.Errorf("peak RssAnon of this process %g bytes, want at least the 32 MiB it touched", peaks[0])
	}
	if peaks[1] != 0 {
		t.Errorf("a pid that does not exist has peak %g", peaks[1])
	}
	runtime.KeepAlive(ballast)
}
