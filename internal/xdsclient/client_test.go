package xdsclient

import (
	"context"
	"errors"
	"log/slog"
	"maps"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	grpcbackoff "google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/zmesh/zmesh/api/workload"
	"github.com/zmesh/zmesh/api/workload/security"
	"github.com/zmesh/zmesh/internal/testutil"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// timeout bounds every wait; a healthy run takes milliseconds.
const timeout = 10 * time.Second

func TestAckAfterGoodPush(t *testing.T) {
	e := newEnv(t, TypeAddress)
	s := e.srv.nextStream(t)
	first := s.next(t)
	if first.GetTypeUrl() != TypeAddress || !slices.Equal(first.GetResourceNamesSubscribe(), []string{"*"}) ||
		first.GetNode().GetId() != "ztunnel~node-1" || len(first.GetInitialResourceVersions()) != 0 || first.GetResponseNonce() != "" {
		t.Fatalf("first request = %v, want a wildcard subscription to %s with the node and no versions", first, TypeAddress)
	}

	s.push(t, &discoveryv3.DeltaDiscoveryResponse{TypeUrl: TypeAddress, Nonce: "n1", Resources: []*discoveryv3.Resource{
		res("a", "v1", address(t, "a")), res("b", "v1", address(t, "b")),
	}})
	ack := s.next(t)
	if ack.GetTypeUrl() != TypeAddress || ack.GetResponseNonce() != "n1" || ack.GetErrorDetail() != nil || ack.GetNode() != nil {
		t.Fatalf("answer = %v, want a plain ACK of n1", ack)
	}
	if got := e.h.names(TypeAddress); !slices.Equal(got, []string{"a", "b"}) {
		t.Errorf("handler holds %v, want [a b]", got)
	}
	st := e.c.Status()
	if !st.Connected || st.Types[0].Resources != 2 || st.Types[0].AckedNonce != "n1" || st.Types[0].NackedNonce != "" {
		t.Errorf("status = %+v, want connected, 2 resources, n1 ACKed, nothing NACKed", st)
	}
}

func TestNackNamesRejectedAndAppliesTheRest(t *testing.T) {
	e := newEnv(t, TypeAddress)
	e.h.reject("bad", errors.New("no addresses"))
	s := e.srv.nextStream(t)
	s.next(t)

	s.push(t, &discoveryv3.DeltaDiscoveryResponse{TypeUrl: TypeAddress, Nonce: "n1", Resources: []*discoveryv3.Resource{
		res("wrongtype", "v1", authz(t, "wrongtype")),
		res("good", "v1", address(t, "good")),
		res("bad", "v1", address(t, "bad")),
	}})
	nack := s.next(t)
	if nack.GetResponseNonce() != "n1" || nack.GetErrorDetail() == nil {
		t.Fatalf("answer = %v, want a NACK of n1", nack)
	}
	if c := codes.Code(nack.GetErrorDetail().GetCode()); c != codes.InvalidArgument {
		t.Errorf("NACK code = %v, want InvalidArgument", c)
	}
	wantMsg := "bad: no addresses; wrongtype: payload is " + TypeAuthorization + ", want " + TypeAddress
	if msg := nack.GetErrorDetail().GetMessage(); msg != wantMsg {
		t.Errorf("NACK message = %q, want %q", msg, wantMsg)
	}
	if got := e.h.names(TypeAddress); !slices.Equal(got, []string{"good"}) {
		t.Errorf("handler holds %v, want [good]", got)
	}
	if e.h.offered("wrongtype") {
		t.Error("handler was offered a payload of the wrong type")
	}
	st := e.c.Status().Types[0]
	if st.Resources != 1 || st.NackedNonce != "n1" || st.NackMessage != wantMsg || st.AckedNonce != "" {
		t.Errorf("status = %+v, want 1 resource and n1 NACKed", st)
	}
	if logs := e.log.String(); !strings.Contains(logs, "NACK") || !strings.Contains(logs, "rejected=\"[bad wrongtype]\"") {
		t.Errorf("logs do not name the rejected resources:\n%s", logs)
	}

	// A rejected update of a held resource leaves the old version held.
	s.push(t, &discoveryv3.DeltaDiscoveryResponse{TypeUrl: TypeAddress, Nonce: "n2", Resources: []*discoveryv3.Resource{
		res("good", "v2", address(t, "good")),
	}})
	if a := s.next(t); a.GetResponseNonce() != "n2" || a.GetErrorDetail() != nil {
		t.Fatalf("answer = %v, want an ACK of n2", a)
	}
	e.h.reject("good", errors.New("bad port"))
	s.push(t, &discoveryv3.DeltaDiscoveryResponse{TypeUrl: TypeAddress, Nonce: "n3", Resources: []*discoveryv3.Resource{
		res("good", "v3", address(t, "good")),
	}})
	if a := s.next(t); a.GetResponseNonce() != "n3" || a.GetErrorDetail().GetMessage() != "good: bad port" {
		t.Fatalf("answer = %v, want a NACK of n3 naming good", a)
	}

	// The next stream claims only what the handler holds, at the version it holds.
	s.end(nil)
	first := e.srv.nextStream(t).next(t)
	if got, want := first.GetInitialResourceVersions(), map[string]string{"good": "v2"}; !maps.Equal(got, want) {
		t.Errorf("InitialResourceVersions = %v, want %v", got, want)
	}
}

func TestRemoval(t *testing.T) {
	e := newEnv(t, TypeAddress)
	s := e.srv.nextStream(t)
	s.next(t)
	s.push(t, &discoveryv3.DeltaDiscoveryResponse{TypeUrl: TypeAddress, Nonce: "n1", Resources: []*discoveryv3.Resource{
		res("a", "v1", address(t, "a")), res("b", "v1", address(t, "b")), res("c", "v1", address(t, "c")),
	}})
	s.next(t)

	s.push(t, &discoveryv3.DeltaDiscoveryResponse{TypeUrl: TypeAddress, Nonce: "n2", RemovedResources: []string{"a"}})
	if a := s.next(t); a.GetResponseNonce() != "n2" || a.GetErrorDetail() != nil {
		t.Fatalf("answer = %v, want an ACK of n2", a)
	}
	if got := e.h.names(TypeAddress); !slices.Equal(got, []string{"b", "c"}) {
		t.Errorf("after removing a, handler holds %v, want [b c]", got)
	}

	// The newer field, removed_resource_names, removes too.
	s.push(t, &discoveryv3.DeltaDiscoveryResponse{TypeUrl: TypeAddress, Nonce: "n3",
		RemovedResourceNames: []*discoveryv3.ResourceName{{Name: "b"}}})
	if a := s.next(t); a.GetResponseNonce() != "n3" || a.GetErrorDetail() != nil {
		t.Fatalf("answer = %v, want an ACK of n3", a)
	}
	if got := e.h.names(TypeAddress); !slices.Equal(got, []string{"c"}) {
		t.Errorf("after removing b, handler holds %v, want [c]", got)
	}
	if n := e.c.Status().Types[0].Resources; n != 1 {
		t.Errorf("status counts %d resources, want 1", n)
	}
	s.end(nil)
	first := e.srv.nextStream(t).next(t)
	if got, want := first.GetInitialResourceVersions(), map[string]string{"c": "v1"}; !maps.Equal(got, want) {
		t.Errorf("InitialResourceVersions = %v, want %v", got, want)
	}
}

func TestReconnectResumesAndKeepsStateDuringOutage(t *testing.T) {
	e := newEnv(t, TypeAddress, TypeAuthorization)
	s := e.srv.nextStream(t)
	s.next(t)
	s.next(t)
	s.push(t, &discoveryv3.DeltaDiscoveryResponse{TypeUrl: TypeAddress, Nonce: "n1", Resources: []*discoveryv3.Resource{
		res("a", "v1", address(t, "a")), res("b", "v2", address(t, "b")),
	}})
	s.next(t)
	s.push(t, &discoveryv3.DeltaDiscoveryResponse{TypeUrl: TypeAuthorization, Nonce: "n2", Resources: []*discoveryv3.Resource{
		res("p", "v7", authz(t, "p")),
	}})
	s.next(t)
	calls := e.h.callCount()

	e.stopServer()
	waitFor(t, "the client to notice the outage", func() bool {
		st := e.c.Status()
		return !st.Connected && st.LastError != nil
	})
	if got := e.h.names(TypeAddress); !slices.Equal(got, []string{"a", "b"}) {
		t.Errorf("during the outage the handler holds addresses %v, want [a b]", got)
	}
	if got := e.h.names(TypeAuthorization); !slices.Equal(got, []string{"p"}) {
		t.Errorf("during the outage the handler holds authorizations %v, want [p]", got)
	}

	e.startServer()
	s2 := e.srv.nextStream(t)
	r1, r2 := s2.next(t), s2.next(t)
	if r1.GetTypeUrl() != TypeAddress || r1.GetNode().GetId() != "ztunnel~node-1" ||
		!maps.Equal(r1.GetInitialResourceVersions(), map[string]string{"a": "v1", "b": "v2"}) {
		t.Errorf("first request after reconnect = %v, want Address with the node and versions a:v1 b:v2", r1)
	}
	if r2.GetTypeUrl() != TypeAuthorization || r2.GetNode() != nil ||
		!maps.Equal(r2.GetInitialResourceVersions(), map[string]string{"p": "v7"}) {
		t.Errorf("second request after reconnect = %v, want Authorization without node and with version p:v7", r2)
	}
	if n := e.h.callCount(); n != calls {
		t.Errorf("handler got %d calls between the outage and the first new response, want none", n-calls)
	}

	// The resumed stream serves: the server sends only the delta.
	s2.push(t, &discoveryv3.DeltaDiscoveryResponse{TypeUrl: TypeAddress, Nonce: "n3", RemovedResources: []string{"b"}})
	if a := s2.next(t); a.GetResponseNonce() != "n3" || a.GetErrorDetail() != nil {
		t.Fatalf("answer = %v, want an ACK of n3", a)
	}
	if got := e.h.names(TypeAddress); !slices.Equal(got, []string{"a"}) {
		t.Errorf("handler holds %v, want [a]", got)
	}
	if !e.c.Status().Connected {
		t.Error("status is not connected after the reconnect")
	}
}

func TestSyncedAfterEveryType(t *testing.T) {
	e := newEnv(t, TypeAddress, TypeAuthorization)
	s := e.srv.nextStream(t)
	s.next(t)
	s.next(t)
	if isClosed(e.c.Synced()) {
		t.Fatal("synced before any response")
	}
	s.push(t, &discoveryv3.DeltaDiscoveryResponse{TypeUrl: TypeAddress, Nonce: "n1", Resources: []*discoveryv3.Resource{
		res("a", "v1", address(t, "a")),
	}})
	s.next(t)
	if isClosed(e.c.Synced()) {
		t.Fatal("synced with no Authorization response yet")
	}
	if st := e.c.Status(); !st.Types[0].Synced || st.Types[1].Synced {
		t.Errorf("status = %+v, want only Address synced", st)
	}
	// An empty response counts: the control plane has no policies.
	s.push(t, &discoveryv3.DeltaDiscoveryResponse{TypeUrl: TypeAuthorization, Nonce: "n2"})
	s.next(t)
	select {
	case <-e.c.Synced():
	case <-time.After(timeout):
		t.Fatal("not synced after a response of every type")
	}
}

func TestNodeOncePerStream(t *testing.T) {
	e := newEnv(t, TypeAddress, TypeAuthorization)
	for i := range 2 {
		s := e.srv.nextStream(t)
		r1, r2 := s.next(t), s.next(t)
		if r1.GetNode().GetId() != "ztunnel~node-1" || r2.GetNode() != nil {
			t.Errorf("stream %d: nodes %v, %v, want the node on the first request only", i, r1.GetNode(), r2.GetNode())
		}
		s.push(t, &discoveryv3.DeltaDiscoveryResponse{TypeUrl: TypeAddress, Nonce: "n"})
		if a := s.next(t); a.GetNode() != nil {
			t.Errorf("stream %d: ACK carries the node", i)
		}
		s.end(nil) // a clean close is a reason to reconnect too
	}
	if err := e.c.Status().LastError; !errors.Is(err, errServerClosed) {
		t.Errorf("last error = %v, want %v", err, errServerClosed)
	}
}

func TestStreamErrorReconnects(t *testing.T) {
	e := newEnv(t, TypeAddress)
	s := e.srv.nextStream(t)
	s.next(t)
	s.end(status.Error(codes.Unavailable, "shutting down"))
	e.srv.nextStream(t).next(t)
	if err := e.c.Status().LastError; status.Code(errors.Unwrap(err)) != codes.Unavailable {
		t.Errorf("last error = %v, want the stream's Unavailable", err)
	}
}

func TestNackOfUnsubscribedType(t *testing.T) {
	e := newEnv(t, TypeAddress)
	s := e.srv.nextStream(t)
	s.next(t)
	s.push(t, &discoveryv3.DeltaDiscoveryResponse{TypeUrl: TypeAuthorization, Nonce: "n1", Resources: []*discoveryv3.Resource{
		res("p", "v1", authz(t, "p")),
	}})
	nack := s.next(t)
	if nack.GetTypeUrl() != TypeAuthorization || nack.GetResponseNonce() != "n1" || nack.GetErrorDetail() == nil {
		t.Fatalf("answer = %v, want a NACK of n1", nack)
	}
	if n := e.h.callCount(); n != 0 {
		t.Errorf("handler called %d times, want 0", n)
	}
}

func TestRunReturnsOnCancel(t *testing.T) {
	t.Run("stream open", func(t *testing.T) {
		e := newEnv(t, TypeAddress)
		s := e.srv.nextStream(t)
		s.next(t)
		e.stopRun(t)
		select {
		case <-s.done:
		case <-time.After(timeout):
			t.Fatal("the server's stream did not end after Run returned")
		}
	})
	t.Run("backing off", func(t *testing.T) {
		e := newEnv(t, TypeAddress, withBackoff(time.Hour))
		e.stopServer()
		waitFor(t, "a failed stream", func() bool { return e.c.Status().LastError != nil })
		e.stopRun(t)
	})
}

func TestNewClientValidates(t *testing.T) {
	conn := fakeConn{}
	h := &handler{}
	for _, tc := range []struct {
		name string
		cfg  Config
	}{
		{"no conn", Config{Types: []string{TypeAddress}, Handler: h}},
		{"no handler", Config{Conn: conn, Types: []string{TypeAddress}}},
		{"no types", Config{Conn: conn, Handler: h}},
		{"empty type", Config{Conn: conn, Types: []string{""}, Handler: h}},
		{"duplicate type", Config{Conn: conn, Types: []string{TypeAddress, TypeAddress}, Handler: h}},
		{"max below min", Config{Conn: conn, Types: []string{TypeAddress}, Handler: h, MinBackoff: time.Second, MaxBackoff: time.Millisecond}},
		{"negative min", Config{Conn: conn, Types: []string{TypeAddress}, Handler: h, MinBackoff: -time.Second}},
	} {
		if _, err := NewClient(tc.cfg); err == nil {
			t.Errorf("%s: NewClient accepted %+v", tc.name, tc.cfg)
		}
	}
	c, err := NewClient(Config{Conn: conn, Types: []string{TypeAddress, TypeAuthorization}, Handler: h})
	if err != nil {
		t.Fatalf("NewClient of a valid config: %v", err)
	}
	if c.cfg.MinBackoff != 100*time.Millisecond || c.cfg.MaxBackoff != 15*time.Second || c.log == nil {
		t.Errorf("defaults not filled in: %+v", c.cfg)
	}
}

func TestTypeURLsMatchTheMessages(t *testing.T) {
	if got := address(t, "a").GetTypeUrl(); got != TypeAddress {
		t.Errorf("Address payload type = %s, want %s", got, TypeAddress)
	}
	if got := authz(t, "p").GetTypeUrl(); got != TypeAuthorization {
		t.Errorf("Authorization payload type = %s, want %s", got, TypeAuthorization)
	}
}

// env is one client running against a test ADS server on loopback TCP.
type env struct {
	t       *testing.T
	addr    string
	srv     *adsServer
	gs      *grpc.Server
	h       *handler
	log     *testutil.SyncBuffer
	c       *Client
	cancel  context.CancelFunc
	runDone chan error
}

type envOption func(*Config)

func withBackoff(d time.Duration) envOption {
	return func(c *Config) { c.MinBackoff, c.MaxBackoff = d, d }
}

// newEnv starts a server and a client running against it; args are the
// type URLs to subscribe to (strings) and envOptions.
func newEnv(t *testing.T, args ...any) *env {
	t.Helper()
	var types []string
	var opts []envOption
	for _, a := range args {
		switch a := a.(type) {
		case string:
			types = append(types, a)
		case envOption:
			opts = append(opts, a)
		}
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	e := &env{t: t, addr: lis.Addr().String(), srv: &adsServer{streams: make(chan *serverStream, 16)},
		h: &handler{}, log: &testutil.SyncBuffer{}, runDone: make(chan error, 1)}
	e.serve(lis)
	t.Cleanup(func() { e.stopServer() })

	conn, err := grpc.NewClient(e.addr, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           grpcbackoff.Config{BaseDelay: 5 * time.Millisecond, Multiplier: 1.5, MaxDelay: 50 * time.Millisecond},
			MinConnectTimeout: time.Second,
		}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })

	cfg := Config{
		Conn: conn, Node: &corev3.Node{Id: "ztunnel~node-1"}, Types: types, Handler: e.h,
		Log:        slog.New(slog.NewTextHandler(e.log, &slog.HandlerOptions{Level: slog.LevelDebug})),
		MinBackoff: 5 * time.Millisecond, MaxBackoff: 50 * time.Millisecond,
	}
	for _, o := range opts {
		o(&cfg)
	}
	if e.c, err = NewClient(cfg); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	e.cancel = cancel
	go func() { e.runDone <- e.c.Run(ctx) }()
	t.Cleanup(func() { e.stopRun(t) })
	return e
}

