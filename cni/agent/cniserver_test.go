package agent

import (
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// Whoever can talk to the plugin's socket can change pods' networking: it
// is 0600 even under a permissive umask, and replaces a stale socket.
func TestCNISocketIsPrivate(t *testing.T) {
	old := unix.Umask(0)
	defer unix.Umask(old)
	path := filepath.Join(t.TempDir(), "cni.sock")
	for range 2 {
		s, err := NewCNIServer(path, nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		var st unix.Stat_t
		if err := unix.Stat(path, &st); err != nil {
			t.Fatal(err)
		}
		s.ln.Close()
		if st.Mode&unix.S_IFMT != unix.S_IFSOCK || st.Mode&0o777 != 0o600 {
			t.Fatalf("socket mode %o, want a socket with 0600", st.Mode)
		}
	}
}

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
