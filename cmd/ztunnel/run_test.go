package main

import (
	"encoding/json"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/zmesh/zmesh/api/workload"
	"github.com/zmesh/zmesh/internal/xdsclient"
)

// ads pushes one workload to every wildcard subscription of Address and
// nothing of Authorization, and records the bearer tokens it saw.
type ads struct {
	discoveryv3.UnimplementedAggregatedDiscoveryServiceServer
	wl *workload.Address

	mu     sync.Mutex
	tokens []string
}

func (a *ads) DeltaAggregatedResources(s grpc.BidiStreamingServer[discoveryv3.DeltaDiscoveryRequest, discoveryv3.DeltaDiscoveryResponse]) error {
	md, _ := metadata.FromIncomingContext(s.Context())
	a.mu.Lock()
	a.tokens = append(a.tokens, md.Get("authorization")...)
	a.mu.Unlock()
	for {
		req, err := s.Recv()
		if err != nil {
			return nil
		}
		if req.ResponseNonce != "" {
			continue // an ACK or NACK
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

// The binary's xDS mode end to end: certificates and config from a
// control plane (token presented), ready only once the config arrived and
// the agent's snapshot was taken in, the pushed workload in /config_dump,
// and a clean exit on cancel.
func TestRunWithXDS(t *testing.T) {
	dir := t.TempDir()
	cp := &ads{wl: &workload.Address{Type: &workload.Address_Workload{Workload: &workload.Workload{
		Uid: "Kubernetes//Pod/demo/web", Name: "web", Namespace: "demo", Addresses: [][]byte{{10, 9, 0, 1}},
		TunnelProtocol: workload.TunnelProtocol_HBONE, Node: "node-1",
	}}}}
	addr, rootCert, tokFile, stopCP := controlPlane(t, dir, cp)
	defer stopCP()
	startAgent(t, filepath.Join(dir, "zds.sock"))

	admin, ready := freeAddr(t), freeAddr(t)
	stop := startZtunnel(t, "--node", "node-1", "--xds-address", addr, "--plaintext-control-plane",
		"--root-cert", rootCert, "--token-file", tokFile, "--zds-socket", filepath.Join(dir, "zds.sock"),
		"--admin-address", admin, "--metrics-address", freeAddr(t), "--readiness-address", ready, "--drain-grace", "1s",
		"--state-dir", filepath.Join(dir, "state"))
	defer stop()

	deadline := time.Now().Add(10 * time.Second)
	for {
		code, body := get(t, "http://"+ready+"/healthz/ready")
		if code == http.StatusOK {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("never ready: %d %s", code, body)
		}
		time.Sleep(20 * time.Millisecond)
	}
	code, body := get(t, "http://"+admin+"/config_dump")
	if code != http.StatusOK {
		t.Fatalf("config_dump: %d %s", code, body)
	}
	var dump struct {
		Workloads []map[string]any  `json:"workloads"`
		XDS       *xdsclient.Status `json:"xds"`
	}
	if err := json.Unmarshal([]byte(body), &dump); err != nil {
		t.Fatal(err)
	}
	if len(dump.Workloads) != 1 || dump.Workloads[0]["uid"] != "Kubernetes//Pod/demo/web" {
		t.Fatalf("config_dump workloads = %v, want the pushed one", dump.Workloads)
	}
	if dump.XDS == nil || !dump.XDS.Connected {
		t.Fatalf("config_dump xds = %+v, want connected", dump.XDS)
	}
	cp.mu.Lock()
	defer cp.mu.Unlock()
	if len(cp.tokens) == 0 || cp.tokens[0] != "Bearer tok-node-1" {
		t.Fatalf("the control plane saw tokens %q", cp.tokens)
	}
}

func freeAddr(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

func get(t *testing.T, url string) (int, string) {
	resp, err := http.Get(url)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, strings.TrimSpace(string(b))
}
