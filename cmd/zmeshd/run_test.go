package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/zmesh/zmesh/controlplane/xds"
	"github.com/zmesh/zmesh/identity"
	"github.com/zmesh/zmesh/internal/version"
	"github.com/zmesh/zmesh/internal/xdsclient"
	"github.com/zmesh/zmesh/ztunnel/config"
	"github.com/zmesh/zmesh/ztunnel/state"
)

const meshYAML = `apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: shop, labels: {app: web}}
spec: {nodeName: node-a, serviceAccountName: web, containers: [{name: app, image: app, ports: [{containerPort: 8080}]}]}
status: {podIP: 10.1.0.5}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: shop}
spec: {nodeName: node-b, serviceAccountName: client, containers: [{name: app, image: app}]}
status: {podIP: 10.1.1.7}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec: {clusterIP: 10.96.0.20, selector: {app: web}, ports: [{port: 80, targetPort: 8080}]}
`

const denyYAML = `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-legacy, namespace: shop}
spec:
  action: DENY
  rules: [{from: [{source: {namespaces: [legacy]}}]}]
`

func freePort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

type testZmeshd struct {
	dir, xdsAddr, secureAddr, monAddr string
	caDir, tokens                     string
	ca                                *identity.CA
	// stop ends the running zmeshd and waits for it.
	stop func()
}

// startDirectoryMode runs zmeshd in process on a YAML directory.
// secureConn dials z's secure port trusting its CA, presenting certs if
// any; the connection closes with the test.
func (z *testZmeshd) secureConn(t *testing.T, certs ...tls.Certificate) *grpc.ClientConn {
	t.Helper()
	roots := x509.NewCertPool()
	for _, c := range z.ca.Bundle().X509Authorities() {
		roots.AddCert(c)
	}
	cc, err := grpc.NewClient(z.secureAddr, grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{RootCAs: roots, Certificates: certs})))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return cc
}

func startDirectoryMode(t *testing.T) *testZmeshd {
	t.Helper()
	z := &testZmeshd{dir: t.TempDir(), xdsAddr: freePort(t), secureAddr: freePort(t), monAddr: freePort(t), caDir: t.TempDir()}
	z.tokens = filepath.Join(t.TempDir(), "tokens")
	os.WriteFile(z.tokens, []byte("tok-a spiffe://cluster.local/ns/istio-system/sa/ztunnel node-a\n"), 0o600)
	os.WriteFile(filepath.Join(z.dir, "mesh.yaml"), []byte(meshYAML), 0o644)
	z.start(t)
	var err error
	if z.ca, err = identity.LoadOrCreateCA(z.caDir, identity.CAOptions{}); err != nil {
		t.Fatal(err)
	}
	return z
}

