package proxy_test

import (
	"context"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/zmesh/zmesh/api/workload"
	"github.com/zmesh/zmesh/internal/xdsclient"
	"github.com/zmesh/zmesh/ztunnel/config"
	"github.com/zmesh/zmesh/ztunnel/proxy"
	"github.com/zmesh/zmesh/ztunnel/state"
)

// onDemandADS is a control plane that knows workloads by address and sends
// one only when a proxy asks for it by name ("network/ip"); its wildcard
// subscriptions get empty responses.
type onDemandADS struct {
	discoveryv3.UnimplementedAggregatedDiscoveryServiceServer
	byName map[string]*workload.Workload

	mu    sync.Mutex
	asked []string
}

func (a *onDemandADS) DeltaAggregatedResources(s grpc.BidiStreamingServer[discoveryv3.DeltaDiscoveryRequest, discoveryv3.DeltaDiscoveryResponse]) error {
	nonce := 0
	for {
		req, err := s.Recv()
		if err != nil {
			return nil
		}
		if req.GetResponseNonce() != "" {
			continue
		}
		nonce++
		resp := &discoveryv3.DeltaDiscoveryResponse{TypeUrl: req.GetTypeUrl(), Nonce: strings.Repeat("n", nonce)}
		for _, name := range req.GetResourceNamesSubscribe() {
			if name == "*" {
				continue
			}
			a.mu.Lock()
			a.asked = append(a.asked, name)
			a.mu.Unlock()
			if w := a.byName[name]; w != nil && req.GetTypeUrl() == xdsclient.TypeAddress {
				body, _ := anypb.New(&workload.Address{Type: &workload.Address_Workload{Workload: w}})
				resp.Resources = append(resp.Resources, &discoveryv3.Resource{Name: w.Uid, Aliases: []string{name}, Version: "1", Resource: body})
			}
		}
		if err := s.Send(resp); err != nil {
			return nil
		}
	}
}

// xdsDemander hands the proxy's requests to an xDS client set later.
type xdsDemander struct {
	c atomic.Pointer[xdsclient.Client]
}

func (d *xdsDemander) DemandAddress(a state.NetAddr) func() {
	return d.c.Load().Demand(xdsclient.TypeAddress, a.String())
}

// The whole on-demand path: a pod's first connection to a pod its ztunnel
// does not know makes the ztunnel's xDS client ask the control plane for
// "/<ip>"; the answer reaches the state, and the held connection goes out
// over HBONE.
func TestOnDemandOverXDS(t *testing.T) {
	m := newMesh(t)
	d := &xdsDemander{}
	a := m.newNode("node-a", func(c *proxy.Config) { c.Demand = d; c.HoldUnknown = 5 * time.Second })
	b := m.newNode("node-b")
	client := m.newPod(a, "demo", "client", "sleep")
	server := m.newPod(b, "demo", "server", "echo")
	app := server.serve(t, 8080)
	serverWL := m.workload(server)
	a.store.Apply(state.Update{RemovedAddresses: []string{serverWL.Uid}})

	cp := &onDemandADS{byName: map[string]*workload.Workload{"/" + server.ip.String(): serverWL}}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer()
	discoveryv3.RegisterAggregatedDiscoveryServiceServer(gs, cp)
	go gs.Serve(ln)
	t.Cleanup(gs.Stop)
	conn, err := grpc.NewClient(ln.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	c, err := xdsclient.NewClient(xdsclient.Config{Conn: conn, Node: &corev3.Node{Id: "ztunnel~node-a"},
		Types: []string{xdsclient.TypeAddress}, Handler: config.XDSHandler{Store: a.store}, Log: a.log})
	if err != nil {
		t.Fatal(err)
	}
	d.c.Store(c)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { c.Run(ctx) })
	t.Cleanup(func() { cancel(); wg.Wait() })
	select {
	case <-c.Synced():
	case <-time.After(10 * time.Second):
		t.Fatal("the xDS client never synced")
	}
	if a.store.Snapshot().WorkloadByAddr(state.NetAddr{Addr: server.ip}) != nil {
		t.Fatal("node A knows the server already: the test proves nothing")
	}

	secret := "zmesh-on-demand-" + strings.Repeat("q", 32)
	if got, err := client.call(app.addr, secret); err != nil || got != client.ip.String()+"|"+secret {
		t.Fatalf("first connection to a pod not yet known: %q %v", got, err)
	}
	cp.mu.Lock()
	asked := slices.Clone(cp.asked)
	cp.mu.Unlock()
	if !slices.Contains(asked, "/"+server.ip.String()) {
		t.Errorf("the control plane was asked for %q, want /%s", asked, server.ip)
	}
	waitFor(t, func() bool { return len(a.logLines("connection complete")) > 0 }, "node A's access log")
	if rec := a.logLines("connection complete")[0]; rec["dst.identity"] != "spiffe://cluster.local/ns/demo/sa/echo" {
		t.Errorf("the connection did not go over HBONE to the server: %v", rec)
	}
}
