package main

import (
	"encoding/json"
	"log/slog"
	"net"
	"net/http/httptest"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/zmesh/zmesh/api/workload"
	"github.com/zmesh/zmesh/api/workload/security"
	"github.com/zmesh/zmesh/controlplane/xds"
)

// controlPlane is a real xDS server with a proxy connected to it over
// delta ADS, and its /debug/syncz served over HTTP.
type controlPlane struct {
	t      *testing.T
	s      *xds.Server
	stream discoveryv3.AggregatedDiscoveryService_DeltaAggregatedResourcesClient
	syncz  string // the address serving /debug/syncz
}

func newControlPlane(t *testing.T) *controlPlane {
	t.Helper()
	s := xds.New(slog.New(slog.DiscardHandler), nil, xds.TypeAddress, xds.TypeAuthorization)
	wls, _, pols := fixture()
	set(t, s, xds.TypeAddress, wls[0])
	set(t, s, xds.TypeAuthorization, pols[0])

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer()
	s.Register(g)
	go g.Serve(ln)
	t.Cleanup(g.Stop)
	cc, err := grpc.NewClient(ln.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	stream, err := discoveryv3.NewAggregatedDiscoveryServiceClient(cc).DeltaAggregatedResources(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	node := &corev3.Node{Id: "ztunnel~node-a", Metadata: &structpb.Struct{Fields: map[string]*structpb.Value{"NODE_NAME": structpb.NewStringValue("node-a")}}}
	for _, typ := range []string{xds.TypeAddress, xds.TypeAuthorization} {
		if err := stream.Send(&discoveryv3.DeltaDiscoveryRequest{Node: node, TypeUrl: typ}); err != nil {
			t.Fatal(err)
		}
	}
	srv := httptest.NewServer(s.SynczHandler())
	t.Cleanup(srv.Close)
	return &controlPlane{t: t, s: s, stream: stream, syncz: srv.URL}
}

func set(t *testing.T, s *xds.Server, typeURL string, msgs ...proto.Message) {
	t.Helper()
	res := map[string]proto.Message{}
	for _, m := range msgs {
		switch m := m.(type) {
		case *workload.Workload:
			res[m.Uid] = &workload.Address{Type: &workload.Address_Workload{Workload: m}}
		case *security.Authorization:
			res[m.Namespace+"/"+m.Name] = m
		}
	}
	if _, _, err := s.Set(typeURL, res); err != nil {
		t.Fatal(err)
	}
}

// answer receives one response and acks it, or nacks it with a reason.
func (c *controlPlane) answer(nack string) {
	c.t.Helper()
	r, err := c.stream.Recv()
	if err != nil {
		c.t.Fatal(err)
	}
	req := &discoveryv3.DeltaDiscoveryRequest{TypeUrl: r.TypeUrl, ResponseNonce: r.Nonce}
	if nack != "" {
		req.ErrorDetail = &status.Status{Code: int32(codes.InvalidArgument), Message: nack}
	}
	if err := c.stream.Send(req); err != nil {
		c.t.Fatal(err)
	}
}

// waitStates waits until the server reports the proxy's types in these
// states (by type URL).
func (c *controlPlane) waitStates(want map[string]string) {
	c.t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		got := map[string]string{}
		for _, p := range c.s.Syncz() {
			for _, ts := range p.Types {
				got[ts.TypeURL] = ts.State
			}
		}
		match := true
		for typ, st := range want {
			match = match && got[typ] == st
		}
		if match {
			return
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("proxy states %v, want %v", got, want)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestProxyStatusSyncedThenNacked(t *testing.T) {
	cp := newControlPlane(t)
	cp.answer("")
	cp.answer("")
	cp.waitStates(map[string]string{xds.TypeAddress: "SYNCED", xds.TypeAuthorization: "SYNCED"})

	stdout, stderr, code := zmeshctl(t, "proxy-status", "--zmeshd", cp.syncz)
	if code != 0 || stderr != "" {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	rows := fields(stdout)
	if want := []string{"NAME", "NODE", "ADDRESSES", "AUTHORIZATIONS", "ACKED-VERSION", "AGE"}; !slices.Equal(rows[0], want) {
		t.Errorf("header %q, want %q", rows[0], want)
	}
	if len(rows) != 2 || !slices.Equal(rows[1][:5], []string{"ztunnel~node-a", "node-a", "SYNCED", "SYNCED", "1/1"}) {
		t.Fatalf("got\n%s", stdout)
	}
	t.Logf("synced:\n%s", stdout)

	// The proxy rejects the next authorization push.
	_, _, pols := fixture()
	set(t, cp.s, xds.TypeAuthorization, pols[0], pols[1], pols[2])
	cp.answer(`resource "istio-system/deny-external": unsupported`)
	cp.waitStates(map[string]string{xds.TypeAddress: "SYNCED", xds.TypeAuthorization: "NACKED"})

	stdout, stderr, code = zmeshctl(t, "proxy-status", "ztunnel~node-a", "--zmeshd", strings.TrimPrefix(cp.syncz, "http://"))
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	if row := fields(stdout)[1]; !slices.Equal(row[2:5], []string{"SYNCED", "NACKED", "1/1"}) {
		t.Errorf("after a NACK got\n%s", stdout)
	}
	if want := "warning: ztunnel~node-a rejected " + xds.TypeAuthorization + ` version 2: resource "istio-system/deny-external": unsupported` + "\n"; stderr != want {
		t.Errorf("stderr %q, want %q", stderr, want)
	}
	t.Logf("nacked:\n%s%s", stdout, stderr)

	// -o json is zmeshd's own record.
	stdout, _, code = zmeshctl(t, "proxy-status", "--zmeshd", cp.syncz, "-o", "json")
	var got []xds.ProxyStatus
	if err := json.Unmarshal([]byte(stdout), &got); code != 0 || err != nil {
		t.Fatalf("exit %d, %v:\n%s", code, err, stdout)
	}
	// Through JSON, as times lose their monotonic reading there.
	var want []xds.ProxyStatus
	b, _ := json.Marshal(cp.s.Syncz())
	json.Unmarshal(b, &want)
	if len(got) != 1 || !reflect.DeepEqual(got, want) {
		t.Errorf("-o json\n%+v\nwant\n%+v", got, want)
	}

	// A name not connected.
	_, stderr, code = zmeshctl(t, "proxy-status", "ztunnel~node-z", "--zmeshd", cp.syncz)
	if code != exitFailure || !strings.Contains(stderr, `no proxy "ztunnel~node-z"`) {
		t.Errorf("unknown proxy: exit %d, %q", code, stderr)
	}
}

func TestProxyTableColumns(t *testing.T) {
	since := now.Add(-5*time.Minute - 3*time.Second)
	proxies := []xds.ProxyStatus{
		{NodeInfo: xds.NodeInfo{ID: "ztunnel~node-a", Node: "node-a"}, Since: since, Types: []xds.TypeStatus{
			{TypeURL: xds.TypeAddress, State: "STALE", AckedVersion: "3"},
			{TypeURL: xds.TypeAuthorization, State: "NOT SENT"},
		}},
		{NodeInfo: xds.NodeInfo{ID: "waypoint~bookinfo"}, Since: since, Types: []xds.TypeStatus{
			{TypeURL: "type.googleapis.com/envoy.config.cluster.v3.Cluster", State: "SYNCED", AckedVersion: "7"},
		}},
	}
	var b strings.Builder
	proxyTable(proxies, now).write(&b)
	want := `NAME                NODE     ADDRESSES   AUTHORIZATIONS   CLUSTER   ACKED-VERSION   AGE
ztunnel~node-a      node-a   STALE       NOT SENT         -         3/-/-           5m3s
waypoint~bookinfo   None     -           -                SYNCED    -/-/7           5m3s
`
	if b.String() != want {
		t.Errorf("got\n%s\nwant\n%s", b.String(), want)
	}
}
