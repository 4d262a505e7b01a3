package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"regexp"
	"testing"
	"time"

	"github.com/zmesh/zmesh/e2e/netenv"
	"github.com/zmesh/zmesh/e2e/podapp"
)

// The pods' processes are this test binary again.
func TestMain(m *testing.M) {
	if podapp.IsApp() {
		podapp.Main()
	}
	// TestLocalUp runs this binary as zmesh-local, the demo's command.
	if filepath.Base(os.Args[0]) == "zmesh-local" {
		main()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// The demo is the README's first command: it must keep working. run fails
// on any step that does not behave (a pod not captured by CNI ADD, a
// refusal that does not happen, a plaintext payload on the wire, a capture
// that sees nothing, a running pod that does not join, a ztunnel that does
// not log or count what it did) and when its cleanup leaves anything
// behind (namespaces, links, bpffs pins or mounts, processes, the
// temporary directory).
func TestDemoRuns(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	var out bytes.Buffer
	if err := run(ctx, "", &out, false); err != nil {
		t.Fatalf("%v\n%s", err, out.String())
	}
	t.Log(out.String())
	// The canary step: the waypoint ran from the deployer's Deployment,
	// requests to service web were split by version through it, routed by
	// header, timed out and aborted as the VirtualService was rewritten, and
	// its pods refused alice dialling one directly.
	for _, want := range []*regexp.Regexp{
		regexp.MustCompile(`✓ waypoint 10\.50\.2\.\d+ on node-2: the deployer's Deployment for Gateway demo/waypoint run as the waypoint binary \(pid \d+\).*not captured; ready`),
		regexp.MustCompile(`✓ zmeshd   1 waypoint connected and synced`),
		regexp.MustCompile(`✓ alice    -> http://10\.96\.0\.11:80/ \(service web\): 100 requests: v1 \d+, v2 \d+ \(VirtualService web: 90/10\)`),
		regexp.MustCompile(`✓ waypoint access log: \d+ requests from spiffe://cluster\.local/ns/demo/sa/alice`),
		regexp.MustCompile(`✓ edit     55-web-routes\.yaml: end-user jason -> v2, the rest -> v1: 20 requests as jason all v2, 20 others all v1`),
		regexp.MustCompile(`✓ edit     55-web-routes\.yaml: timeout 2s: a 3 s request got 504 "upstream request timeout"`),
		regexp.MustCompile(`✓ edit     55-web-routes\.yaml: abort 50% with 500: \d+ of 100 requests got 500 "fault filter abort"`),
		regexp.MustCompile(`✓ alice    -> 10\.50\.1\.20:8080 \(web-v1's pod IP, around the waypoint\): refused by node-1's ztunnel: .+`),
	} {
		if !want.MatchString(out.String()) {
			t.Errorf("no line matching %s", want)
		}
	}
	if left := netenv.Leftovers(); len(left) > 0 {
		t.Fatalf("demo left namespaces behind: %v", left)
	}
}
