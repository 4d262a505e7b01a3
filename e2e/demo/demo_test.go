package main

import (
	"bytes"
	"context"
	"testing"
	"time"

	"github.com/zmesh/zmesh/e2e/netenv"
)

// The demo is the README's first command: it must keep working. run fails
// on any step that does not behave (a refusal that does not happen, a
// plaintext payload on the wire, a capture that sees nothing, a ztunnel
// that does not log or count what it did).
func TestDemoRuns(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
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