// stopRun cancels Run and waits for it to return; it may be called twice.
func (e *env) stopRun(t *testing.T) {
	t.Helper()
	e.cancel()
	if e.runDone == nil {
		return
	}
	select {
	case err := <-e.runDone:
		if err != nil {
			t.Errorf("Run returned %v, want nil after cancel", err)
		}
		e.runDone = nil
	case <-time.After(timeout):
		t.Fatal("Run did not return after cancel")
	}
}

func (e *env) serve(lis net.Listener) {
	e.gs = grpc.NewServer()
	discoveryv3.RegisterAggregatedDiscoveryServiceServer(e.gs, e.srv)
	go e.gs.Serve(lis)
}

// stopServer takes the control plane down, ending its streams.
func (e *env) stopServer() {
	if e.gs != nil {
		e.gs.Stop()
		e.gs = nil
	}
}

// startServer brings the control plane back on the same address.
func (e *env) startServer() {
	e.t.Helper()
	lis, err := net.Listen("tcp", e.addr)
	if err != nil {
		e.t.Fatal(err)
	}
	e.serve(lis)
}

// adsServer is a scripted control plane: each stream is handed to the test,
// which reads the client's requests and pushes responses.
type adsServer struct {
	discoveryv3.UnimplementedAggregatedDiscoveryServiceServer
	streams chan *serverStream
}

