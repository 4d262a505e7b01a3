package state_test

import (
	"errors"
	"io/fs"
	"net/netip"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/protobuf/proto"

	"github.com/zmesh/zmesh/api/workload"
	"github.com/zmesh/zmesh/api/workload/security"
	"github.com/zmesh/zmesh/identity"
	"github.com/zmesh/zmesh/ztunnel/authz"
	"github.com/zmesh/zmesh/ztunnel/state"
)

// The example a user copies must load, and mean what its comments say.
func TestLoadFileExample(t *testing.T) {
	u, err := state.LoadFile("testdata/local.yaml")
	if err != nil {
		t.Fatal(err)
	}
	s := state.NewStore()
	if err := s.Replace(u); err != nil {
		t.Fatal(err)
	}
	snap := s.Snapshot()

	frontend := snap.WorkloadByAddr(netAddr("", "10.0.0.1"))
	if frontend == nil || !frontend.HBONE() || frontend.Identity != identity.MustWorkloadID("cluster.local", "shop", "frontend") {
		t.Fatalf("10.0.0.1 = %+v, want the HBONE frontend pod as shop/frontend", frontend)
	}
	if web := snap.WorkloadByAddr(netAddr("", "10.0.0.2")); web == nil || !web.HBONE() {
		t.Errorf("10.0.0.2 = %+v, want the HBONE web pod", web)
	}
	legacy := snap.WorkloadByAddr(netAddr("", "10.0.1.5"))
	if legacy == nil || legacy.HBONE() || !legacy.Identity.IsZero() {
		t.Errorf("10.0.1.5 = %+v, want a plain pod without identity", legacy)
	}
	svc := snap.ServiceByVIP(netAddr("", "10.96.0.10"))
	if svc == nil || svc.Key() != "shop/web.shop.svc.cluster.local" || svc.Ports[80] != 8080 {
		t.Fatalf("10.96.0.10 = %+v, want service web with port 80→8080", svc)
	}
	if got, want := uids(snap.Endpoints(svc.Key())), []string{"cluster1//Pod/legacy/web-legacy", "cluster1//Pod/shop/web-5c6b"}; !slices.Equal(got, want) {
		t.Errorf("endpoints of web = %v, want %v", got, want)
	}

	ps, missing := snap.PoliciesFor(frontend)
	if len(missing) > 0 {
		t.Fatalf("the frontend lists policies the file lacks: %v", missing)
	}
	dst := netip.MustParseAddrPort("10.0.0.1:8080")
	for _, tt := range []struct {
		src, peer string
		port      uint16
		allowed   bool
	}{
		{"10.0.0.2:40000", "spiffe://cluster.local/ns/shop/sa/web", 8080, true},
		{"10.0.0.2:40000", "spiffe://cluster.local/ns/shop/sa/web", 9090, false},    // ALLOW names 8080 only
		{"10.0.0.2:40000", "spiffe://cluster.local/ns/other/sa/web", 8080, false},   // not from shop
		{"192.168.3.4:40000", "spiffe://cluster.local/ns/shop/sa/web", 8080, false}, // DENY by CIDR
	} {
		c := authz.Conn{Src: netip.MustParseAddrPort(tt.src), Dst: netip.AddrPortFrom(dst.Addr(), tt.port), Peer: spiffeid.RequireFromString(tt.peer)}
		if d := authz.Evaluate(ps, c); d.Allowed != tt.allowed {
			t.Errorf("%s as %s to port %d: %+v, want allowed=%v", tt.src, tt.peer, tt.port, d, tt.allowed)
		}
	}
}

