package main

import (
	"bytes"
	"context"
	"os"
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
	if left := netenv.Leftovers(); len(left) > 0 {
		t.Fatalf("demo left namespaces behind: %v", left)
	}
}
