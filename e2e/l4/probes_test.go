package l4

import (
	"strings"
	"testing"
	"time"

	"github.com/zmesh/zmesh/e2e/podapp"
)

// TestProbes: kubelet-style probes from the node's own address reach an
// ambient pod under STRICT mTLS and allow-nothing, while a meshed client
// is refused.
func TestProbes(t *testing.T) {
	apply(t, "probes.yaml", "probes")
	pods := waitPods(t, "probes", 2)
	web, client := pods["web"], pods["client"]
	eventually(t, 15*time.Second, "web and client captured", func() bool {
		return redirected(t, "probes", "web") && redirected(t, "probes", "client")
	})
	reach(t, client, web.Addr(echoPort), false, "allow-nothing + STRICT: client -> web")
	for i := range 5 {
		resp, err := web.Node.Kubelet.Probe(t.Context(), web.Addr(podapp.HTTPPort))
		if err != nil {
			t.Fatalf("probe %d from %s's host namespace: %v", i, web.Node.Name, err)
		}
		status, _, _ := strings.Cut(resp, "\r\n")
		if !strings.Contains(status, " 200 ") {
			t.Fatalf("probe %d: %q", i, status)
		}
		if i == 0 {
			body := resp[strings.LastIndex(resp, "\r\n\r\n")+4:]
			t.Logf("probe GET http://%s/healthz from %s's host namespace (source %s): %s, %s", web.Addr(podapp.HTTPPort), web.Node.Name, web.Node.Gateway, status, strings.TrimSpace(body))
			echo, err := podapp.ParseEcho([]byte(body))
			if err != nil || !strings.HasPrefix(echo.From, web.Node.Gateway.String()+":") {
				t.Errorf("the probe did not come from the node's address %s: %q (%v)", web.Node.Gateway, body, err)
			}
		}
	}
	t.Log("5/5 probes answered under STRICT + allow-nothing")
}