// start runs zmeshd (again) on z's directory, ports and CA, and waits
// until it is ready.
func (z *testZmeshd) start(t *testing.T) {
	t.Helper()
	f, err := parseFlags([]string{"--config-dir", z.dir, "--tokens-file", z.tokens, "--ca-dir", z.caDir,
		"--xds-address", z.xdsAddr, "--secure-address", z.secureAddr, "--monitoring-address", z.monAddr,
		"--secure-hosts", "127.0.0.1", "--log-level", "warn"})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- run(ctx, f) }()
	var once sync.Once
	z.stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Error(err)
			}
		})
	}
	t.Cleanup(z.stop)
	deadline := time.Now().Add(10 * time.Second)
	for {
		resp, err := http.Get("http://" + z.monAddr + "/ready")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("zmeshd not ready: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// ztunnelStore connects ztunnel's own xDS client and state store.
func ztunnelStore(t *testing.T, conn grpc.ClientConnInterface) (*state.Store, *xdsclient.Client) {
	t.Helper()
	store := state.NewStore()
	c, err := xdsclient.NewClient(xdsclient.Config{
		Conn: conn, Types: config.Types, Handler: config.XDSHandler{Store: store},
		Node: &corev3.Node{Id: "ztunnel~node-a"},
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { c.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	select {
	case <-c.Synced():
	case <-time.After(10 * time.Second):
		t.Fatal("ztunnel's xDS client never synced")
	}
	return store, c
}

func waitStore(t *testing.T, store *state.Store, what string, cond func(*state.Snapshot) bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond(store.Snapshot()) {
		if time.Now().After(deadline) {
			t.Fatalf("ztunnel's state never had %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestDirectoryModeFeedsZtunnel(t *testing.T) {
	z := startDirectoryMode(t)
	cc, err := grpc.NewClient(z.xdsAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	store, _ := ztunnelStore(t, cc)

	waitStore(t, store, "the two pods and the service", func(s *state.Snapshot) bool {
		return len(s.Workloads()) == 2 && len(s.Services()) == 1
	})
	w := store.Snapshot().WorkloadsOnNode("node-a")
	if len(w) != 1 || w[0].Name != "web" || w[0].Protocol.String() != "HBONE" {
		t.Fatalf("workloads on node-a = %+v, want web over HBONE", w)
	}

	// A policy written to the directory reaches ztunnel; removing it
	// removes it.
	os.WriteFile(filepath.Join(z.dir, "policy.yaml"), []byte(denyYAML), 0o644)
	start := time.Now()
	waitStore(t, store, "the policy", func(s *state.Snapshot) bool { return len(s.Policies()) == 1 })
	t.Logf("file write -> policy in ztunnel's state: %s", time.Since(start).Round(time.Millisecond))

	// A bad edit keeps the last good policy.
	os.WriteFile(filepath.Join(z.dir, "policy.yaml"), []byte(strings.Replace(denyYAML, "DENY", "DENNY", 1)), 0o644)
	time.Sleep(time.Second)
	if p := store.Snapshot().Policies(); len(p) != 1 || p[0].Action.String() != "DENY" {
		t.Fatalf("after a bad edit ztunnel has %v, want the last good DENY", p)
	}

	os.Remove(filepath.Join(z.dir, "policy.yaml"))
	waitStore(t, store, "no policy", func(s *state.Snapshot) bool { return len(s.Policies()) == 0 })

	// /debug/syncz lists the ztunnel as synced.
	var proxies []xds.ProxyStatus
	deadline := time.Now().Add(5 * time.Second)
	for {
		resp, err := http.Get("http://" + z.monAddr + "/debug/syncz")
		if err != nil {
			t.Fatal(err)
		}
		json.NewDecoder(resp.Body).Decode(&proxies)
		resp.Body.Close()
		if len(proxies) == 1 && len(proxies[0].Types) == 2 && proxies[0].Types[0].State == "SYNCED" && proxies[0].Types[1].State == "SYNCED" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("syncz = %+v, want ztunnel~node-a synced on both types", proxies)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if proxies[0].ID != "ztunnel~node-a" {
		t.Errorf("syncz id = %q", proxies[0].ID)
	}

	// GET /version, which `zmeshctl version --zmeshd` reads.
	resp, err := http.Get("http://" + z.monAddr + "/version")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var v version.Info
	if err := json.NewDecoder(resp.Body).Decode(&v); err != nil || v.Version == "" || v.GoVersion == "" {
		t.Errorf("/version = %+v, %v", v, err)
	}
}

func TestSecurePortAndCA(t *testing.T) {
	z := startDirectoryMode(t)
	cc := z.secureConn(t)

	// xDS over TLS with ztunnel's token.
	store, _ := ztunnelStore(t, tokenConn{cc, "tok-a"})
	waitStore(t, store, "the workloads", func(s *state.Snapshot) bool { return len(s.Workloads()) == 2 })

	// The CA: node-a's ztunnel gets web (on node-a), not client (node-b).
	certs, err := identity.NewCertClient(cc, func(context.Context) (string, error) { return "tok-a", nil }, 0)
	if err != nil {
		t.Fatal(err)
	}
	web := spiffeid.RequireFromString("spiffe://cluster.local/ns/shop/sa/web")
	svid, err := certs.Fetch(t.Context(), web)
	if err != nil {
		t.Fatalf("certificate for a pod on the caller's node: %v", err)
	}
	if svid.ID != web {
		t.Errorf("issued %s, want %s", svid.ID, web)
	}
	_, err = certs.Fetch(t.Context(), spiffeid.RequireFromString("spiffe://cluster.local/ns/shop/sa/client"))
	if status.Code(err) != codes.PermissionDenied {
		t.Errorf("certificate for a pod on another node: %v, want PermissionDenied", err)
	}

	// No token: the TLS port refuses xDS.
	st, err := discoveryv3.NewAggregatedDiscoveryServiceClient(cc).DeltaAggregatedResources(t.Context())
	if err == nil {
		st.Send(&discoveryv3.DeltaDiscoveryRequest{Node: &corev3.Node{Id: "ztunnel~x"}, TypeUrl: xds.TypeAddress})
		_, err = st.Recv()
	}
	if status.Code(err) != codes.Unauthenticated {
		t.Errorf("xDS without a token: %v, want Unauthenticated", err)
	}
}

type tokenConn struct {
	*grpc.ClientConn
	token string
}

func (c tokenConn) NewStream(ctx context.Context, desc *grpc.StreamDesc, method string, opts ...grpc.CallOption) (grpc.ClientStream, error) {
	return c.ClientConn.NewStream(metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+c.token), desc, method, opts...)
}

// A zmeshd restart while a policy's file has a syntax error keeps the
// policy in force: the ztunnel that held it still holds it after
// resyncing with the restarted zmeshd, and a ztunnel connecting afresh
// gets it.
func TestRestartWithABrokenFileKeepsTheDeny(t *testing.T) {
	z := startDirectoryMode(t)
	policy := filepath.Join(z.dir, "policy.yaml")
	os.WriteFile(policy, []byte(denyYAML), 0o644)
	cc, err := grpc.NewClient(z.xdsAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	store, _ := ztunnelStore(t, cc)
	waitStore(t, store, "the DENY", func(s *state.Snapshot) bool { return len(s.Policies()) == 1 })

	z.stop()
	os.WriteFile(policy, []byte(strings.Replace(denyYAML, "namespaces: [legacy]}}]}]", "namespaces: [legacy]}}]", 1)), 0o644)
	z.start(t)

	// The ztunnel reconnects and resyncs: zmeshd lists it SYNCED again.
	deadline := time.Now().Add(20 * time.Second)
	for !synced(t, z.monAddr, "ztunnel~node-a") {
		if time.Now().After(deadline) {
			t.Fatal("the ztunnel never resynced with the restarted zmeshd")
		}
		time.Sleep(50 * time.Millisecond)
	}
	if p := store.Snapshot().Policies(); len(p) != 1 || p[0].Name != "deny-legacy" || p[0].Action.String() != "DENY" {
		t.Fatalf("after the restart the ztunnel holds %v, want the DENY", p)
	}
	fresh, _ := ztunnelStore(t, cc)
	if p := fresh.Snapshot().Policies(); len(p) != 1 || p[0].Action.String() != "DENY" {
		t.Fatalf("a ztunnel connecting after the restart gets %v, want the DENY", p)
	}
	if _, err := os.Stat(filepath.Join(z.dir, lastGoodDir, "last-good.json")); err != nil {
		t.Errorf("the last good versions are not where --help says: %v", err)
	}
}

// synced reports whether zmeshd lists the proxy id with every type acked.
func synced(t *testing.T, monAddr, id string) bool {
	t.Helper()
	resp, err := http.Get("http://" + monAddr + "/debug/syncz")
	if err != nil {
		return false
	}
	defer resp.Body.Close()
	var proxies []xds.ProxyStatus
	if err := json.NewDecoder(resp.Body).Decode(&proxies); err != nil {
		return false
	}
	for _, p := range proxies {
		if p.ID != id || len(p.Types) != 2 {
			continue
		}
		if p.Types[0].State == "SYNCED" && p.Types[1].State == "SYNCED" {
			return true
		}
	}
	return false
}
