package main

import (
	"encoding/json"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"sigs.k8s.io/yaml"

	"github.com/zmesh/zmesh/api/workload"
	"github.com/zmesh/zmesh/api/workload/security"
	"github.com/zmesh/zmesh/identity"
	ztxds "github.com/zmesh/zmesh/internal/xdsclient"
	"github.com/zmesh/zmesh/ztunnel/admin"
	"github.com/zmesh/zmesh/ztunnel/proxy"
	"github.com/zmesh/zmesh/ztunnel/state"
)

func addr(s string) []byte { return netip.MustParseAddr(s).AsSlice() }

func hostnameWaypoint(ns, host string) *workload.GatewayAddress {
	return &workload.GatewayAddress{
		Destination:   &workload.GatewayAddress_Hostname{Hostname: &workload.NamespacedHostname{Namespace: ns, Hostname: host}},
		HboneMtlsPort: 15008,
	}
}

func pod(ns, name, node string, ips ...string) *workload.Workload {
	w := &workload.Workload{
		Uid: "Kubernetes//Pod/" + ns + "/" + name, Name: name, Namespace: ns, Node: node,
		TunnelProtocol: workload.TunnelProtocol_HBONE, TrustDomain: "cluster.local", ServiceAccount: "default",
		WorkloadType: workload.WorkloadType_POD, ClusterId: "Kubernetes",
	}
	for _, ip := range ips {
		w.Addresses = append(w.Addresses, addr(ip))
	}
	return w
}

func backs(w *workload.Workload, svcKeys ...string) *workload.Workload {
	w.Services = map[string]*workload.PortList{}
	for _, k := range svcKeys {
		w.Services[k] = &workload.PortList{Ports: []*workload.Port{{ServicePort: 9080, TargetPort: 9080}}}
	}
	return w
}

// fixture is a small bookinfo mesh as a ztunnel would hold it.
func fixture() (wls []*workload.Workload, svcs []*workload.Service, pols []*security.Authorization) {
	const pp, rv = "bookinfo/productpage.bookinfo.svc.cluster.local", "bookinfo/reviews.bookinfo.svc.cluster.local"
	productpage := backs(pod("bookinfo", "productpage-v1-6b7f", "node-a", "10.244.1.5"), pp)
	productpage.Waypoint = hostnameWaypoint("bookinfo", "waypoint.bookinfo.svc.cluster.local")
	reviews1 := backs(pod("bookinfo", "reviews-v1-5c4d", "node-b", "10.244.2.7"), rv)
	reviews1.Status = workload.WorkloadStatus_UNHEALTHY
	reviews2 := backs(pod("bookinfo", "reviews-v2-8f9a", "node-a", "10.244.1.8"), rv)
	sleep := pod("default", "sleep-7d9c", "node-a", "10.244.1.9", "fd00::9")
	sleep.TunnelProtocol = workload.TunnelProtocol_NONE
	wls = []*workload.Workload{productpage, reviews1, reviews2, sleep}

	svcs = []*workload.Service{
		{Name: "productpage", Namespace: "bookinfo", Hostname: "productpage.bookinfo.svc.cluster.local",
			Addresses: []*workload.NetworkAddress{{Address: addr("10.96.12.4")}},
			Ports:     []*workload.Port{{ServicePort: 9080, TargetPort: 9080}},
			Waypoint:  hostnameWaypoint("bookinfo", "waypoint.bookinfo.svc.cluster.local")},
		{Name: "reviews", Namespace: "bookinfo", Hostname: "reviews.bookinfo.svc.cluster.local",
			Addresses: []*workload.NetworkAddress{{Address: addr("10.96.7.1")}},
			Ports:     []*workload.Port{{ServicePort: 9080, TargetPort: 9080}}},
	}
	pols = []*security.Authorization{
		{Name: "productpage-viewer", Namespace: "bookinfo", Scope: security.Scope_WORKLOAD_SELECTOR, Action: security.Action_ALLOW},
		{Name: "deny-external", Namespace: "istio-system", Scope: security.Scope_GLOBAL, Action: security.Action_DENY, DryRun: true},
		{Name: "ns-wide", Namespace: "default", Scope: security.Scope_NAMESPACE, Action: security.Action_ALLOW},
	}
	return wls, svcs, pols
}

