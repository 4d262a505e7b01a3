package config

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/zmesh/zmesh/api/workload"
	"github.com/zmesh/zmesh/api/workload/security"
	"github.com/zmesh/zmesh/internal/xdsclient"
	"github.com/zmesh/zmesh/ztunnel/authz"
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

// A policy the handler rejects (NACK) is enforced as a deny-all over its
// scope: a rejected ALLOW must not leave its namespace with no ALLOW
// policy, which would allow everyone, nor keep its previous, wider
// version; a policy that does not decode at all denies on every workload.
// A good version lifts the deny.
func TestXDSHandlerRejectedPolicyDeniesItsScope(t *testing.T) {
	store := state.NewStore()
	h := XDSHandler{Store: store}
	wl := func(uid, ns string, ip byte, policies ...string) xdsclient.Resource {
		return xdsclient.Resource{Name: uid, Body: mustAny(t, &workload.Address{Type: &workload.Address_Workload{Workload: &workload.Workload{
			Uid: uid, Name: uid, Namespace: ns, Addresses: [][]byte{{10, 0, 0, ip}},
			TunnelProtocol: workload.TunnelProtocol_HBONE, AuthorizationPolicies: policies,
		}}})}
	}
	if r := h.Apply(xdsclient.TypeAddress, []xdsclient.Resource{wl("a", "prod", 1), wl("b", "dev", 2), wl("c", "dev", 3, "dev/sel")}, nil); r != nil {
		t.Fatal(r)
	}
	peer := spiffeid.RequireFromString("spiffe://cluster.local/ns/prod/sa/client")
	allowed := func(uid string) bool {
		t.Helper()
		snap := store.Snapshot()
		w := snap.Workload(uid)
		ps, missing := snap.PoliciesFor(w)
		if len(missing) > 0 {
			return false
		}
		return authz.Evaluate(ps, authz.Conn{Src: netip.MustParseAddrPort("10.0.0.9:1234"), Dst: netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 0, 0, 1}), 80), Peer: peer}).Allowed
	}
	allowClient := func(port uint32) *security.Authorization {
		return &security.Authorization{Name: "allow-client", Namespace: "prod", Scope: security.Scope_NAMESPACE, Action: security.Action_ALLOW,
			Rules: []*security.Rule{{Clauses: []*security.Clause{{Matches: []*security.Match{{
				Principals:       []*security.StringMatch{{MatchType: &security.StringMatch_Exact{Exact: "cluster.local/ns/prod/sa/client"}}},
				DestinationPorts: []uint32{port},
			}}}}}}}
	}
	good := allowClient(80)
	if r := h.Apply(xdsclient.TypeAuthorization, []xdsclient.Resource{{Name: "prod/allow-client", Body: mustAny(t, good)}}, nil); r != nil {
		t.Fatal(r)
	}
	if !allowed("a") {
		t.Fatal("the good ALLOW does not allow its client")
	}

	// A new version with a port that cannot be: NACKed, and prod denies
	// everyone, the client included; dev is not in its scope.
	r := h.Apply(xdsclient.TypeAuthorization, []xdsclient.Resource{{Name: "prod/allow-client", Body: mustAny(t, allowClient(70000))}}, nil)
	if err := r["prod/allow-client"]; err == nil || !strings.Contains(err.Error(), "destination_ports[0]") {
		t.Fatalf("rejected = %v, want prod/allow-client NACKed naming the port", r)
	}
	if allowed("a") {
		t.Error("prod/a still admits the client after its ALLOW was rejected (fail open)")
	}
	if !allowed("b") {
		t.Error("dev/b is denied by a rejected policy of prod")
	}

	// A rejected selector policy denies only the workloads that list it.
	sel := &security.Authorization{Name: "sel", Namespace: "dev", Scope: security.Scope_WORKLOAD_SELECTOR, Action: security.Action(9)}
	if r := h.Apply(xdsclient.TypeAuthorization, []xdsclient.Resource{{Name: "dev/sel", Body: mustAny(t, sel)}}, nil); r["dev/sel"] == nil {
		t.Fatal("a policy with an unknown action was not rejected")
	}
	if allowed("c") || !allowed("b") {
		t.Errorf("after dev/sel was rejected: c allowed=%v (want false), b allowed=%v (want true)", allowed("c"), allowed("b"))
	}

	// An ALLOW rejected at its very first version does not leave dev with
	// "no ALLOW policies", which would allow everyone.
	fresh := allowClient(0)
	fresh.Name, fresh.Namespace = "allow-new", "dev"
	if r := h.Apply(xdsclient.TypeAuthorization, []xdsclient.Resource{{Name: "dev/allow-new", Body: mustAny(t, fresh)}}, nil); r["dev/allow-new"] == nil {
		t.Fatal("an ALLOW with port 0 was not rejected")
	}
	if allowed("b") {
		t.Error("dev/b is allowed while dev's only ALLOW policy stands rejected (fail open)")
	}
	if r := h.Apply(xdsclient.TypeAuthorization, nil, []string{"dev/allow-new"}); r != nil {
		t.Fatal(r)
	}
	if !allowed("b") {
		t.Error("removing the rejected policy did not lift its deny")
	}

	// A policy that does not decode could have been mesh-wide.
	wrong := mustAny(t, &workload.Address{})
	wrong.TypeUrl = xdsclient.TypeAuthorization
	wrong.Value = []byte{0xff, 0xff, 0xff}
	if r := h.Apply(xdsclient.TypeAuthorization, []xdsclient.Resource{{Name: "dev/garbled", Body: wrong}}, nil); r["dev/garbled"] == nil || !strings.Contains(r["dev/garbled"].Error(), "decode") {
		t.Fatalf("rejected = %v, want dev/garbled NACKed as undecodable", r)
	}
	if allowed("b") {
		t.Error("dev/b is allowed while an undecodable policy stands")
	}

	// Good versions (and a removal) lift the denies.
	if r := h.Apply(xdsclient.TypeAuthorization, []xdsclient.Resource{{Name: "prod/allow-client", Body: mustAny(t, good)}}, []string{"dev/garbled", "dev/sel"}); r != nil {
		t.Fatal(r)
	}
	if !allowed("a") || !allowed("b") {
		t.Error("good versions did not lift the denies")
	}
}

