package config

import (
	"errors"
	"io/fs"
	"maps"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/zmesh/zmesh/api/workload"
	"github.com/zmesh/zmesh/api/workload/security"
	"github.com/zmesh/zmesh/internal/xdsclient"
	"github.com/zmesh/zmesh/ztunnel/state"
)

// What the handler accepted is persisted as sent, and a store loaded from
// the file is the one the handler built (synced), with the versions a
// restarted client resumes from; rejected resources are not persisted.
func TestHeldPersistsWhatWasAccepted(t *testing.T) {
	store, held := state.NewStore(), NewHeld()
	h := XDSHandler{Store: store, Held: held}
	web := &workload.Address{Type: &workload.Address_Workload{Workload: &workload.Workload{
		Uid: "Kubernetes//Pod/a/web", Name: "web", Namespace: "a", Addresses: [][]byte{{10, 0, 0, 1}},
		TunnelProtocol: workload.TunnelProtocol_HBONE, ServiceAccount: "web",
	}}}
	bad := &workload.Address{Type: &workload.Address_Workload{Workload: &workload.Workload{Uid: "Kubernetes//Pod/a/bad", Addresses: [][]byte{{1}}}}}
	deny := &security.Authorization{Name: "deny", Namespace: "a", Action: security.Action_DENY, Scope: security.Scope_NAMESPACE}
	h.Apply(xdsclient.TypeAuthorization, []xdsclient.Resource{{Name: "a/deny", Version: "p1", Body: mustAny(t, deny)}}, nil)
	h.Apply(xdsclient.TypeAddress, []xdsclient.Resource{
		{Name: "Kubernetes//Pod/a/web", Version: "w1", Body: mustAny(t, web)},
		{Name: "Kubernetes//Pod/a/bad", Version: "b1", Body: mustAny(t, bad)},
		{Name: "Kubernetes//Pod/a/old", Version: "o1", Body: mustAny(t, web)},
	}, nil)
	h.Apply(xdsclient.TypeAddress, nil, []string{"Kubernetes//Pod/a/old"})
	select {
	case <-held.Changed():
	default:
		t.Fatal("no change signalled")
	}

	path := filepath.Join(t.TempDir(), StateFile)
	if err := held.Save(path); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("state file: %v %v, want mode 0600", fi, err)
	}
	if left, _ := filepath.Glob(filepath.Join(filepath.Dir(path), ".*tmp*")); len(left) != 0 {
		t.Errorf("temporary files left: %v", left)
	}
	loaded, err := LoadHeld(path)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]map[string]string{
		xdsclient.TypeAddress:       {"Kubernetes//Pod/a/web": "w1"},
		xdsclient.TypeAuthorization: {"a/deny": "p1"},
	}
	got := loaded.Versions()
	if len(got) != len(want) || !maps.Equal(got[xdsclient.TypeAddress], want[xdsclient.TypeAddress]) ||
		!maps.Equal(got[xdsclient.TypeAuthorization], want[xdsclient.TypeAuthorization]) {
		t.Fatalf("loaded versions %v, want %v", got, want)
	}
	u, err := loaded.Update()
	if err != nil {
		t.Fatal(err)
	}
	restored := state.NewStore()
	if err := restored.Replace(u); err != nil {
		t.Fatal(err)
	}
	snap := restored.Snapshot()
	if !snap.Synced() || snap.Policy("a/deny") == nil ||
		snap.WorkloadByAddr(state.NetAddr{Addr: netip.MustParseAddr("10.0.0.1")}) == nil {
		t.Fatalf("restored state: synced=%v workloads=%v policies=%v", snap.Synced(), snap.Workloads(), snap.Policies())
	}

	// A second save replaces the file whole.
	h.Apply(xdsclient.TypeAuthorization, nil, []string{"a/deny"})
	if err := held.Save(path); err != nil {
		t.Fatal(err)
	}
	if again, err := LoadHeld(path); err != nil || len(again.Versions()[xdsclient.TypeAuthorization]) != 0 {
		t.Fatalf("after removing the policy: %v %v", again.Versions(), err)
	}
}

func TestLoadHeldRefusesWhatItCannotRead(t *testing.T) {
	dir := t.TempDir()
	if _, err := LoadHeld(filepath.Join(dir, "none")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("missing file: %v, want ErrNotExist", err)
	}
	for name, content := range map[string]string{
		"foreign":   "hello",
		"truncated": stateMagic + "\x7f\x0a\x2a",
	} {
		p := filepath.Join(dir, name)
		os.WriteFile(p, []byte(content), 0o600)
		if _, err := LoadHeld(p); err == nil || !strings.Contains(err.Error(), p) {
			t.Errorf("%s: %v, want an error naming the file", name, err)
		}
	}
}
