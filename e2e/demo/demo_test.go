package main

import (
	"context"
	"testing"
	"time"

	"github.com/zmesh/zmesh/e2e/netenv"
)

// The demo is the README's first command: it must keep working. run fails
// on any step that does not behave (a refusal that does not happen, a
// plaintext payload on the wire, a capture that sees nothing).
func TestDemoRuns(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := run(ctx); err != nil {
		t.Fatal(err)
	}
	if left := netenv.Leftovers(); len(left) > 0 {
		t.Fatalf("demo left namespaces behind: %v", left)
	}
}
