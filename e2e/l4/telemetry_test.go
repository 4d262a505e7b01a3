package l4

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/zmesh/zmesh/e2e/cluster"
)

// TestTelemetry: both ztunnels' /metrics and access logs name the source
// and destination workload, namespace and principal of the traffic sent.
func TestTelemetry(t *testing.T) {
	apply(t, "telemetry.yaml", "telem")
	pods := waitPods(t, "telem", 2)
	sleep, httpbin := pods["sleep"], pods["httpbin"]
	eventually(t, 15*time.Second, "sleep and httpbin captured", func() bool {
		return redirected(t, "telem", "sleep") && redirected(t, "telem", "httpbin")
	})
	ip := strings.TrimSpace(kubectl(t, "get", "service", "-n", "telem", "httpbin", "-o", "jsonpath={.spec.clusterIP}"))
	url := "http://" + netip.AddrPortFrom(netip.MustParseAddr(ip), 8000).String() + "/"
	eventually(t, 15*time.Second, "sleep -> httpbin service answering", func() bool {
		code, _, err := sleep.HTTPGet(t.Context(), url)
		return err == nil && code == 200
	})
	const n = 7
	for i := range n {
		code, body, err := sleep.HTTPGet(t.Context(), url)
		if err != nil || code != 200 {
			t.Fatalf("request %d: %d %v", i, code, err)
		}
		if i == 0 {
			t.Logf("sleep -> GET %s: %d %q", url, code, body)
		}
	}
	src, dst := "spiffe://cluster.local/ns/telem/sa/sleep", "spiffe://cluster.local/ns/telem/sa/httpbin"
	want := map[string]string{
		"source_workload": "sleep", "source_workload_namespace": "telem", "source_principal": src,
		"destination_workload": "httpbin", "destination_workload_namespace": "telem", "destination_principal": dst,
	}
	for _, side := range []struct {
		node     *cluster.Node
		reporter string
	}{{sleep.Node, "source"}, {httpbin.Node, "destination"}} {
		var line string
		eventually(t, 10*time.Second, side.node.Name+" /metrics counting sleep -> httpbin", func() bool {
			m, err := side.node.Metrics(t.Context())
			if err != nil {
				return false
			}
			line = cluster.MetricLine(m, "istio_tcp_connections_closed_total", map[string]string{"reporter": side.reporter, "source_workload": "sleep", "destination_workload": "httpbin"})
			return line != "" && cluster.MetricValue(line) >= n
		})
		for k, v := range want {
			if !strings.Contains(line, fmt.Sprintf("%s=%q", k, v)) {
				t.Errorf("%s metric lacks %s=%q: %s", side.node.Name, k, v, line)
			}
		}
		t.Logf("%s ztunnel /metrics: %s", side.node.Name, shortMetric(line))
	}

	recs := accessLog(httpbin.Node, httpbin.IP.String())
	var found map[string]any
	for _, r := range recs {
		if r["src.identity"] == src && r["direction"] == "inbound" {
			found = r
		}
	}
	if found == nil {
		t.Fatalf("no inbound access log line from %s on %s (%d lines to httpbin)", src, httpbin.Node.Name, len(recs))
	}
	for k, v := range map[string]string{"src.workload": "sleep", "src.namespace": "telem", "src.identity": src, "dst.workload": "httpbin", "dst.namespace": "telem", "dst.identity": dst} {
		if found[k] != v {
			t.Errorf("access log %s = %v, want %s", k, found[k], v)
		}
	}
	t.Logf("%s ztunnel access log: %s %v -> %v (%v) as %v, dst %v %v, %v bytes sent, %v received",
		httpbin.Node.Name, found["msg"], found["src.workload"], found["dst.workload"], found["dst.addr"], found["src.identity"], found["dst.namespace"], found["dst.identity"], found["bytes_sent"], found["bytes_recv"])
}

// shortMetric keeps a sample's telling labels.
func shortMetric(line string) string {
	keep := []string{"reporter", "source_workload", "source_workload_namespace", "source_principal", "destination_workload", "destination_principal", "destination_service", "connection_security_policy"}
	open, end := strings.IndexByte(line, '{'), strings.LastIndexByte(line, '}')
	var parts []string
	for _, l := range strings.Split(line[open+1:end], ",") {
		for _, k := range keep {
			if strings.HasPrefix(l, k+"=") {
				parts = append(parts, l)
			}
		}
	}
	return line[:open] + "{" + strings.Join(parts, ",") + "}" + line[end+1:]
}
