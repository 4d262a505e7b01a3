package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/known/anypb"
	"sigs.k8s.io/yaml"

	"github.com/zmesh/zmesh/identity"
	"github.com/zmesh/zmesh/waypoint/config"
	"github.com/zmesh/zmesh/waypoint/xds"
	pb "istio.io/api/security/v1alpha1"
)

const timeout = 30 * time.Second

var (
	waypointID = identity.MustWorkloadID("cluster.local", "bookinfo", "waypoint")
	clientID   = identity.MustWorkloadID("cluster.local", "bookinfo", "productpage")
)

func resource(t *testing.T, typeURL, y string) *anypb.Any {
	t.Helper()
	mt, err := protoregistry.GlobalTypes.FindMessageByURL(typeURL)
	if err != nil {
		t.Fatal(err)
	}
	m := mt.New().Interface()
	js, err := yaml.YAMLToJSON([]byte(y))
	if err != nil {
		t.Fatal(err)
	}
	if err := protojson.Unmarshal(js, m); err != nil {
		t.Fatalf("%v\n%s", err, js)
	}
	a, err := anypb.New(m)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

const (
	httpChain = "inbound-vip|9080|http|reviews.bookinfo.svc.cluster.local"
	cluster   = "inbound-vip|9080|http|reviews.bookinfo.svc.cluster.local"
	listener  = `name: main_internal
address: {socketAddress: {address: 0.0.0.0, portValue: 15008}}
filterChains:
- name: "` + httpChain + `"
  filterChainMatch: {destinationPort: 9080, prefixRanges: [{addressPrefix: 10.96.0.10, prefixLen: 32}]}
  filters:
  - name: envoy.filters.network.http_connection_manager
    typedConfig:
      "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
      statPrefix: "` + httpChain + `"
      rds: {routeConfigName: "` + httpChain + `", configSource: {ads: {}, resourceApiVersion: V3}}
      httpFilters: [{name: envoy.filters.http.router, typedConfig: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}]
`
)

// ads is a control plane that answers each subscription with what it
// holds and reports the waypoint's ACKs and NACKs.
type ads struct {
	discoveryv3.UnimplementedAggregatedDiscoveryServiceServer
	mu      sync.Mutex
	res     map[string]map[string]*anypb.Any
	stream  discoveryv3.AggregatedDiscoveryService_DeltaAggregatedResourcesServer
	sendMu  sync.Mutex
	answers chan *discoveryv3.DeltaDiscoveryRequest
	nonce   int
}

func (a *ads) DeltaAggregatedResources(st discoveryv3.AggregatedDiscoveryService_DeltaAggregatedResourcesServer) error {
	a.mu.Lock()
	a.stream = st
	a.mu.Unlock()
	for {
		req, err := st.Recv()
		if err != nil {
			return nil
		}
		if req.GetResponseNonce() != "" {
			a.answers <- req
			continue
		}
		a.mu.Lock()
		res := a.res[req.GetTypeUrl()]
		a.mu.Unlock()
		a.send(req.GetTypeUrl(), res)
	}
}

func (a *ads) send(typeURL string, res map[string]*anypb.Any) error {
	a.sendMu.Lock()
	defer a.sendMu.Unlock()
	a.mu.Lock()
	a.nonce++
	resp := &discoveryv3.DeltaDiscoveryResponse{TypeUrl: typeURL, Nonce: typeURL + string(rune('a'+a.nonce))}
	st := a.stream
	a.mu.Unlock()
	for name, body := range res {
		resp.Resources = append(resp.Resources, &discoveryv3.Resource{Name: name, Version: resp.Nonce, Resource: body})
	}
	return st.Send(resp)
}

// controlPlane serves a CA (the waypoint's token yields its own identity)
// and ads on one loopback gRPC server.
func controlPlane(t *testing.T, dir string, a *ads) (addr, rootCert, tokFile string, fetch func(spiffeid.ID) *x509svid.SVID) {
	t.Helper()
	ca, err := identity.LoadOrCreateCA(filepath.Join(dir, "ca"), identity.CAOptions{})
	if err != nil {
		t.Fatal(err)
	}
	authn, err := identity.NewStaticTokenAuthenticator(map[string]identity.Caller{"tok-waypoint": {ID: waypointID}, "tok-client": {ID: clientID}})
	if err != nil {
		t.Fatal(err)
	}
	certSrv, err := identity.NewCertServer(ca, authn, nil)
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer()
	pb.RegisterIstioCertificateServiceServer(gs, certSrv)
	discoveryv3.RegisterAggregatedDiscoveryServiceServer(gs, a)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go gs.Serve(ln)
	t.Cleanup(gs.Stop)
	rootCert, tokFile = filepath.Join(dir, "root.pem"), filepath.Join(dir, "token")
	if err := os.WriteFile(rootCert, ca.RootsPEM(), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(tokFile, []byte("tok-waypoint\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient(ln.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	fetch = func(id spiffeid.ID) *x509svid.SVID {
		cc, err := identity.NewCertClient(conn, func(context.Context) (string, error) { return "tok-client", nil }, 0)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		s, err := cc.Fetch(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	return ln.Addr().String(), rootCert, tokFile, fetch
}

// freeAddr is a loopback address nothing listens on.
func freeAddr(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

func httpGet(url string) (int, string, error) {
	c := &http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestStartup runs the binary as the deployer starts it against an
// in-process CA and xDS server: it becomes ready once configured, serves
// HBONE with its own SVID, shows the listener in /config_dump, NACKs a bad
// listener and stays on the last good one, and stops cleanly.
func TestStartup(t *testing.T) {
	dir := t.TempDir()
	a := &ads{answers: make(chan *discoveryv3.DeltaDiscoveryRequest, 64), res: map[string]map[string]*anypb.Any{
		config.TypeListener: {"main_internal": resource(t, config.TypeListener, listener)},
		config.TypeRoute: {httpChain: resource(t, config.TypeRoute, "name: \""+httpChain+"\"\nvirtualHosts: [{name: 'reviews.bookinfo.svc.cluster.local:9080', domains: ['*'], "+
			"routes: [{match: {prefix: /}, route: {cluster: \""+cluster+"\"}}]}]\n")},
		config.TypeCluster: {cluster: resource(t, config.TypeCluster, "name: \""+cluster+"\"\ntype: EDS\nedsClusterConfig: {edsConfig: {ads: {}, resourceApiVersion: V3}}\n")},
		config.TypeAssignment: {cluster: resource(t, config.TypeAssignment, "clusterName: \""+cluster+"\"\nendpoints: [{lbEndpoints: [{endpoint: {address: {socketAddress: {address: 10.1.0.5, portValue: 9080}}}, "+
			"metadata: {filterMetadata: {zmesh: {identity: 'spiffe://cluster.local/ns/bookinfo/sa/reviews'}}}}]}]\n")},
	}}
	addr, rootCert, tokFile, fetch := controlPlane(t, dir, a)
	hboneAddr, adminAddr, metricsAddr, readyAddr := freeAddr(t), freeAddr(t), freeAddr(t), freeAddr(t)
	t.Setenv("POD_NAME", "waypoint-7d9f-abcde")
	t.Setenv("POD_NAMESPACE", "bookinfo")
	t.Setenv("SERVICE_ACCOUNT", "waypoint")
	t.Setenv("INSTANCE_IP", "127.0.0.1")
	f, err := parseFlags([]string{"--root-cert=" + rootCert, "--token-file=" + tokFile, "--xds-address=" + addr, "--plaintext-control-plane",
		"--hbone-address=" + hboneAddr, "--admin-address=" + adminAddr, "--metrics-address=" + metricsAddr, "--readiness-address=" + readyAddr,
		"--drain-timeout=5s"})
	if err != nil {
		t.Fatal(err)
	}
	if n, _ := xdsNode(f); n.GetId() != "router~127.0.0.1~waypoint-7d9f-abcde.bookinfo~bookinfo.svc.cluster.local" {
		t.Errorf("node id %q", n.GetId())
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	var stdout bytes.Buffer
	go func() { done <- run(ctx, f, &stdout) }()
	stopped := false
	t.Cleanup(func() {
		if !stopped {
			cancel()
			<-done
		}
	})

	for range xds.Types {
		select {
		case r := <-a.answers:
			if r.GetErrorDetail() != nil {
				t.Fatalf("the waypoint NACKed %s: %s", r.GetTypeUrl(), r.GetErrorDetail().GetMessage())
			}
		case <-time.After(timeout):
			t.Fatal("the waypoint did not answer its subscriptions")
		}
	}
	waitFor(t, "readiness", func() bool {
		code, _, _ := httpGet("http://" + readyAddr + "/healthz/ready")
		return code == 200
	})
	_, dump, err := httpGet("http://" + adminAddr + "/config_dump")
	if err != nil || !strings.Contains(dump, `"main_internal"`) || !strings.Contains(dump, httpChain) ||
		!strings.Contains(dump, "type.googleapis.com/envoy.admin.v3.ListenersConfigDump") {
		t.Fatalf("/config_dump (%v):\n%s", err, dump)
	}

	// The HBONE port presents the waypoint's own SVID and takes a mesh
	// client's certificate.
	client := fetch(clientID)
	roots := x509.NewCertPool()
	pem, _ := os.ReadFile(rootCert)
	roots.AppendCertsFromPEM(pem)
	var leaf tls.Certificate
	for _, c := range client.Certificates {
		leaf.Certificate = append(leaf.Certificate, c.Raw)
	}
	leaf.PrivateKey = client.PrivateKey
	var conn *tls.Conn
	waitFor(t, "the HBONE handshake", func() bool {
		conn, err = tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", hboneAddr, &tls.Config{
			RootCAs: roots, Certificates: []tls.Certificate{leaf}, NextProtos: []string{"h2"},
			ServerName: "waypoint", InsecureSkipVerify: true, // the SAN is checked below; SPIFFE SVIDs carry no DNS name
		})
		return err == nil
	})
	peer := conn.ConnectionState().PeerCertificates[0]
	conn.Close()
	if _, err := peer.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil || len(peer.URIs) != 1 || peer.URIs[0].String() != waypointID.String() {
		t.Errorf("the waypoint presented %v (%v), want an SVID for %s", peer.URIs, err, waypointID)
	}

	// A bad listener: NACKed with its field path, the last good one stays.
	bad := strings.Replace(listener, "name: main_internal", "name: main_internal\nuseOriginalDst: true", 1)
	if err := a.send(config.TypeListener, map[string]*anypb.Any{"main_internal": resource(t, config.TypeListener, bad)}); err != nil {
		t.Fatal(err)
	}
	select {
	case r := <-a.answers:
		if want := `main_internal: listeners "main_internal": use_original_dst: not supported`; r.GetErrorDetail().GetMessage() != want {
			t.Fatalf("answer to a bad listener: %q, want NACK %q", r.GetErrorDetail().GetMessage(), want)
		}
	case <-time.After(timeout):
		t.Fatal("no answer to the bad listener")
	}
	_, after, _ := httpGet("http://" + adminAddr + "/config_dump")
	if after == "" || (strings.Contains(after, "useOriginalDst") || !strings.Contains(after, httpChain)) {
		t.Errorf("/config_dump after a NACK:\n%s", after)
	}
	if code, _, _ := httpGet("http://" + readyAddr + "/healthz/ready"); code != 200 {
		t.Errorf("not ready after a NACK: %d", code)
	}
	if code, body, _ := httpGet("http://" + metricsAddr + "/stats/prometheus"); code != 200 || !strings.Contains(body, "zmesh_waypoint_access_log_dropped_total 0") {
		t.Errorf("metrics: %d\n%s", code, body)
	}

	cancel()
	select {
	case err := <-done:
		stopped = true
		if err != nil {
			t.Fatalf("run: %v", err)
		}
	case <-time.After(timeout):
		t.Fatal("run did not return after the signal")
	}
	if _, _, err := httpGet("http://" + readyAddr + "/healthz/ready"); err == nil {
		t.Error("readiness still served after shutdown")
	}
}

func TestParseFlagsRequiresThePod(t *testing.T) {
	t.Setenv("POD_NAME", "p")
	t.Setenv("POD_NAMESPACE", "ns")
	t.Setenv("SERVICE_ACCOUNT", "")
	if _, err := parseFlags([]string{"--xds-address=x:1"}); err == nil || !strings.Contains(err.Error(), "--service-account") {
		t.Errorf("no service account: %v", err)
	}
	t.Setenv("SERVICE_ACCOUNT", "sa")
	if _, err := parseFlags(nil); err == nil || !strings.Contains(err.Error(), "--xds-address") {
		t.Errorf("no xDS address: %v", err)
	}
	f, err := parseFlags([]string{"--xds-address=x:1"})
	if err != nil || f.caAddr != "x:1" || f.adminAddr != "127.0.0.1:15000" || f.readyAddr != ":15021" || f.metricsAddr != ":15020" || f.hboneAddr != ":15008" {
		t.Errorf("defaults: %+v %v", f, err)
	}
}