// newZtunnelAdmin serves the fixture from ztunnel's own admin handler,
// through ztunnel's own state store (which validates it).
func newZtunnelAdmin(t *testing.T) string {
	t.Helper()
	wls, svcs, pols := fixture()
	u := state.Update{Addresses: map[string]*workload.Address{}, Policies: map[string]*security.Authorization{}}
	for _, w := range wls {
		u.Addresses[w.Uid] = &workload.Address{Type: &workload.Address_Workload{Workload: w}}
	}
	for _, s := range svcs {
		u.Addresses[s.Namespace+"/"+s.Hostname] = &workload.Address{Type: &workload.Address_Service{Service: s}}
	}
	for _, p := range pols {
		u.Policies[p.Namespace+"/"+p.Name] = p
	}
	store := state.NewStore()
	if err := store.Replace(u); err != nil {
		t.Fatal(err)
	}
	certs := []identity.CertInfo{
		{ID: spiffeid.RequireFromString("spiffe://cluster.local/ns/bookinfo/sa/default"),
			NotBefore: now.Add(-time.Hour), NotAfter: now.Add(23 * time.Hour), NextRotation: now.Add(11 * time.Hour)},
		{ID: spiffeid.RequireFromString("spiffe://cluster.local/ns/default/sa/default"),
			NextRotation: now.Add(30 * time.Second), LastError: "sign csr: rpc error: code = Unavailable"},
	}
	pods := []proxy.PodInfo{{UID: "u1", Name: "productpage-v1-6b7f", Namespace: "bookinfo", Identity: certs[0].ID.String(), IPs: []string{"10.244.1.5"}}}
	xs := &ztxds.Status{Connected: true, Types: []ztxds.TypeStatus{{TypeURL: "type.googleapis.com/istio.workload.Address", Resources: 6, Synced: true, AckedNonce: "1"}}}
	h, err := admin.NewAdmin(func() any { return admin.NewConfigDump(store.Snapshot(), pods, certs, xs) }, new(slog.LevelVar))
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return strings.TrimPrefix(srv.URL, "http://")
}

func TestZtunnelConfigTables(t *testing.T) {
	adminAddr := newZtunnelAdmin(t)
	for _, tc := range []struct {
		args       []string
		want       string
		wantStderr string
	}{
		{[]string{"workloads"}, `
NAMESPACE   POD-NAME              ADDRESS              NODE     WAYPOINT   PROTOCOL
bookinfo    productpage-v1-6b7f   10.244.1.5           node-a   waypoint   HBONE
bookinfo    reviews-v1-5c4d       10.244.2.7           node-b   None       HBONE
bookinfo    reviews-v2-8f9a       10.244.1.8           node-a   None       HBONE
default     sleep-7d9c            10.244.1.9,fd00::9   node-a   None       TCP
`, ""},
		// Flags after the section; the filters combine.
		{[]string{"w", "--node", "node-a", "-n", "bookinfo"}, `
NAMESPACE   POD-NAME              ADDRESS      NODE     WAYPOINT   PROTOCOL
bookinfo    productpage-v1-6b7f   10.244.1.5   node-a   waypoint   HBONE
bookinfo    reviews-v2-8f9a       10.244.1.8   node-a   None       HBONE
`, ""},
		// reviews has one unhealthy endpoint of two; the node filter does
		// not apply to services.
		{[]string{"services", "--node", "node-b"}, `
NAMESPACE   SERVICE-NAME   SERVICE-VIP   WAYPOINT   ENDPOINTS
bookinfo    productpage    10.96.12.4    waypoint   1/1
bookinfo    reviews        10.96.7.1     None       1/2
`, ""},
		{[]string{"policies"}, `
NAMESPACE      POLICY-NAME          ACTION          SCOPE
bookinfo       productpage-viewer   Allow           WorkloadSelector
default        ns-wide              Allow           Namespace
istio-system   deny-external        Deny(dry-run)   Global
`, ""},
		{[]string{"certs"}, `
CERTIFICATE-NAME                                TYPE   STATUS      VALID-CERT   NOT-AFTER              NEXT-ROTATION
spiffe://cluster.local/ns/bookinfo/sa/default   Leaf   Available   true         2026-03-02T11:00:00Z   2026-03-01T23:00:00Z
spiffe://cluster.local/ns/default/sa/default    Leaf   Error       false        -                      2026-03-01T12:00:30Z
`, "warning: certificate spiffe://cluster.local/ns/default/sa/default: last fetch failed: sign csr: rpc error: code = Unavailable\n"},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			stdout, stderr, code := zmeshctl(t, append([]string{"ztunnel-config", "--ztunnel-admin", adminAddr}, tc.args...)...)
			if code != 0 {
				t.Fatalf("exit %d: %s", code, stderr)
			}
			if want := strings.TrimPrefix(tc.want, "\n"); stdout != want {
				t.Errorf("got\n%s\nwant\n%s", stdout, want)
			}
			if stderr != tc.wantStderr {
				t.Errorf("stderr %q, want %q", stderr, tc.wantStderr)
			}
		})
	}
}

