package main

import (
	"math"
	"net/netip"
	"os"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/zmesh/zmesh/controlplane/model"
	"github.com/zmesh/zmesh/controlplane/source/dir"
	"github.com/zmesh/zmesh/e2e/bench/report"
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
	gw, o, err := waypointDesired(netip.MustParseAddrPort("10.45.0.1:15010"))
	if err != nil {
		t.Fatal(err)
	}
	wy, err := waypointYAML(gw, o, waypointPod(o))
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, d+"/10-waypoint.yaml", wy)
	writeFile(t, d+"/91-waypoint-scale.yaml", waypointScaleYAML(20, 5))
	u, err := (&dir.Source{Dir: d}).Load()
	if err != nil {
		t.Fatal(err)
	}
	if len(u.Errors) > 0 {
		t.Fatalf("errors: %v", u.Errors)
	}
	if n := len(u.Snapshot.Pods); n != 1006 {
		t.Errorf("%d pods, want 1006 (1000 + 5 bench pods + the waypoint)", n)
	}
	// 200 of the ztunnel scale, echo, the waypoint's own, 20 bound to it.
	if n := len(u.Snapshot.Services); n != 222 {
		t.Errorf("%d services, want 222", n)
	}
	if n := len(u.Snapshot.Gateways); n != 1 {
		t.Errorf("%d gateways, want 1", n)
	}
	if n := len(u.Snapshot.VirtualServices); n != 20 {
		t.Errorf("%d virtual services, want 20", n)
	} else if r := len(u.Snapshot.VirtualServices[0].Spec.GetHttp()); r != 5 {
		t.Errorf("%d routes in a virtual service, want 5", r)
	}
	bound := 0
	for _, svc := range u.Snapshot.Services {
		if _, name, ok := model.UseWaypoint(svc.Labels, svc.Namespace); ok && name == waypointGateway {
			bound++
		}
	}
	if bound != 21 {
		t.Errorf("%d services bound to the waypoint, want 21 (echo and the 20 of the scale)", bound)
	}
	for _, p := range u.Snapshot.Pods {
		if p.Status.PodIP != waypointPodAddr.String() {
			continue
		}
		if p.Spec.NodeName != proxyNode || p.Spec.ServiceAccountName != waypointGateway || p.Labels["istio.io/dataplane-mode"] != "none" {
			t.Errorf("waypoint pod: node %q, service account %q, labels %v", p.Spec.NodeName, p.Spec.ServiceAccountName, p.Labels)
		}
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

// The waypoint runs with the deployer's args and its downward-API env
// resolved from the pod; the volumes' paths are overridden after them.
func TestWaypointCommandLine(t *testing.T) {
	_, o, err := waypointDesired(netip.MustParseAddrPort("10.45.0.1:15010"))
	if err != nil {
		t.Fatal(err)
	}
	pod := waypointPod(o)
	c := o.Deployment.Spec.Template.Spec.Containers[0]
	env, err := containerEnv(c, pod)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"POD_NAME=" + pod.Name, "POD_NAMESPACE=bench", "INSTANCE_IP=10.50.3.2", "SERVICE_ACCOUNT=waypoint", "NODE_NAME=node-3"} {
		if !slices.Contains(env, want) {
			t.Errorf("env %v lacks %s", env, want)
		}
	}
	args := containerArgs(c, "/w", "/ca/root.pem")
	if !slices.Contains(args, "--xds-address=10.45.0.1:15010") {
		t.Errorf("args %v lack the deployer's --xds-address", args)
	}
	// Go's flag package keeps the last value: the bench's paths must come
	// after the manifest's.
	last := func(prefix string) string {
		v := ""
		for _, a := range args {
			if strings.HasPrefix(a, prefix) {
				v = a
			}
		}
		return v
	}
	if last("--root-cert=") != "--root-cert=/ca/root.pem" || last("--token-file=") != "--token-file=/w/token" {
		t.Errorf("args %v: volumes not overridden last", args)
	}
	c.Env = append(c.Env, corev1.EnvVar{Name: "X", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.uid"}}})
	if _, err := containerEnv(c, pod); err == nil || !strings.Contains(err.Error(), "metadata.uid") {
		t.Errorf("an unresolved field: err %v", err)
	}
}

func TestSumMetric(t *testing.T) {
	body := `# TYPE istio_requests_total counter
istio_requests_total{response_code="200"} 12
istio_requests_total{response_code="503"} 3
istio_requests_total_other 100
istio_request_duration_milliseconds_count 9
`
	if got := sumMetric(body, "istio_requests_total"); got != 15 {
		t.Errorf("sumMetric = %g, want 15", got)
	}
}

func TestParseChildren(t *testing.T) {
	if got := parseChildren([]byte("123 456 \n")); !slices.Equal(got, []int{123, 456}) {
		t.Errorf("parseChildren = %v", got)
	}
	if got := parseChildren(nil); len(got) != 0 {
		t.Errorf("parseChildren(nil) = %v", got)
	}
}

// Byte-pipe workloads stay off the HTTP proxies, HTTP/2 and gRPC off the
// paths with no listener for them.
func TestPathRuns(t *testing.T) {
	any := netip.MustParseAddrPort("10.0.0.1:1")
	l4 := &path{name: report.Stunnel}
	l7 := &path{name: report.Nginx, l7: true, h2: any, grpc: any}
	mesh := &path{name: report.Mesh, h2: any, grpc: any}
	for _, c := range []struct {
		p    *path
		w    string
		want bool
	}{
		{l4, report.Lat1k, true}, {l4, report.Bulk8, true}, {l4, report.H2Max, false}, {l4, report.GRPC, false},
		{l7, report.Lat1k, true}, {l7, report.MaxRPS, true}, {l7, report.Bulk1, false}, {l7, report.NewConn, false}, {l7, report.H2Max, true}, {l7, report.GRPC, true},
		{mesh, report.Bulk1, true}, {mesh, report.GRPC, true},
	} {
		if got := c.p.runs(c.w); got != c.want {
			t.Errorf("%s runs %s = %v, want %v", c.p.name, c.w, got, c.want)
		}
	}
}

// nginx-mtls verifies its clients' certificates and presents its own to
// its upstream, verified against the CA; plain nginx has no TLS at all.
func TestNginxConf(t *testing.T) {
	m := nginxConf("/p", "/pki", true)
	for _, want := range []string{
		"ssl_verify_client on;", "ssl_client_certificate /pki/ca.pem;", "ssl_protocols TLSv1.3;",
		"proxy_pass https://app;", "proxy_ssl_certificate /pki/cert.pem;", "proxy_ssl_verify on;", "proxy_ssl_name bench-node;",
		"grpc_pass grpcs://grpcapp;", "grpc_ssl_certificate /pki/cert.pem;", "grpc_ssl_verify on;",
		"server 10.44.0.3:18443;", "server 10.44.0.3:18445;",
		"listen 10.44.0.4:38443 ssl;", "listen 10.44.0.4:38444 ssl http2;",
		"access_log off;", "keepalive 128;",
	} {
		if !strings.Contains(m, want) {
			t.Errorf("nginx-mtls conf lacks %q:\n%s", want, m)
		}
	}
	if got := strings.Count(m, "ssl_verify_client on;"); got != 3 {
		t.Errorf("%d listeners verify clients, want 3", got)
	}
	p := nginxConf("/p", "/pki", false)
	if strings.Contains(p, "ssl") {
		t.Errorf("plain nginx conf has TLS:\n%s", p)
	}
	for _, want := range []string{"server 10.50.2.3:8080;", "grpc_pass grpc://grpcapp;", "listen 10.44.0.4:38081 http2;"} {
		if !strings.Contains(p, want) {
			t.Errorf("nginx conf lacks %q:\n%s", want, p)
		}
	}
	h := haproxyHTTPConf()
	for _, want := range []string{"mode http", "bind 10.44.0.4:48081 proto h2", "server s 10.50.2.3:8079 proto h2", "http-reuse always"} {
		if !strings.Contains(h, want) {
			t.Errorf("haproxy conf lacks %q:\n%s", want, h)
		}
	}
}