// Text addresses become the wire's bytes, whichever spelling the field
// names use.
func TestParseLocalConfigTextAddresses(t *testing.T) {
	u, err := state.ParseLocalConfig([]byte(`
workloads:
  - uid: snake
    namespace: ns
    service_account: sa
    tunnel_protocol: HBONE
    addresses: [10.0.0.1, "fd00::1"]
    waypoint: {address: 10.0.0.9, hbone_mtls_port: 15009}
    authorization_policies: [ns/p]
  - uid: camel
    namespace: ns
    serviceAccount: sa
    tunnelProtocol: HBONE
    addresses: ["10.0.0.2"]
    waypoint: {address: {network: net1, address: 10.0.0.9}}
    services: {ns/web: {ports: [{servicePort: 80, targetPort: 8080}]}}
services:
  - namespace: ns
    hostname: web
    addresses: [10.96.0.1, {network: net2, address: "fd00:96::1"}]
    load_balancing: {mode: STRICT, routingPreference: [NODE]}
policies:
  - name: p
    namespace: ns
    scope: WORKLOAD_SELECTOR
    rules:
      - clauses:
          - matches:
              - source_ips: [10.0.0.0/24, 10.1.2.3]
                notDestinationIps: ["fd00::/64"]
`))
	if err != nil {
		t.Fatal(err)
	}
	snake := u.Addresses["snake"].GetWorkload()
	if want := [][]byte{ip("10.0.0.1"), ip("fd00::1")}; !slices.EqualFunc(snake.GetAddresses(), want, slices.Equal) {
		t.Errorf("snake addresses = %v, want %v", snake.GetAddresses(), want)
	}
	if snake.GetServiceAccount() != "sa" || snake.GetTunnelProtocol() != workload.TunnelProtocol_HBONE || !slices.Equal(snake.GetAuthorizationPolicies(), []string{"ns/p"}) {
		t.Errorf("snake_case fields lost: %v", snake)
	}
	wantWP := &workload.GatewayAddress{Destination: &workload.GatewayAddress_Address{Address: &workload.NetworkAddress{Address: ip("10.0.0.9")}}, HboneMtlsPort: 15009}
	if !proto.Equal(snake.GetWaypoint(), wantWP) {
		t.Errorf("snake waypoint = %v, want %v", snake.GetWaypoint(), wantWP)
	}
	camel := u.Addresses["camel"].GetWorkload()
	if camel.GetServiceAccount() != "sa" || camel.GetServices()["ns/web"].GetPorts()[0].GetTargetPort() != 8080 {
		t.Errorf("camelCase fields lost: %v", camel)
	}
	if a := camel.GetWaypoint().GetAddress(); a.GetNetwork() != "net1" || !slices.Equal(a.GetAddress(), ip("10.0.0.9")) {
		t.Errorf("camel waypoint = %v, want net1/10.0.0.9", a)
	}
	svc := u.Addresses["ns/web"].GetService()
	wantVIPs := []*workload.NetworkAddress{{Address: ip("10.96.0.1")}, {Network: "net2", Address: ip("fd00:96::1")}}
	if !slices.EqualFunc(svc.GetAddresses(), wantVIPs, func(a, b *workload.NetworkAddress) bool { return proto.Equal(a, b) }) {
		t.Errorf("service addresses = %v, want %v", svc.GetAddresses(), wantVIPs)
	}
	if lb := svc.GetLoadBalancing(); lb.GetMode() != workload.LoadBalancing_STRICT || !slices.Equal(lb.GetRoutingPreference(), []workload.LoadBalancing_Scope{workload.LoadBalancing_NODE}) {
		t.Errorf("load balancing = %v", lb)
	}
	m := u.Policies["ns/p"].GetRules()[0].GetClauses()[0].GetMatches()[0]
	wantSrc := []*security.Address{{Address: ip("10.0.0.0"), Length: 24}, {Address: ip("10.1.2.3"), Length: 32}}
	if !slices.EqualFunc(m.GetSourceIps(), wantSrc, func(a, b *security.Address) bool { return proto.Equal(a, b) }) {
		t.Errorf("source_ips = %v, want %v", m.GetSourceIps(), wantSrc)
	}
	if got := m.GetNotDestinationIps(); len(got) != 1 || !proto.Equal(got[0], &security.Address{Address: ip("fd00::"), Length: 64}) {
		t.Errorf("not_destination_ips = %v, want fd00::/64", got)
	}
	if err := state.NewStore().Replace(u); err != nil {
		t.Errorf("the parsed config does not apply: %v", err)
	}
}

func TestParseLocalConfigErrors(t *testing.T) {
	tests := []struct {
		name, yaml string
		want       []string // all must appear in the error
	}{
		{"unknown top-level field", "workloads: []\npods: []\n", []string{"decode", `"pods"`}},
		{"unknown workload field", "workloads:\n- uid: a\n  podIP: 10.0.0.1\n", []string{"workloads[0]", "podIP"}},
		{"unknown nested field", "services:\n- namespace: ns\n  hostname: h\n  ports: [{port: 80}]\n", []string{"services[0]", `"port"`}},
		{"unknown policy field", "policies:\n- name: p\n  namespace: ns\n  rules: [{clauses: [{matches: [{sourceIP: [10.0.0.1]}]}]}]\n", []string{"policies[0]", "sourceIP"}},
		{"duplicate uid", "workloads:\n- uid: a\n- uid: b\n- uid: a\n", []string{"workloads[2]", `uid "a" appears twice`}},
		{"duplicate service", "services:\n- {namespace: ns, hostname: h}\n- {namespace: ns, hostname: h}\n", []string{"services[1]", `"ns/h" appears twice`}},
		{"duplicate policy", "policies:\n- {name: p, namespace: ns}\n- {name: p, namespace: ns, action: DENY}\n", []string{"policies[1]", `"ns/p" appears twice`}},
		{"bad policy CIDR", "policies:\n- name: p\n  namespace: ns\n  rules: [{clauses: [{matches: [{sourceIps: [10.0.0.0/24, 10.0.0.300/24]}]}]}]\n",
			[]string{"policies[0]: rules[0].clauses[0].matches[0].source_ips[1]", "10.0.0.300/24"}},
		{"bad service address", "services:\n- namespace: ns\n  hostname: h\n  addresses: [10.96.0.1, not-an-ip]\n", []string{"services[0]: addresses[1]", "not-an-ip"}},
		{"bad waypoint address", "workloads:\n- uid: a\n  waypoint: {address: 10.0.0.256}\n", []string{"workloads[0]: waypoint.address", "10.0.0.256"}},
		{"unknown enum", "workloads:\n- uid: a\n  tunnelProtocol: WIREGUARD\n", []string{"workloads[0]", "WIREGUARD"}},
		{"not YAML", "workloads: [\n", []string{"decode"}},
		{"list is a map", "workloads: {uid: a}\n", []string{"decode"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			u, err := state.ParseLocalConfig([]byte(tt.yaml))
			if err == nil {
				// A bad policy is refused by the store, which enforces a
				// deny-all in its place.
				err = state.NewStore().Replace(u)
			}
			if err == nil {
				t.Fatalf("ParseLocalConfig and Replace accepted it: %+v", u)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not say %q", err, w)
				}
			}
		})
	}
}

