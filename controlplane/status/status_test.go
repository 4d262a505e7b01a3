package status

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"testing"

	"github.com/zmesh/zmesh/controlplane/translate"
)

// Findings are logged when they change, not on every push; writing them to
// the objects is tested against a real API server in cmd/zmeshd.
func TestReportLogsChangesOnly(t *testing.T) {
	var logs bytes.Buffer
	r := &Reporter{Log: slog.New(slog.NewTextHandler(&logs, nil))}
	ref := translate.ObjectRef{Group: "security.istio.io", Kind: "AuthorizationPolicy", Namespace: "shop", Name: "get-only"}
	bad := []translate.Condition{{Object: ref, Type: "ZtunnelAccepted", Reason: "UnsupportedValue", Message: "spec.rules[0].to[0].operation.methods: a waypoint is needed"}}
	ctx := context.Background()

	r.Report(ctx, bad)
	r.Report(ctx, bad)
	if n := strings.Count(logs.String(), "config problem"); n != 1 {
		t.Fatalf("logged %d times for the same finding twice:\n%s", n, logs.String())
	}
	if !strings.Contains(logs.String(), "operation.methods") || !strings.Contains(logs.String(), "shop/get-only") {
		t.Errorf("log does not name the object and field:\n%s", logs.String())
	}
	good := []translate.Condition{{Object: ref, Type: "ZtunnelAccepted", Status: true, Reason: "Accepted"}}
	r.Report(ctx, good)
	if !strings.Contains(logs.String(), "config accepted") {
		t.Errorf("a fixed policy is not logged as accepted:\n%s", logs.String())
	}
	// Gone and back: logged again.
	r.Report(ctx, nil)
	r.Report(ctx, bad)
	if n := strings.Count(logs.String(), "config problem"); n != 2 {
		t.Errorf("a finding that came back logged %d times in all, want 2", n)
	}
}
