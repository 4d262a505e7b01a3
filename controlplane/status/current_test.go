package status

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http/httptest"
	"reflect"
	"testing"

	"github.com/zmesh/zmesh/controlplane/translate"
)

// Current (and /debug/statusz) shows the last push's conditions per object,
// the rejected ones with their reason, and forgets objects gone since.
func TestCurrentShowsTheLastPush(t *testing.T) {
	r := &Reporter{Log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	ap := translate.ObjectRef{Group: "security.istio.io", Kind: "AuthorizationPolicy", Namespace: "shop", Name: "get-only"}
	old := translate.ObjectRef{Group: "security.istio.io", Kind: "PeerAuthentication", Namespace: "shop", Name: "gone"}
	r.Report(context.Background(), []translate.Condition{{Object: old, Type: "ZtunnelAccepted", Status: true}})
	r.Report(context.Background(), []translate.Condition{{Object: ap, Type: "ZtunnelAccepted", Status: false, Reason: "UnsupportedValue", Message: "spec.rules[0].to[0].operation.methods: a waypoint is needed"}})
	want := []ObjectStatus{{Group: "security.istio.io", Kind: "AuthorizationPolicy", Namespace: "shop", Name: "get-only",
		Conditions: []ObjectCondition{{Type: "ZtunnelAccepted", Status: false, Reason: "UnsupportedValue", Message: "spec.rules[0].to[0].operation.methods: a waypoint is needed"}}}}
	if got := r.Current(); !reflect.DeepEqual(got, want) {
		t.Fatalf("Current() = %+v, want %+v", got, want)
	}
	rec := httptest.NewRecorder()
	r.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/debug/statusz", nil))
	var served []ObjectStatus
	if err := json.Unmarshal(rec.Body.Bytes(), &served); err != nil || !reflect.DeepEqual(served, want) {
		t.Fatalf("/debug/statusz = %s (%v), want %+v", rec.Body.String(), err, want)
	}
}
