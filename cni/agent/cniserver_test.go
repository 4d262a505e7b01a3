package agent

import (
	"strings"
	"testing"
)

func TestDecodePod(t *testing.T) {
	if _, err := decodePod(strings.NewReader(`{"uid":"u","name":"n","namespace":"ns","netns":"/run/netns/x","ips":["10.0.0.1"]}`)); err != nil {
		t.Fatal(err)
	}
	for body, want := range map[string]string{
		`{`:                            "decode request",
		`{"uid":"u","name":"n"}`:       "missing namespace",
		`{"name":"n","namespace":"x"}`: "missing uid",
		`[]`:                           "decode request",
	} {
		if _, err := decodePod(strings.NewReader(body)); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: err = %v, want %q", body, err, want)
		}
	}
}

// FuzzDecodePod: whatever a broken plugin sends, the agent answers with an
// error or a valid pod, never a panic.
func FuzzDecodePod(f *testing.F) {
	f.Add(`{"uid":"u","name":"n","namespace":"ns","ips":["10.0.0.1","fd00::1"]}`)
	f.Add(`{"uid":1}`)
	f.Fuzz(func(t *testing.T, s string) {
		p, err := decodePod(strings.NewReader(s))
		if err == nil && (p.UID == "" || p.Name == "" || p.Namespace == "") {
			t.Fatalf("accepted %+v", p)
		}
	})
}
