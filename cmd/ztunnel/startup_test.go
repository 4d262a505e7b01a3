package main

import (
	"context"
	"encoding/json"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/anypb"
	pb "istio.io/api/security/v1alpha1"

	"github.com/zmesh/zmesh/api/workload"
	"github.com/zmesh/zmesh/cni/agent"
	"github.com/zmesh/zmesh/identity"
	"github.com/zmesh/zmesh/internal/xdsclient"
)

// heldADS answers nothing until released, then one workload per Address
// subscription and an empty Authorization response.
type heldADS struct {
	discoveryv3.UnimplementedAggregatedDiscoveryServiceServer
	wl      *workload.Address
	release chan struct{}

	mu    sync.Mutex
	nodes []string
}

func (a *heldADS) DeltaAggregatedResources(s grpc.BidiStreamingServer[discoveryv3.DeltaDiscoveryRequest, discoveryv3.DeltaDiscoveryResponse]) error {
	for {
		req, err := s.Recv()
		if err != nil {
			return nil
		}
		if req.GetNode() != nil {
			a.mu.Lock()
			a.nodes = append(a.nodes, req.GetNode().GetId())
			a.mu.Unlock()
		}
		if req.ResponseNonce != "" {
			continue
		}
		select {
		case <-a.release:
		case <-s.Context().Done():
			return nil
		}
		resp := &discoveryv3.DeltaDiscoveryResponse{TypeUrl: req.TypeUrl, Nonce: "n-" + req.TypeUrl, SystemVersionInfo: "1"}
		if req.TypeUrl == xdsclient.TypeAddress {
			body, _ := anypb.New(a.wl)
			resp.Resources = []*discoveryv3.Resource{{Name: a.wl.GetWorkload().Uid, Version: "1", Resource: body}}
		}
		if err := s.Send(resp); err != nil {
			return nil
		}
	}
}

