package identity

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestParseStaticTokens(t *testing.T) {
	good := `# token                 identity                                             node
ztunnel-node1   spiffe://cluster.local/ns/istio-system/sa/ztunnel   node1

admin	spiffe://cluster.local/ns/zmesh/sa/admin	-
`
	a, err := ParseStaticTokens(strings.NewReader(good))
	if err != nil {
		t.Fatal(err)
	}
	if a.Len() != 2 {
		t.Fatalf("Len = %d, want 2", a.Len())
	}
	c, err := a.Authenticate(context.Background(), "ztunnel-node1")
	if err != nil || c.ID != ztunnelID || c.Node != "node1" {
		t.Errorf("Authenticate = %+v, %v", c, err)
	}
	if c, err := a.Authenticate(context.Background(), "admin"); err != nil || c.Node != "" {
		t.Errorf("Authenticate(admin) = %+v, %v; want no node", c, err)
	}
	if _, err := a.Authenticate(context.Background(), "other"); !errors.Is(err, ErrUnknownToken) {
		t.Errorf("unknown token: err = %v", err)
	}

	bad := []struct{ name, in, want string }{
		{"two fields", "tok spiffe://cluster.local/ns/a/sa/b\n", "line 1: 2 fields"},
		{"four fields", "\n\ntok spiffe://cluster.local/ns/a/sa/b n1 extra\n", "line 3: 4 fields"},
		{"bad id", "tok spiffe://Cluster.local/x n1\n", "line 1: spiffe id"},
		{"not spiffe", "tok https://cluster.local/x n1\n", "line 1: spiffe id"},
		{"duplicate", "tok spiffe://cluster.local/a n1\ntok spiffe://cluster.local/b n2\n", "line 2: token given twice"},
		{"control byte", "t\x01k spiffe://cluster.local/a n1\n", "line 1: token has byte"},
		{"long line", strings.Repeat("x", 70000) + "\n", "line 1:"},
	}
	for _, tt := range bad {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParseStaticTokens(strings.NewReader(tt.in))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error = %v, want one containing %q", err, tt.want)
			}
		})
	}
}

func TestLoadStaticTokens(t *testing.T) {
	path := filepath.Join(t.TempDir(), "tokens")
	if err := os.WriteFile(path, []byte("tok spiffe://cluster.local/a\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadStaticTokens(path); err == nil || !strings.Contains(err.Error(), path) {
		t.Fatalf("error = %v, want one naming the file", err)
	}
	if _, err := LoadStaticTokens(path + ".missing"); err == nil {
		t.Fatal("missing file accepted")
	}
}

func TestNewStaticTokenAuthenticatorValidates(t *testing.T) {
	if _, err := NewStaticTokenAuthenticator(map[string]Caller{"": {ID: podAID}}); err == nil {
		t.Error("empty token accepted")
	}
	if _, err := NewStaticTokenAuthenticator(map[string]Caller{"tok": {}}); err == nil {
		t.Error("empty identity accepted")
	}
}
