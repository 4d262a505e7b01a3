package plugin_test

import (
	"sort"
	"testing"
	"time"

	"github.com/zmesh/zmesh/e2e/netenv"
)

// BenchmarkCNIAdd is the time one pod's CNI ADD takes through the node's
// chain (bridge + host-local), without zmesh-cni and with it chained in for
// an ambient pod (capture installed, ztunnel's ack awaited); median and
// p99 are reported beside the mean. Each iteration also deletes the pod
// (untimed).
func BenchmarkCNIAdd(b *testing.B) {
	for _, tc := range []struct {
		name      string
		namespace string
		chained   bool
	}{
		{"without", "amb", false},
		{"with-zmesh", "amb", true},
	} {
		b.Run(tc.name, func(b *testing.B) {
			n := newNode(b, debianCNIDir)
			list := n.list(b, "1.0.0", tc.chained)
			var durations []time.Duration
			for b.Loop() {
				b.StopTimer()
				ns, err := netenv.NewNS("bench")
				if err != nil {
					b.Fatal(err)
				}
				p := podConf(ns, tc.namespace, "web")
				b.StartTimer()
				start := time.Now()
				if _, err := n.cni(b, "ADD", list, p.rt); err != nil {
					b.Fatal(err)
				}
				durations = append(durations, time.Since(start))
				b.StopTimer()
				if _, err := n.cni(b, "DEL", list, p.rt); err != nil {
					b.Fatal(err)
				}
				ns.Close()
				b.StartTimer()
			}
			sort.Slice(durations, func(i, j int) bool { return durations[i] < durations[j] })
			if len(durations) > 0 {
				b.ReportMetric(float64(durations[len(durations)/2].Microseconds()), "p50-µs")
				b.ReportMetric(float64(durations[len(durations)*99/100].Microseconds()), "p99-µs")
			}
		})
	}
}
