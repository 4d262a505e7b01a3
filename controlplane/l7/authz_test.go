package l7

import (
	"bytes"
	"os"
	"regexp"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/zmesh/zmesh/controlplane/model"
	"github.com/zmesh/zmesh/controlplane/model/modeltest"
	"github.com/zmesh/zmesh/internal/golden"
)

// The listener of a waypoint with several policies encodes to the same
// bytes on every build: the xDS server compares encodings, so a listener
// whose RBAC policies (a map inside an Any) came out in another order
// would be pushed again on every snapshot.
func TestAuthorizationListenerIsStable(t *testing.T) {
	data, err := os.ReadFile("testdata/authz_actions.txtar")
	if err != nil {
		t.Fatal(err)
	}
	input, _ := golden.Parse(data).File("input.yaml")
	snap := modeltest.Decode(t, input)
	var first []byte
	for i := range 50 {
		res := Build(Options{Mesh: model.DefaultMesh()}, snap, snap.Gateways[0])
		if len(res.Listeners) != 1 {
			t.Fatalf("%d listeners", len(res.Listeners))
		}
		b, err := proto.MarshalOptions{Deterministic: true}.Marshal(res.Listeners[0])
		if err != nil {
			t.Fatal(err)
		}
		if i == 0 {
			first = b
			continue
		}
		if !bytes.Equal(first, b) {
			t.Fatalf("build %d encodes the listener differently from build 0", i)
		}
	}
}

func TestPathTemplate(t *testing.T) {
	for _, c := range []struct {
		template   string
		match, not []string
		invalid    bool
	}{
		{template: "/users/{*}", match: []string{"/users/42", "/users/a.b~c"}, not: []string{"/users/", "/users/4/2", "/users"}},
		{template: "/files/{**}", match: []string{"/files/", "/files/a", "/files/a/b/c"}, not: []string{"/files", "/filesx/a"}},
		{template: "/a/{*}/b/{**}", match: []string{"/a/x/b/", "/a/x/b/y/z"}, not: []string{"/a/x/y/b/z"}},
		{template: "/v1.0/{*}", match: []string{"/v1.0/x"}, not: []string{"/v1x0/x"}},
		{template: "/a/{**}/b", invalid: true},
		{template: "/a/x{*}", invalid: true},
		{template: "/a/{*}*", invalid: true},
		{template: "a/{*}", invalid: true},
	} {
		re, err := pathTemplate(c.template)
		if c.invalid {
			if err == nil {
				t.Errorf("%s: accepted as %q", c.template, re)
			}
			continue
		}
		if err != nil {
			t.Errorf("%s: %v", c.template, err)
			continue
		}
		// Envoy and the waypoint match a safe_regex against the whole path.
		full := regexp.MustCompile("^(?:" + re + ")$")
		for _, p := range c.match {
			if !full.MatchString(p) {
				t.Errorf("%s (%s) does not match %s", c.template, re, p)
			}
		}
		for _, p := range c.not {
			if full.MatchString(p) {
				t.Errorf("%s (%s) matches %s", c.template, re, p)
			}
		}
	}
}

func TestBracketNames(t *testing.T) {
	for in, want := range map[string][]string{"[a]": {"a"}, "[a][b]": {"a", "b"}, "[x-y.z]": {"x-y.z"}} {
		got, err := bracketNames(in)
		if err != nil || len(got) != len(want) || got[0] != want[0] || got[len(got)-1] != want[len(want)-1] {
			t.Errorf("%s: got %q, %v; want %q", in, got, err, want)
		}
	}
	for _, in := range []string{"", "a", "[]", "[a", "[a]b", "[a[b]]"} {
		if got, err := bracketNames(in); err == nil {
			t.Errorf("%q: accepted as %q", in, got)
		}
	}
}