// A policy that does not decode is read for what it can say of its scope;
// with nothing readable it becomes a mesh-wide deny.
func TestParseLocalConfigBadPolicies(t *testing.T) {
	u, err := state.ParseLocalConfig([]byte(`policies:
- {name: allow-a, namespace: ns, scope: NAMESPACE, action: ALLOW, rules: [{clauses: [{matches: [{sourceIps: [not-an-ip]}]}]}]}
- {name: sel, namespace: ns, scope: WORKLOAD_SELECTOR, dryRun: true, bogus: 1}
- {name: [not, a, string], scope: NAMESPACE, bogus: 1}
- {name: ok, namespace: ns}
`))
	if err != nil {
		t.Fatal(err)
	}
	s := state.NewStore()
	err = s.Replace(u)
	var rej state.RejectedError
	if !errors.As(err, &rej) || len(rej) != 3 {
		t.Fatalf("Replace = %v, want three policies rejected", err)
	}
	snap := s.Snapshot()
	for _, tt := range []struct {
		key   string
		scope security.Scope
		dry   bool
	}{
		{"ns/allow-a", security.Scope_NAMESPACE, false},
		{"ns/sel", security.Scope_WORKLOAD_SELECTOR, true},
		{"policies[2]", security.Scope_GLOBAL, false},
	} {
		p := snap.Policy(tt.key)
		if p == nil || p.RejectedBecause() == "" || p.Action != security.Action_DENY || p.Scope != tt.scope || p.DryRun != tt.dry {
			t.Errorf("%s = %+v, want a %v deny-all stand-in (dry-run %v)", tt.key, p, tt.scope, tt.dry)
		}
	}
	if p := snap.Policy("ns/ok"); p == nil || p.RejectedBecause() != "" {
		t.Errorf("the good policy = %+v, want it applied", p)
	}
}

func TestLoadFileNamesTheFile(t *testing.T) {
	path := t.TempDir() + "/bad.yaml"
	if err := os.WriteFile(path, []byte("workloads:\n- uid: a\n- uid: a\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := state.LoadFile(path); err == nil || !strings.HasPrefix(err.Error(), path+": workloads[1]") {
		t.Errorf("LoadFile error = %v, want it to start with the path and the entry", err)
	}
	if _, err := state.LoadFile(t.TempDir() + "/absent.yaml"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("LoadFile(absent) = %v, want a not-exist error", err)
	}
}

// FuzzParseLocalConfig: the parser never panics, and whatever it accepts
// can be handed to the store (which validates; it must not panic either).
func FuzzParseLocalConfig(f *testing.F) {
	example, err := os.ReadFile("testdata/local.yaml")
	if err != nil {
		f.Fatal(err)
	}
	// The example goes in one top-level section at a time: a large seed
	// keeps the engine minimising it for most of a short run (a whole
	// 2.7 KB example allowed a few thousand executions a minute).
	var seeds []string
	for _, part := range regexp.MustCompile(`(?m)^(?:workloads|services|policies):`).FindAllStringIndex(string(example), -1) {
		seeds = append(seeds, string(example[part[0]:]))
	}
	for i := range seeds[:len(seeds)-1] {
		seeds[i] = seeds[i][:len(seeds[i])-len(seeds[i+1])]
	}
	for _, seed := range append(seeds,
		"workloads: [{uid: a, addresses: [10.0.0.1, \"::1\"], waypoint: {address: 10.0.0.9}}]",
		"workloads: [{uid: a, services: {ns/h: {ports: [{servicePort: 80}]}}, waypoint: {hostname: {namespace: ns, hostname: h}}}]",
		"services: [{namespace: ns, hostname: h, addresses: [10.96.0.1, {network: n, address: \"::1\"}]}]",
		"policies: [{name: p, namespace: ns, rules: [{clauses: [{matches: [{sourceIps: [10.0.0.0/8], notDestinationIps: [\"::1\"]}]}]}]}]",
		"policies: [{name: p, namespace: ns, rules: [{clauses: [{matches: [{sourceIps: [{address: CgAAAQ==, length: 8}]}]}]}]}]",
		"workloads: [null, 1, \"x\", [], {}]",
		"",
	) {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		u, err := state.ParseLocalConfig(data)
		if err != nil {
			return
		}
		s := state.NewStore()
		_ = s.Replace(u)
		_ = s.Apply(u)
		snap := s.Snapshot()
		for _, w := range snap.Workloads() {
			snap.PoliciesFor(w)
		}
	})
}