type serverStream struct {
	reqs  chan *discoveryv3.DeltaDiscoveryRequest
	resps chan *discoveryv3.DeltaDiscoveryResponse
	ends  chan error
	done  chan struct{} // closed when the stream's handler returned
}

func (a *adsServer) DeltaAggregatedResources(stream discoveryv3.AggregatedDiscoveryService_DeltaAggregatedResourcesServer) error {
	s := &serverStream{
		reqs:  make(chan *discoveryv3.DeltaDiscoveryRequest, 64),
		resps: make(chan *discoveryv3.DeltaDiscoveryResponse),
		ends:  make(chan error, 1),
		done:  make(chan struct{}),
	}
	defer close(s.done)
	ctx := stream.Context()
	recvErr := make(chan error, 1)
	go func() {
		for {
			req, err := stream.Recv()
			if err != nil {
				recvErr <- err
				return
			}
			select {
			case s.reqs <- req:
			case <-ctx.Done():
				return
			}
		}
	}()
	select {
	case a.streams <- s:
	case <-ctx.Done():
		return ctx.Err()
	}
	for {
		select {
		case r := <-s.resps:
			if err := stream.Send(r); err != nil {
				return err
			}
		case err := <-s.ends:
			return err
		case err := <-recvErr:
			return err
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

func (a *adsServer) nextStream(t *testing.T) *serverStream {
	t.Helper()
	select {
	case s := <-a.streams:
		return s
	case <-time.After(timeout):
		t.Fatal("no stream from the client")
		return nil
	}
}

func (s *serverStream) next(t *testing.T) *discoveryv3.DeltaDiscoveryRequest {
	t.Helper()
	select {
	case r := <-s.reqs:
		return r
	case <-time.After(timeout):
		t.Fatal("no request from the client")
		return nil
	}
}

func (s *serverStream) push(t *testing.T, r *discoveryv3.DeltaDiscoveryResponse) {
	t.Helper()
	select {
	case s.resps <- r:
	case <-s.done:
		t.Fatal("push on an ended stream")
	case <-time.After(timeout):
		t.Fatal("stream not taking responses")
	}
}

// end makes the server end the stream with err (nil: a clean close).
func (s *serverStream) end(err error) { s.ends <- err }

// handler is a state store that keeps the payloads it is given and rejects
// the names it is told to.
type handler struct {
	mu      sync.Mutex
	held    map[string]map[string]*anypb.Any
	rejects map[string]error
	seen    map[string]bool
	calls   int
}

func (h *handler) Apply(typeURL string, updated []Resource, removed []string) map[string]error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.calls++
	if h.held == nil {
		h.held = map[string]map[string]*anypb.Any{}
		h.seen = map[string]bool{}
	}
	if h.held[typeURL] == nil {
		h.held[typeURL] = map[string]*anypb.Any{}
	}
	errs := map[string]error{}
	for _, r := range updated {
		h.seen[r.Name] = true
		if err := h.rejects[r.Name]; err != nil {
			errs[r.Name] = err
			continue
		}
		h.held[typeURL][r.Name] = r.Body
	}
	for _, name := range removed {
		delete(h.held[typeURL], name)
	}
	return errs
}

func (h *handler) reject(name string, err error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.rejects == nil {
		h.rejects = map[string]error{}
	}
	h.rejects[name] = err
}

func (h *handler) names(typeURL string) []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Sorted(maps.Keys(h.held[typeURL]))
}

func (h *handler) offered(name string) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.seen[name]
}