// A bad edit of the file is refused and the last good config keeps
// serving; a good edit replaces it.
func TestWatchFileKeepsLastGood(t *testing.T) {
	path := filepath.Join(t.TempDir(), "mesh.yaml")
	write := func(s string) {
		t.Helper()
		writeAtomically(t, path, s)
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

// An edit that breaks an ALLOW policy of the file does not leave the last
// good ALLOW in force: the policy denies everyone in its namespace until
// the file is fixed.
func TestWatchFileRejectedPolicyDenies(t *testing.T) {
	path := filepath.Join(t.TempDir(), "mesh.yaml")
	write := func(s string) {
		t.Helper()
		writeAtomically(t, path, s)
	}
	const head = "workloads:\n- {uid: w1, name: one, namespace: a, addresses: [10.0.0.1], tunnelProtocol: HBONE}\n" +
		"policies:\n- {name: allow, namespace: a, scope: NAMESPACE, action: ALLOW, rules: [{clauses: [{matches: [{sourceIps: [%s]}]}]}]}\n"
	write(fmt.Sprintf(head, "10.0.0.0/8"))
	store := state.NewStore()
	ctx, cancel := context.WithCancel(context.Background())
	loaded := make(chan struct{}, 1)
	done := make(chan error, 1)
	go func() {
		done <- WatchFile(ctx, path, store, 10*time.Millisecond, slog.New(slog.DiscardHandler), func() {
			select {
			case loaded <- struct{}{}:
			default:
			}
		})
	}()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()
	<-loaded
	allowed := func() bool {
		t.Helper()
		snap := store.Snapshot()
		w := snap.Workload("w1")
		if w == nil {
			t.Fatal("workload w1 is gone")
		}
		ps, _ := snap.PoliciesFor(w)
		return authz.Evaluate(ps, authz.Conn{Src: netip.MustParseAddrPort("10.9.9.9:1"), Dst: netip.MustParseAddrPort("10.0.0.1:80")}).Allowed
	}
	if !allowed() {
		t.Fatal("the good ALLOW does not allow 10.9.9.9")
	}
	changed := store.Changed()
	write(fmt.Sprintf(head, "10.0.0.0/99"))
	select {
	case <-changed:
	case <-time.After(5 * time.Second):
		t.Fatal("the rejected policy changed nothing: its last good version is still in force")
	}
	if allowed() {
		t.Error("10.9.9.9 is still allowed after the ALLOW naming it was rejected (fail open)")
	}
	if p := store.Snapshot().Policy("a/allow"); p == nil || !strings.Contains(p.RejectedBecause(), "10.0.0.0/99") {
		t.Errorf("a/allow = %+v, want a stand-in naming the bad CIDR", p)
	}
	if store.Snapshot().Workload("w1") == nil {
		t.Error("the workloads of the last good file were lost")
	}
	changed = store.Changed()
	write(fmt.Sprintf(head, "10.0.0.0/8"))
	select {
	case <-changed:
	case <-time.After(5 * time.Second):
		t.Fatal("the fixed file was not picked up")
	}
	if !allowed() {
		t.Error("the fixed ALLOW does not allow 10.9.9.9")
	}
}

// writeAtomically replaces the file by a rename: os.WriteFile truncates
// first, and a loaded machine can leave the empty file in place for two
// reads an interval apart, which WatchFile rightly takes for an empty
// config.
func writeAtomically(t *testing.T, path, content string) {
	t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
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
