package xds

import (
	"bytes"
	"context"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/zmesh/zmesh/internal/testutil"
	"github.com/zmesh/zmesh/waypoint/config"
)

const timeout = 20 * time.Second

const (
	httpChain = "inbound-vip|80|http|a.ns.svc.cluster.local"
	tcpChain  = "inbound-vip|9000|tcp|a.ns.svc.cluster.local"
	hcmType   = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
)

// listenerYAML is the contract's listener for one service with an HTTP
// port 80 and a TCP port 9000 on VIP 10.96.0.1; rc names the HTTP chain's
// route configuration.
func listenerYAML(rc string) string {
	return `name: main_internal
filterChains:
- name: "` + httpChain + `"
  filterChainMatch: {destinationPort: 80, prefixRanges: [{addressPrefix: 10.96.0.1, prefixLen: 32}]}
  filters:
  - name: envoy.filters.network.http_connection_manager
    typedConfig:
      "@type": ` + hcmType + `
      statPrefix: "` + httpChain + `"
      rds: {routeConfigName: "` + rc + `", configSource: {ads: {}, resourceApiVersion: V3}}
      httpFilters: [{name: envoy.filters.http.router, typedConfig: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}]
- name: "` + tcpChain + `"
  filterChainMatch: {destinationPort: 9000, prefixRanges: [{addressPrefix: 10.96.0.1, prefixLen: 32}]}
  filters:
  - name: envoy.filters.network.tcp_proxy
    typedConfig: {"@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy, statPrefix: "` + tcpChain + `", cluster: "` + tcpChain + `"}
`
}

func routeYAML(name, cluster string) string {
	return "name: \"" + name + "\"\nvirtualHosts: [{name: 'a.ns.svc.cluster.local:80', domains: ['*'], routes: [{match: {prefix: /}, route: {cluster: \"" + cluster + "\"}}]}]\n"
}

const (
	clusterName = "inbound-vip|80|http|a.ns.svc.cluster.local"
	clusterYAML = "name: \"" + clusterName + "\"\ntype: EDS\nedsClusterConfig: {edsConfig: {ads: {}, resourceApiVersion: V3}}\n"
	claYAML     = "clusterName: \"" + clusterName + "\"\nendpoints: [{lbEndpoints: [{endpoint: {address: {socketAddress: {address: 10.1.0.5, portValue: 8080}}}, " +
		"metadata: {filterMetadata: {zmesh: {identity: 'spiffe://cluster.local/ns/ns/sa/a'}}}}]}]\n"
)

// ads is a scripted control plane: the test reads the waypoint's requests
// and sends responses on the stream it opened.
type ads struct {
	discoveryv3.UnimplementedAggregatedDiscoveryServiceServer
	streams chan *stream
}

type stream struct {
	srv  discoveryv3.AggregatedDiscoveryService_DeltaAggregatedResourcesServer
	reqs chan *discoveryv3.DeltaDiscoveryRequest
	n    int
}

func (a *ads) DeltaAggregatedResources(srv discoveryv3.AggregatedDiscoveryService_DeltaAggregatedResourcesServer) error {
	s := &stream{srv: srv, reqs: make(chan *discoveryv3.DeltaDiscoveryRequest, 64)}
	go func() {
		for {
			r, err := srv.Recv()
			if err != nil {
				close(s.reqs)
				return
			}
			s.reqs <- r
		}
	}()
	select {
	case a.streams <- s:
	case <-srv.Context().Done():
	}
	<-srv.Context().Done()
	return nil
}

func (s *stream) next(t *testing.T) *discoveryv3.DeltaDiscoveryRequest {
	t.Helper()
	select {
	case r, ok := <-s.reqs:
		if !ok {
			t.Fatal("stream ended")
		}
		return r
	case <-time.After(timeout):
		t.Fatal("no request from the waypoint")
		return nil
	}
}