func (h *handler) callCount() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.calls
}

func res(name, version string, body *anypb.Any) *discoveryv3.Resource {
	return &discoveryv3.Resource{Name: name, Version: version, Resource: body}
}

func address(t *testing.T, uid string) *anypb.Any {
	t.Helper()
	a, err := anypb.New(&workload.Address{Type: &workload.Address_Workload{Workload: &workload.Workload{Uid: uid, Name: uid}}})
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func authz(t *testing.T, name string) *anypb.Any {
	t.Helper()
	a, err := anypb.New(&security.Authorization{Name: name, Namespace: "default"})
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func isClosed(c <-chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}

// waitFor polls cond until it holds, failing the test after timeout.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// fakeConn only has to be non-nil: validation never uses it.
type fakeConn struct{ grpc.ClientConnInterface }

// A client started with what the handler already holds (a restarted data
// plane's persisted config) names it in its first stream's initial
// versions, so the control plane sends only the difference.
func TestHeldAtStartIsResumed(t *testing.T) {
	held := func(c *Config) { c.Held = map[string]map[string]string{TypeAddress: {"a": "v1", "gone": "v3"}} }
	e := newEnv(t, TypeAddress, TypeAuthorization, envOption(held))
	s := e.srv.nextStream(t)
	r1, r2 := s.next(t), s.next(t)
	if !maps.Equal(r1.GetInitialResourceVersions(), map[string]string{"a": "v1", "gone": "v3"}) {
		t.Errorf("first request = %v, want the held versions a:v1 gone:v3", r1)
	}
	if len(r2.GetInitialResourceVersions()) != 0 {
		t.Errorf("second request = %v, want no versions for a type nothing is held of", r2)
	}
	if st := e.c.Status(); st.Types[0].Resources != 2 {
		t.Errorf("status = %+v, want 2 Address resources held", st)
	}
	if _, err := NewClient(Config{Conn: e.c.cfg.Conn, Handler: e.h, Types: []string{TypeAddress},
		Held: map[string]map[string]string{TypeAuthorization: {"p": "v1"}}}); err == nil || !strings.Contains(err.Error(), TypeAuthorization) {
		t.Errorf("held resources of a type not subscribed: %v", err)
	}
}

// Demand asks for one name beside the wildcard, once however many ask,
// withdraws it when the last asker releases it, re-asks on a new stream
// for names still wanted, and asks for no more than MaxDemanded names.
func TestDemand(t *testing.T) {
	e := newEnv(t, TypeAddress, TypeAuthorization)
	s := e.srv.nextStream(t)
	s.next(t)
	s.next(t)

	r1 := e.c.Demand(TypeAddress, "/10.0.0.7")
	r2 := e.c.Demand(TypeAddress, "/10.0.0.7")
	req := s.next(t)
	if req.GetTypeUrl() != TypeAddress || !slices.Equal(req.GetResourceNamesSubscribe(), []string{"/10.0.0.7"}) || req.GetResponseNonce() != "" {
		t.Fatalf("demand request = %v, want a subscription to /10.0.0.7 of Address", req)
	}
	r1()
	r1() // a second release of one demand changes nothing
	s.push(t, &discoveryv3.DeltaDiscoveryResponse{TypeUrl: TypeAddress, Nonce: "n1", Resources: []*discoveryv3.Resource{res("a", "v1", address(t, "a"))}})
	if ack := s.next(t); ack.GetResponseNonce() != "n1" || len(ack.GetResourceNamesUnsubscribe()) != 0 {
		t.Fatalf("after one of two releases: %v, want only the ACK of n1", ack)
	}

	// A new stream carries the names still wanted.
	e.stopServer()
	e.startServer()
	s2 := e.srv.nextStream(t)
	if first := s2.next(t); !slices.Equal(first.GetResourceNamesSubscribe(), []string{"*", "/10.0.0.7"}) {
		t.Fatalf("first request of a new stream = %v, want the wildcard and /10.0.0.7", first)
	}
	s2.next(t)
	r2()
	if req := s2.next(t); !slices.Equal(req.GetResourceNamesUnsubscribe(), []string{"/10.0.0.7"}) {
		t.Fatalf("after the last release: %v, want an unsubscription of /10.0.0.7", req)
	}

	var releases []func()
	for i := range MaxDemanded + 5 {
		releases = append(releases, e.c.Demand(TypeAddress, "/10.1."+strconv.Itoa(i/256)+"."+strconv.Itoa(i%256)))
	}
	// The client may send the demands one per request or gather several
	// into one: read until every name up to the cap was asked for.
	asked := map[string]bool{}
	for len(asked) < MaxDemanded {
		for _, n := range s2.next(t).GetResourceNamesSubscribe() {
			asked[n] = true
		}
	}
	if len(asked) != MaxDemanded {
		t.Fatalf("%d names asked for, want the cap %d", len(asked), MaxDemanded)
	}
	select {
	case req := <-s2.reqs:
		t.Fatalf("a demand beyond MaxDemanded was sent: %v", req)
	case <-time.After(200 * time.Millisecond):
	}
	if got := len(e.c.demandedNames()[TypeAddress]); got != MaxDemanded {
		t.Errorf("%d names demanded, want the cap %d", got, MaxDemanded)
	}
	for _, r := range releases {
		r()
	}
	if got := len(e.c.demandedNames()); got != 0 {
		t.Errorf("%d types still demanded after every release", got)
	}
	if release := e.c.Demand("type.googleapis.com/other", "x"); release == nil {
		t.Error("Demand of a type not subscribed returned no release")
	}
}