func TestZtunnelConfigAllPrintsEverySection(t *testing.T) {
	stdout, _, code := zmeshctl(t, "ztunnel-config", "all", "--ztunnel-admin", "http://"+newZtunnelAdmin(t)+"/")
	if code != 0 {
		t.Fatalf("exit %d", code)
	}
	var headers []string
	for _, table := range strings.Split(stdout, "\n\n") {
		headers = append(headers, fields(table)[0][0])
	}
	if got := strings.Join(headers, " "); got != "NAMESPACE NAMESPACE NAMESPACE CERTIFICATE-NAME" {
		t.Errorf("sections start with %s\n%s", got, stdout)
	}
}

// -o json is what the ztunnel sent: it decodes back into the same
// messages.
func TestZtunnelConfigJSONRoundTrips(t *testing.T) {
	adminAddr := newZtunnelAdmin(t)
	stdout, stderr, code := zmeshctl(t, "ztunnel-config", "workloads", "--ztunnel-admin", adminAddr, "-o", "json", "--namespace", "bookinfo")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	var got []json.RawMessage
	if err := json.Unmarshal([]byte(stdout), &got); err != nil {
		t.Fatalf("output is not a JSON list: %v\n%s", err, stdout)
	}
	wls, _, _ := fixture()
	want := map[string]*workload.Workload{}
	for _, w := range wls {
		if w.Namespace == "bookinfo" {
			want[w.Uid] = w
		}
	}
	if len(got) != len(want) {
		t.Fatalf("%d workloads, want %d", len(got), len(want))
	}
	for _, raw := range got {
		w := new(workload.Workload)
		if err := protojson.Unmarshal(raw, w); err != nil {
			t.Fatal(err)
		}
		if !proto.Equal(w, want[w.Uid]) {
			t.Errorf("round trip of %s:\n got %v\nwant %v", w.Uid, w, want[w.Uid])
		}
	}

	// all -o yaml: every section, as YAML.
	stdout, _, code = zmeshctl(t, "ztunnel-config", "all", "--ztunnel-admin", adminAddr, "-o", "yaml")
	if code != 0 {
		t.Fatalf("exit %d", code)
	}
	j, err := yaml.YAMLToJSON([]byte(stdout))
	if err != nil {
		t.Fatal(err)
	}
	var all struct {
		Workloads, Services, Policies []json.RawMessage
		Certificates                  []certificate
	}
	if err := json.Unmarshal(j, &all); err != nil {
		t.Fatal(err)
	}
	if len(all.Workloads) != 4 || len(all.Services) != 2 || len(all.Policies) != 3 || len(all.Certificates) != 2 {
		t.Errorf("all -o yaml has %d workloads, %d services, %d policies, %d certificates; want 4 2 3 2",
			len(all.Workloads), len(all.Services), len(all.Policies), len(all.Certificates))
	}
	s := new(workload.Service)
	if err := protojson.Unmarshal(all.Services[0], s); err != nil || s.GetName() != "productpage" {
		t.Errorf("first service %v, %v; want productpage", s, err)
	}
}

func TestZtunnelConfigBadAnswers(t *testing.T) {
	for _, tc := range []struct {
		name, path, body string
		want             string
	}{
		{"not json", "/config_dump", "<html>", "decode config dump"},
		{"bad workload", "/config_dump", `{"workloads":[{"name":7}]}`, "workload 0"},
		{"no config dump", "/other", "", "has no /config_dump (404 Not Found)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.URL.Path != tc.path {
					http.NotFound(w, r)
					return
				}
				w.Write([]byte(tc.body))
			}))
			defer srv.Close()
			_, stderr, code := zmeshctl(t, "ztunnel-config", "workloads", "--ztunnel-admin", srv.URL)
			if code != exitFailure || !strings.Contains(stderr, tc.want) || strings.Count(stderr, "\n") != 1 {
				t.Errorf("exit %d, stderr %q; want exit 1 and one line with %q", code, stderr, tc.want)
			}
		})
	}
}