// push sends one response of typeURL and returns the waypoint's answer.
func (s *stream) push(t *testing.T, typeURL string, res map[string]*anypb.Any, removed ...string) *discoveryv3.DeltaDiscoveryRequest {
	t.Helper()
	s.n++
	nonce := typeURL + "/" + string(rune('0'+s.n))
	resp := &discoveryv3.DeltaDiscoveryResponse{TypeUrl: typeURL, Nonce: nonce, RemovedResources: removed}
	for name, body := range res {
		resp.Resources = append(resp.Resources, &discoveryv3.Resource{Name: name, Version: nonce, Resource: body})
	}
	if err := s.srv.Send(resp); err != nil {
		t.Fatal(err)
	}
	r := s.next(t)
	if r.GetResponseNonce() != nonce {
		t.Fatalf("answer %v, want one for nonce %s", r, nonce)
	}
	return r
}

type applied struct {
	mu   sync.Mutex
	snap []*config.Snapshot
}

func (a *applied) add(s *config.Snapshot) { a.mu.Lock(); a.snap = append(a.snap, s); a.mu.Unlock() }
func (a *applied) list() []*config.Snapshot {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]*config.Snapshot(nil), a.snap...)
}

// connect serves ADS on a loopback port and runs a client with opts (as
// a waypoint node, on a connection to that port) until the test ends; it
// returns the client and the stream it opened.
func connect(t *testing.T, opts Options) (*Client, *stream) {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &ads{streams: make(chan *stream, 4)}
	gs := grpc.NewServer()
	discoveryv3.RegisterAggregatedDiscoveryServiceServer(gs, srv)
	go gs.Serve(lis)
	t.Cleanup(gs.Stop)
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	opts.Conn = conn
	opts.Node = &corev3.Node{Id: "router~10.1.0.9~wp-1.ns~ns.svc.cluster.local"}
	c, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { c.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	select {
	case s := <-srv.streams:
		return c, s
	case <-time.After(timeout):
		t.Fatal("the waypoint opened no stream")
		return nil, nil
	}
}

func start(t *testing.T) (*Client, *stream, *applied, *bytes.Buffer) {
	got := &applied{}
	logs := &bytes.Buffer{}
	c, s := connect(t, Options{OnSnapshot: got.add, Log: slog.New(slog.NewTextHandler(&lockedWriter{w: logs}, nil))})
	var types []string
	for range Types {
		r := s.next(t)
		if len(r.GetResourceNamesSubscribe()) != 1 || r.GetResourceNamesSubscribe()[0] != "*" {
			t.Errorf("subscription %v, want a wildcard", r)
		}
		types = append(types, r.GetTypeUrl())
	}
	if strings.Join(types, ",") != strings.Join(Types, ",") {
		t.Errorf("subscribed to %v, want %v", types, Types)
	}
	return c, s, got, logs
}

type lockedWriter struct {
	mu sync.Mutex
	w  *bytes.Buffer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

func ack(t *testing.T, what string, r *discoveryv3.DeltaDiscoveryRequest) {
	t.Helper()
	if r.GetErrorDetail() != nil {
		t.Fatalf("%s NACKed: %s", what, r.GetErrorDetail().GetMessage())
	}
}

func nack(t *testing.T, what string, r *discoveryv3.DeltaDiscoveryRequest, want string) {
	t.Helper()
	if got := r.GetErrorDetail().GetMessage(); got != want {
		t.Fatalf("%s: answer %q, want NACK %q", what, got, want)
	}
}

// TestSnapshotOnlyWhenConsistent: no snapshot until every type has been
// answered and every chain's route configuration is held; then one per
// change.
func TestSnapshotOnlyWhenConsistent(t *testing.T) {
	c, s, got, _ := start(t)
	ack(t, "clusters", s.push(t, config.TypeCluster, map[string]*anypb.Any{clusterName: testutil.AnyYAML(t, config.TypeCluster, clusterYAML)}))
	ack(t, "endpoints", s.push(t, config.TypeAssignment, map[string]*anypb.Any{clusterName: testutil.AnyYAML(t, config.TypeAssignment, claYAML)}))
	ack(t, "listener", s.push(t, config.TypeListener, map[string]*anypb.Any{"main_internal": testutil.AnyYAML(t, config.TypeListener, listenerYAML(httpChain))}))
	ack(t, "an unrelated route", s.push(t, config.TypeRoute, map[string]*anypb.Any{"other": testutil.AnyYAML(t, config.TypeRoute, routeYAML("other", clusterName))}))
	if n := len(got.list()); n != 0 || c.Snapshot() != nil {
		t.Fatalf("%d snapshots applied before the chain's route configuration arrived", n)
	}
	ack(t, "route", s.push(t, config.TypeRoute, map[string]*anypb.Any{httpChain: testutil.AnyYAML(t, config.TypeRoute, routeYAML(httpChain, clusterName))}))
	snaps := got.list()
	if len(snaps) != 1 {
		t.Fatalf("%d snapshots, want 1", len(snaps))
	}
	sn := snaps[0]
	if c.Snapshot() != sn || len(sn.Chains) != 2 || sn.Routes[httpChain] == nil || sn.Clusters[clusterName] == nil || sn.Assignments[clusterName] == nil ||
		sn.Chains[netip.MustParseAddrPort("10.96.0.1:80")].RouteConfig != httpChain || sn.Versions[config.TypeRoute][httpChain] == "" {
		t.Fatalf("snapshot %+v", sn)
	}
	// The listener switches to a route configuration not sent yet: the
	// waypoint keeps the last snapshot until it comes.
	ack(t, "listener v2", s.push(t, config.TypeListener, map[string]*anypb.Any{"main_internal": testutil.AnyYAML(t, config.TypeListener, listenerYAML("v2"))}))
	if n := len(got.list()); n != 1 {
		t.Fatalf("%d snapshots after a listener whose routes are missing, want 1", n)
	}
	ack(t, "route v2", s.push(t, config.TypeRoute, map[string]*anypb.Any{"v2": testutil.AnyYAML(t, config.TypeRoute, routeYAML("v2", clusterName))}))
	if snaps := got.list(); len(snaps) != 2 || snaps[1].Chains[netip.MustParseAddrPort("10.96.0.1:80")].RouteConfig != "v2" {
		t.Fatalf("snapshots %v, want a second one routing with v2", snaps)
	}
}

// TestNackKeepsLastGood: a bad resource of each type is NACKed with its
// field path, the others of the response are applied, and the waypoint
// keeps serving the last good copy.
func TestNackKeepsLastGood(t *testing.T) {
	c, s, got, _ := start(t)
	ack(t, "clusters", s.push(t, config.TypeCluster, map[string]*anypb.Any{clusterName: testutil.AnyYAML(t, config.TypeCluster, clusterYAML)}))
	ack(t, "endpoints", s.push(t, config.TypeAssignment, map[string]*anypb.Any{clusterName: testutil.AnyYAML(t, config.TypeAssignment, claYAML)}))
	ack(t, "listener", s.push(t, config.TypeListener, map[string]*anypb.Any{"main_internal": testutil.AnyYAML(t, config.TypeListener, listenerYAML(httpChain))}))
	ack(t, "route", s.push(t, config.TypeRoute, map[string]*anypb.Any{httpChain: testutil.AnyYAML(t, config.TypeRoute, routeYAML(httpChain, clusterName))}))
	first := c.Snapshot()
	if first == nil {
		t.Fatal("no snapshot")
	}

	badListener := strings.Replace(listenerYAML(httpChain), "name: main_internal", "name: main_internal\nuseOriginalDst: true", 1)
	nack(t, "bad listener", s.push(t, config.TypeListener, map[string]*anypb.Any{"main_internal": testutil.AnyYAML(t, config.TypeListener, badListener)}),
		`main_internal: listeners "main_internal": use_original_dst: not supported`)
	badRoute := strings.Replace(routeYAML(httpChain, clusterName), "domains: ['*']", "domains: ['*'], requireTls: ALL", 1)
	nack(t, "bad route", s.push(t, config.TypeRoute, map[string]*anypb.Any{httpChain: testutil.AnyYAML(t, config.TypeRoute, badRoute)}),
		httpChain+": "+httpChain+": virtual_hosts[0].require_tls: not supported")
	nack(t, "bad cluster", s.push(t, config.TypeCluster, map[string]*anypb.Any{
		clusterName: testutil.AnyYAML(t, config.TypeCluster, clusterYAML+"transportSocket: {name: tls}\n"),
		"good":      testutil.AnyYAML(t, config.TypeCluster, strings.Replace(clusterYAML, clusterName, "good", 1)),
	}), clusterName+`: clusters "`+clusterName+`": transport_socket.name: "tls" not supported: endpoints are dialled over HBONE, verifying the identity in their metadata`)
	nack(t, "misnamed", s.push(t, config.TypeAssignment, map[string]*anypb.Any{"x": testutil.AnyYAML(t, config.TypeAssignment, claYAML)}),
		`x: resource is named "x" but its body names itself "`+clusterName+`"`)
	nack(t, "bad endpoints", s.push(t, config.TypeAssignment, map[string]*anypb.Any{
		clusterName: testutil.AnyYAML(t, config.TypeAssignment, strings.Replace(claYAML, "10.1.0.5", "0.0.0.0", 1)),
	}), clusterName+`: endpoints "`+clusterName+`": endpoints[0].lb_endpoints[0].endpoint.address.socket_address.address: 0.0.0.0 cannot be an endpoint`)

	snaps := got.list()
	if len(snaps) != 2 {
		t.Fatalf("%d snapshots, want 2 (the first, and the one with the good cluster of the partly NACKed response)", len(snaps))
	}
	last := snaps[1]
	if last.Clusters["good"] == nil || last.Clusters[clusterName] == nil || last.Resources[config.TypeListener]["main_internal"] == nil ||
		!proto.Equal(last.Resources[config.TypeRoute][httpChain], first.Resources[config.TypeRoute][httpChain]) ||
		!proto.Equal(last.Resources[config.TypeAssignment][clusterName], first.Resources[config.TypeAssignment][clusterName]) {
		t.Fatalf("last snapshot did not keep the last good copies: %+v", last)
	}
	st := c.Status()
	for _, ts := range st.Types {
		if ts.TypeURL == config.TypeListener && !strings.Contains(ts.NackMessage, "use_original_dst") {
			t.Errorf("listener status %+v does not record the NACK", ts)
		}
	}
}

// TestListenersClaimingOneDestination: a second listener claiming a
// destination the first serves is refused by name; the first stays.
func TestListenersClaimingOneDestination(t *testing.T) {
	c, s, _, _ := start(t)
	ack(t, "clusters", s.push(t, config.TypeCluster, nil))
	ack(t, "endpoints", s.push(t, config.TypeAssignment, nil))
	ack(t, "routes", s.push(t, config.TypeRoute, map[string]*anypb.Any{httpChain: testutil.AnyYAML(t, config.TypeRoute, routeYAML(httpChain, clusterName))}))
	ack(t, "listener", s.push(t, config.TypeListener, map[string]*anypb.Any{"main_internal": testutil.AnyYAML(t, config.TypeListener, listenerYAML(httpChain))}))
	other := strings.Replace(listenerYAML(httpChain), "name: main_internal", "name: other", 1)
	nack(t, "second listener", s.push(t, config.TypeListener, map[string]*anypb.Any{"other": testutil.AnyYAML(t, config.TypeListener, other)}),
		`other: listeners "other": filter_chains: chain "inbound-vip|80|http|a.ns.svc.cluster.local" matches destination 10.96.0.1:80, which listener "main_internal" already serves`)
	if sn := c.Snapshot(); sn == nil || len(sn.Resources[config.TypeListener]) != 1 {
		t.Fatalf("snapshot %+v, want the first listener only", sn)
	}
}
