package config

import (
	"context"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/zmesh/zmesh/api/workload"
	"github.com/zmesh/zmesh/api/workload/security"
	"github.com/zmesh/zmesh/internal/xdsclient"
	"github.com/zmesh/zmesh/ztunnel/state"
)

func mustAny(t *testing.T, m proto.Message) *anypb.Any {
	t.Helper()
	a, err := anypb.New(m)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func TestXDSHandlerAppliesAndRejectsByName(t *testing.T) {
	store := state.NewStore()
	h := XDSHandler{Store: store}
	good := &workload.Address{Type: &workload.Address_Workload{Workload: &workload.Workload{
		Uid: "Kubernetes//Pod/a/p", Name: "p", Namespace: "a", Addresses: [][]byte{{10, 0, 0, 1}},
		TunnelProtocol: workload.TunnelProtocol_HBONE,
	}}}
	bad := &workload.Address{Type: &workload.Address_Workload{Workload: &workload.Workload{
		Uid: "Kubernetes//Pod/a/q", Addresses: [][]byte{{10, 0, 0}},
	}}}
	wrongType := mustAny(t, &security.Authorization{Name: "x", Namespace: "a"})
	rejected := h.Apply(xdsclient.TypeAddress, []xdsclient.Resource{
		{Name: "Kubernetes//Pod/a/p", Body: mustAny(t, good)},
		{Name: "Kubernetes//Pod/a/q", Body: mustAny(t, bad)},
		{Name: "Kubernetes//Pod/a/r", Body: wrongType},
	}, nil)
	if len(rejected) != 2 {
		t.Fatalf("rejected %v, want q and r", rejected)
	}
	if err := rejected["Kubernetes//Pod/a/q"]; err == nil || !strings.Contains(err.Error(), "addresses[0]") {
		t.Errorf("q: %v, want an error naming addresses[0]", err)
	}
	if err := rejected["Kubernetes//Pod/a/r"]; err == nil || !strings.Contains(err.Error(), "decode") {
		t.Errorf("r: %v, want a decode error", err)
	}
	if w := store.Snapshot().WorkloadByAddr(state.NetAddr{Addr: netip.MustParseAddr("10.0.0.1")}); w == nil || w.Name != "p" {
		t.Fatalf("the good workload was not applied: %v", w)
	}

	pol := &security.Authorization{Name: "deny", Namespace: "a", Action: security.Action_DENY, Scope: security.Scope_NAMESPACE}
	if r := h.Apply(xdsclient.TypeAuthorization, []xdsclient.Resource{{Name: "a/deny", Body: mustAny(t, pol)}}, nil); r != nil {
		t.Fatal(r)
	}
	if store.Snapshot().Policy("a/deny") == nil {
		t.Fatal("policy not applied")
	}
	if r := h.Apply(xdsclient.TypeAuthorization, nil, []string{"a/deny"}); r != nil {
		t.Fatal(r)
	}
	if store.Snapshot().Policy("a/deny") != nil {
		t.Fatal("policy not removed")
	}
	if r := h.Apply("type.googleapis.com/other", []xdsclient.Resource{{Name: "n", Body: wrongType}}, nil); r["n"] == nil {
		t.Fatal("a resource of an unknown type was not rejected")
	}
}

// A bad edit of the file is refused and the last good config keeps
// serving; a good edit replaces it.
func TestWatchFileKeepsLastGood(t *testing.T) {
	path := filepath.Join(t.TempDir(), "mesh.yaml")
	write := func(s string) {
		t.Helper()
		if err := os.WriteFile(path, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	one := "workloads:\n- {uid: w1, name: one, namespace: a, addresses: [10.0.0.1]}\n"
	two := "workloads:\n- {uid: w2, name: two, namespace: a, addresses: [10.0.0.2]}\n"
	write(one)
	store := state.NewStore()
	ctx, cancel := context.WithCancel(context.Background())
	var loads sync.WaitGroup
	loads.Add(1)
	var once sync.Once
	done := make(chan error, 1)
	go func() {
		done <- WatchFile(ctx, path, store, 10*time.Millisecond, slog.New(slog.DiscardHandler), func() { once.Do(loads.Done) })
	}()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()
	loads.Wait()
	if store.Snapshot().Workload("w1") == nil {
		t.Fatal("first load missing")
	}
	changed := store.Changed()
	write("workloads:\n- {uid: w3, addresses: [not-an-ip]}\n")
	select {
	case <-changed:
		t.Fatal("a bad file replaced the state")
	case <-time.After(200 * time.Millisecond):
	}
	if store.Snapshot().Workload("w1") == nil {
		t.Fatal("the last good config was lost")
	}
	write(two)
	select {
	case <-changed:
	case <-time.After(5 * time.Second):
		t.Fatal("a good edit was not picked up")
	}
	if s := store.Snapshot(); s.Workload("w2") == nil || s.Workload("w1") != nil {
		t.Fatalf("the good edit did not replace the state: %v", s.Workloads())
	}
}

func TestWatchFileFailsOnABadFirstLoad(t *testing.T) {
	path := filepath.Join(t.TempDir(), "mesh.yaml")
	os.WriteFile(path, []byte("workloads: [{uid: w, bogusField: 1}]\n"), 0o644)
	err := WatchFile(context.Background(), path, state.NewStore(), time.Second, slog.New(slog.DiscardHandler), nil)
	if err == nil || !strings.Contains(err.Error(), "bogusField") {
		t.Fatalf("err = %v, want one naming the unknown field", err)
	}
}
