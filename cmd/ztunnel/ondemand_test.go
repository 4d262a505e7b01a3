package main

import (
	"context"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"

	"github.com/zmesh/zmesh/api/workload"
	"github.com/zmesh/zmesh/controlplane/xds"
	"github.com/zmesh/zmesh/internal/xdsclient"
	"github.com/zmesh/zmesh/ztunnel/config"
	"github.com/zmesh/zmesh/ztunnel/state"
)

// On the wire against zmeshd's own xDS server: ztunnel's on-demand request
// for an address ("network/ip", beside its wildcard subscription) is taken
// without disturbing the stream, and the address reaches the store as
// soon as the control plane has it.
func TestOnDemandAgainstZmeshd(t *testing.T) {
	srv := xds.New(slog.New(slog.DiscardHandler), nil, xds.TypeAddress, xds.TypeAuthorization)
	pod := func(name string, ip byte) proto.Message {
		return &workload.Address{Type: &workload.Address_Workload{Workload: &workload.Workload{
			Uid: "Kubernetes//Pod/demo/" + name, Name: name, Namespace: "demo", Addresses: [][]byte{{10, 0, 0, ip}},
			TunnelProtocol: workload.TunnelProtocol_HBONE, ServiceAccount: name,
		}}}
	}
	srv.Set(xds.TypeAddress, map[string]proto.Message{"Kubernetes//Pod/demo/a": pod("a", 1)})
	srv.Set(xds.TypeAuthorization, map[string]proto.Message{}) // loaded: no policy
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer()
	srv.Register(gs)
	go gs.Serve(ln)
	defer gs.Stop()
	conn, err := grpc.NewClient(ln.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()

	store := state.NewStore()
	node, _ := xdsNode(podInfo{name: "ztunnel-x", namespace: "istio-system", node: "node-1", cluster: "Kubernetes"})
	c, err := xdsclient.NewClient(xdsclient.Config{Conn: conn, Node: node, Types: config.Types, Handler: config.XDSHandler{Store: store}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { c.Run(ctx) })
	defer func() { cancel(); wg.Wait() }()
	select {
	case <-c.Synced():
	case <-time.After(10 * time.Second):
		t.Fatal("never synced")
	}

	d := &xdsDemand{}
	d.c.Store(c)
	want := state.NetAddr{Addr: netip.MustParseAddr("10.0.0.9")}
	release := d.DemandAddress(want)
	defer release()
	srv.Set(xds.TypeAddress, map[string]proto.Message{"Kubernetes//Pod/demo/a": pod("a", 1), "Kubernetes//Pod/demo/b": pod("b", 9)})
	waitUntil(t, "the demanded address to reach the store", func() bool { return store.Snapshot().WorkloadByAddr(want) != nil })
	if st := c.Status(); !st.Connected || st.LastError != nil {
		t.Fatalf("the on-demand request disturbed the stream: %+v", st)
	}
	for _, p := range srv.Syncz() {
		for _, ts := range p.Types {
			if ts.State == "NACKED" {
				t.Errorf("%s %s: %s", p.ID, ts.TypeURL, ts.Error)
			}
		}
	}
}
