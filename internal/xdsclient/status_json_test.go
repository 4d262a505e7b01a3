package xdsclient

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
)

// The admin page's dump carries Status: a failed stream's error must
// survive the trip to JSON and back (an error value marshals as {}, which
// no client can read).
func TestStatusJSONRoundTrip(t *testing.T) {
	in := Status{LastError: errors.New("receive: rpc error: code = Unavailable"), Types: []TypeStatus{{TypeURL: TypeAddress, Resources: 3, Synced: true}}}
	b, err := json.Marshal(in)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), `"lastError":"receive: rpc error: code = Unavailable"`) {
		t.Errorf("JSON %s does not carry the error's message", b)
	}
	var out Status
	if err := json.Unmarshal(b, &out); err != nil {
		t.Fatal(err)
	}
	if out.LastError == nil || out.LastError.Error() != in.LastError.Error() || len(out.Types) != 1 || out.Types[0] != in.Types[0] {
		t.Errorf("round trip: %+v, want %+v", out, in)
	}
}
