package l4

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/zmesh/zmesh/e2e/cluster"
	"github.com/zmesh/zmesh/e2e/podapp"
)

// apply, kubectl, waitPods and eventually are the cluster's test helpers
// on the suite's shared cluster.
func apply(t *testing.T, file string, namespaces ...string) {
	t.Helper()
	mesh.Apply(t, file, namespaces...)
}

func kubectl(t *testing.T, args ...string) string {
	t.Helper()
	return mesh.MustKubectl(t, args...)
}

func waitPods(t *testing.T, ns string, n int) map[string]*cluster.Pod {
	t.Helper()
	return mesh.MustWaitPods(t, ns, n)
}

func eventually(t *testing.T, d time.Duration, what string, cond func() bool) time.Duration {
	t.Helper()
	return cluster.Eventually(t, d, what, cond)
}

func redirected(t *testing.T, ns, name string) bool {
	ok, err := mesh.Redirected(t.Context(), ns, name)
	return err == nil && ok
}

// watchConn pings a long-lived connection every 20 ms and reports when it
// first fails.
func watchConn(c interface{ Ping(time.Duration) error }) <-chan time.Time {
	ch := make(chan time.Time, 1)
	go func() {
		for {
			if err := c.Ping(5 * time.Second); err != nil {
				ch <- time.Now()
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
	}()
	return ch
}

var echoPort uint16 = podapp.EchoPort

// accessLog returns node's ztunnel access log records for connections to
// dst (ip) that completed.
func accessLog(n *cluster.Node, dstIP string) []map[string]any {
	var out []map[string]any
	for _, r := range n.ZtunnelLogRecords("connection complete") {
		if a, _ := r["dst.addr"].(string); strings.HasPrefix(a, dstIP+":") {
			out = append(out, r)
		}
	}
	return out
}

// reach waits until connections from one pod to dst are answered (want
// true) or refused (want false), and says how long that took and, when
// answered, the greeting's caller address.
func reach(t *testing.T, from *cluster.Pod, dst netip.AddrPort, want bool, what string) (time.Duration, string) {
	t.Helper()
	start := time.Now()
	var lastErr error
	var seen string
	for {
		_, src, err := from.Echo(t.Context(), dst)
		lastErr, seen = err, src
		if (err == nil) == want {
			// Twice in a row, so one lucky connection does not count.
			_, src2, err2 := from.Echo(t.Context(), dst)
			if (err2 == nil) == want {
				if want {
					seen = src2
				} else {
					lastErr = err2
				}
				break
			}
		}
		if time.Since(start) > 15*time.Second {
			t.Fatalf("%s: after 15s connections still %s (last error: %v)", what, map[bool]string{true: "refused", false: "answered"}[want], lastErr)
		}
		time.Sleep(50 * time.Millisecond)
	}
	took := time.Since(start).Round(time.Millisecond)
	if want {
		t.Logf("%s: answered (server saw %s) [%s]", what, seen, took)
	} else {
		t.Logf("%s: refused (%v) [%s]", what, lastErr, took)
	}
	return took, seen
}
