package cluster

import (
	"encoding/json"
	"maps"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/zmesh/zmesh/e2e/podapp"
)

// TestCountVersions: GetEcho sends the header and decodes the echo;
// CountVersions counts versions until the first answer that is not 200,
// and says which request it was.
func TestCountVersions(t *testing.T) {
	var n atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		i := n.Add(1)
		if i == 5 {
			http.Error(w, "fault filter abort", http.StatusInternalServerError)
			return
		}
		v := "v1"
		if i%2 == 0 {
			v = "v2"
		}
		json.NewEncoder(w).Encode(podapp.Echo{Version: v, Headers: r.Header})
	}))
	defer srv.Close()

	code, e, err := GetEcho(srv.Client(), srv.URL, http.Header{"End-User": {"jason"}})
	if err != nil || code != http.StatusOK || e.Version != "v1" || e.Headers["End-User"][0] != "jason" {
		t.Fatalf("GetEcho: %d %+v %v, want 200 from v1 with End-User jason", code, e, err)
	}
	got, err := CountVersions(srv.Client(), srv.URL, 10, nil)
	if want := map[string]int{"v1": 1, "v2": 2}; !maps.Equal(got, want) {
		t.Errorf("CountVersions counted %v, want %v (requests 2 to 4)", got, want)
	}
	if err == nil || !strings.Contains(err.Error(), "request 4 of 10") || !strings.Contains(err.Error(), ": 500 ") {
		t.Errorf("CountVersions error %v, want request 4 of 10 answered 500", err)
	}
}
