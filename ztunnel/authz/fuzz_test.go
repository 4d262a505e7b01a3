package authz

import (
	"net/netip"
	"os"
	"path/filepath"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/protobuf/proto"

	"github.com/zmesh/zmesh/api/workload/security"
	"github.com/zmesh/zmesh/internal/golden"
)

var fuzzConns = []Conn{
	{},
	{Src: netip.MustParseAddrPort("10.0.0.1:5555"), Dst: netip.MustParseAddrPort("10.0.0.2:80")},
	{
		Src:  netip.MustParseAddrPort("[::ffff:10.0.0.1]:5555"),
		Dst:  netip.MustParseAddrPort("[fe80::2%eth0]:443"),
		Peer: spiffeid.RequireFromString("spiffe://cluster.local/ns/a/sa/b"),
	},
	{
		Src:  netip.MustParseAddrPort("[fd00::1]:1"),
		Dst:  netip.MustParseAddrPort("10.0.0.2:65535"),
		Peer: spiffeid.RequireFromString("spiffe://td/not/a/workload"),
	},
}

// FuzzCompile feeds Compile what an xDS server could send: any bytes that
// unmarshal as an Authorization. Compile must not panic, and a policy it
// accepts must evaluate without panicking and obey two invariants.
func FuzzCompile(f *testing.F) {
	files, err := filepath.Glob(filepath.Join("testdata", "*.txtar"))
	if err != nil {
		f.Fatal(err)
	}
	for _, file := range files {
		data, err := os.ReadFile(file)
		if err != nil {
			f.Fatal(err)
		}
		yml, _ := golden.Parse(data).File("policies.yaml")
		for _, a := range loadAuthorizations(f, yml) {
			b, err := proto.Marshal(a)
			if err != nil {
				f.Fatal(err)
			}
			f.Add(b)
		}
	}
	f.Add([]byte{})
	bad, _ := proto.Marshal(&security.Authorization{Name: "p", Namespace: "ns", Rules: []*security.Rule{{Clauses: []*security.Clause{{
		Matches: []*security.Match{{SourceIps: []*security.Address{{Address: []byte{1, 2, 3}, Length: 99}}, DestinationPorts: []uint32{70000}}},
	}}}}})
	f.Add(bad)

	f.Fuzz(func(t *testing.T, data []byte) {
		var a security.Authorization
		if err := proto.Unmarshal(data, &a); err != nil {
			return
		}
		p, err := Compile(&a)
		if err != nil {
			if err.Error() == "" {
				t.Fatal("empty error message")
			}
			return
		}
		dry := *p
		dry.DryRun = true
		for _, c := range fuzzConns {
			d := Evaluate([]*Policy{p}, c)
			// A lone policy decides only for itself: DENY can only deny,
			// ALLOW can only allow, and the deciding key is its own.
			if d.Policy != "" && d.Policy != p.Key() {
				t.Fatalf("decided by %q, only %q given", d.Policy, p.Key())
			}
			if p.Action == security.Action_DENY && !p.DryRun && !d.Allowed && d.Policy == "" {
				t.Fatalf("DENY policy alone denied by default: %+v", d)
			}
			// A dry-run policy never changes the outcome.
			if got := Evaluate([]*Policy{&dry}, c); !got.Allowed || got.Policy != "" {
				t.Fatalf("dry-run policy decided: %+v", got)
			}
		}
	})
}
