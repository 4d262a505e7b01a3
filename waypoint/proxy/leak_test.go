package proxy

import (
	"net/http"
	"testing"

	"go.uber.org/goleak"
)

// TestShutdownLeavesNoGoroutines: after Shutdown (and the test mesh's own
// cleanup) nothing of the proxy runs: servers, pools, sweepers, tunnels.
func TestShutdownLeavesNoGoroutines(t *testing.T) {
	before := goleak.IgnoreCurrent()
	t.Run("traffic", func(t *testing.T) {
		m := newMesh(t, bounds{})
		for _, c := range []*http.Client{m.h1Client(vipHTTP), m.h2Client(vipHTTP), m.h1Client(vipSniff)} {
			if res, body := get(t, c, "http://reviews/mirror"); res.StatusCode != 200 || body != "v1" {
				t.Errorf("got %d %q", res.StatusCode, body)
			}
		}
		tcpEcho(t, m, vipTCP, "x")
	})
	goleak.VerifyNone(t, before)
}