// controlPlane serves the CA, and the ADS server if given, on loopback.
func controlPlane(t *testing.T, dir string, ads discoveryv3.AggregatedDiscoveryServiceServer) (addr, rootCert, tokFile string, stop func()) {
	t.Helper()
	ca, err := identity.LoadOrCreateCA(filepath.Join(dir, "ca"), identity.CAOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ztID := identity.MustWorkloadID("cluster.local", "zmesh-system", "ztunnel")
	authn, _ := identity.NewStaticTokenAuthenticator(map[string]identity.Caller{"tok-node-1": {ID: ztID, Node: "node-1"}})
	authz, _ := identity.NewNodeAuthorizer([]spiffeid.ID{ztID}, func(string, spiffeid.ID) bool { return true })
	certSrv, err := identity.NewCertServer(ca, authn, authz)
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer()
	pb.RegisterIstioCertificateServiceServer(gs, certSrv)
	if ads != nil {
		discoveryv3.RegisterAggregatedDiscoveryServiceServer(gs, ads)
	}
	gln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go gs.Serve(gln)
	rootCert, tokFile = filepath.Join(dir, "root.pem"), filepath.Join(dir, "token")
	os.WriteFile(rootCert, ca.RootsPEM(), 0o644)
	os.WriteFile(tokFile, []byte("tok-node-1\n"), 0o600)
	return gln.Addr().String(), rootCert, tokFile, gs.Stop
}

// startAgent runs a ZDS server (the node agent's side) on a new socket.
func startAgent(t *testing.T, path string) *agent.ZDSServer {
	t.Helper()
	zds, err := agent.NewZDSServer(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { zds.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return zds
}

// startZtunnel runs the binary's run with args; the returned stop cancels
// it and checks it returned cleanly.
func startZtunnel(t *testing.T, args ...string) (stop func()) {
	t.Helper()
	f, err := parseFlags(args)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- run(ctx, f) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("run: %v", err)
				}
			case <-time.After(10 * time.Second):
				t.Error("run did not return after cancel")
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

func connects(zds *agent.ZDSServer, within time.Duration) bool {
	ctx, cancel := context.WithTimeout(context.Background(), within)
	defer cancel()
	return zds.WaitZtunnel(ctx) == nil
}

// ztunnel takes pods over ZDS only once it has a config: before its first
// sync it does not connect to the agent (so a new pod waits in CNI ADD and
// a running one stays with the ztunnel being replaced) and is not ready;
// after the sync it connects and persists the config in --state-dir. A
// ztunnel restarted while the control plane is down loads that config,
// connects at once and serves it.
func TestZDSWaitsForConfigAndRestartServesPersisted(t *testing.T) {
	dir := t.TempDir()
	cp := &heldADS{release: make(chan struct{}), wl: &workload.Address{Type: &workload.Address_Workload{Workload: &workload.Workload{
		Uid: "Kubernetes//Pod/demo/web", Name: "web", Namespace: "demo", Addresses: [][]byte{{10, 9, 0, 1}},
		TunnelProtocol: workload.TunnelProtocol_HBONE, Node: "node-1", ServiceAccount: "web",
	}}}}
	addr, rootCert, tokFile, stopCP := controlPlane(t, dir, cp)
	defer stopCP()
	stateDir := filepath.Join(dir, "state")
	args := func(xds, zdsSock, admin, ready string) []string {
		return []string{"--node", "node-1", "--xds-address", xds, "--ca-address", addr, "--plaintext-control-plane",
			"--root-cert", rootCert, "--token-file", tokFile, "--zds-socket", zdsSock, "--state-dir", stateDir,
			"--admin-address", admin, "--metrics-address", freeAddr(t), "--readiness-address", ready, "--drain-grace", "1s",
			"--instance-ip", "10.9.9.9", "--pod-name", "ztunnel-abc", "--pod-namespace", "istio-system"}
	}

	sock1 := filepath.Join(dir, "zds1.sock")
	zds1 := startAgent(t, sock1)
	ready1 := freeAddr(t)
	stop1 := startZtunnel(t, args(addr, sock1, freeAddr(t), ready1)...)
	if connects(zds1, 1500*time.Millisecond) {
		t.Fatal("ztunnel connected to ZDS before it had any config")
	}
	var readyCode int
	var readyBody string
	waitUntil(t, "the readiness endpoint", func() bool {
		readyCode, readyBody = get(t, "http://"+ready1+"/healthz/ready")
		return readyCode != 0
	})
	if readyCode == http.StatusOK {
		t.Fatalf("ready before any config: %s", readyBody)
	}
	cp.mu.Lock()
	nodes := append([]string(nil), cp.nodes...)
	cp.mu.Unlock()
	if want := "ztunnel~10.9.9.9~ztunnel-abc.istio-system~istio-system.svc.cluster.local"; len(nodes) == 0 || nodes[0] != want {
		t.Errorf("node ids sent: %q, want %q", nodes, want)
	}

	close(cp.release)
	if !connects(zds1, 10*time.Second) {
		t.Fatal("ztunnel did not connect to ZDS after its first sync")
	}
	statePath := filepath.Join(stateDir, "xds-node-1.pb")
	waitUntil(t, "the config to be persisted", func() bool { _, err := os.Stat(statePath); return err == nil })
	stop1()

	// The control plane is gone (its address refuses); the CA still
	// answers, on its own address.
	gone := freeAddr(t)
	sock2 := filepath.Join(dir, "zds2.sock")
	zds2 := startAgent(t, sock2)
	admin2 := freeAddr(t)
	startZtunnel(t, args(gone, sock2, admin2, freeAddr(t))...)
	if !connects(zds2, 10*time.Second) {
		t.Fatal("a ztunnel restarted with a persisted config did not connect to ZDS while the control plane was down")
	}
	// ZDS may connect before the admin listener is up.
	var code int
	var body string
	waitUntil(t, "the admin endpoint", func() bool {
		code, body = get(t, "http://"+admin2+"/config_dump")
		return code != 0
	})
	var dump struct {
		Workloads []map[string]any `json:"workloads"`
	}
	if code != http.StatusOK || json.Unmarshal([]byte(body), &dump) != nil || len(dump.Workloads) != 1 || dump.Workloads[0]["uid"] != "Kubernetes//Pod/demo/web" {
		t.Fatalf("config_dump after the restart: %d %s", code, body)
	}
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
