package authz

import (
	"encoding/base64"
	"encoding/json"
	"flag"
	"fmt"
	"net/netip"
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/protobuf/encoding/protojson"
	"sigs.k8s.io/yaml"

	"github.com/zmesh/zmesh/api/workload/security"
	"github.com/zmesh/zmesh/internal/golden"
)

var update = flag.Bool("update", false, "rewrite the expected decisions in testdata/*.txtar")

// TestGolden runs every testdata/*.txtar archive. An archive holds:
//
//   - policies.yaml: a YAML list of istio.security.Authorization messages in
//     protojson form. As a convenience, an entry of an *_ips list may be a
//     CIDR or address string ("10.0.0.0/8", "::1") instead of
//     {address: <base64>, length: N}.
//   - cases: one connection per line, "src=ADDR:PORT dst=ADDR:PORT
//     [peer=spiffe://...|-] -> DECISION", where DECISION is what
//     formatDecision prints. Blank lines and #-comments are kept.
//
// With -update the DECISION parts are rewritten from the current behaviour.
func TestGolden(t *testing.T) {
	golden.RunCases(t, *update, func(t *testing.T, ar golden.Archive) func(string) (string, error) {
		policiesYAML, ok := ar.File("policies.yaml")
		if !ok {
			t.Fatal("archive has no policies.yaml")
		}
		policies := loadPolicies(t, policiesYAML)
		return func(line string) (string, error) {
			conn, err := parseConn(line)
			if err != nil {
				return "", err
			}
			return formatDecision(Evaluate(policies, conn)), nil
		}
	})
}

// formatDecision is the golden form of a decision: "allow ns/name" or
// "deny ns/name" when a policy decided, "allow (reason)" or "deny (reason)"
// when the default did, then what dry-run policies would have done.
func formatDecision(d Decision) string {
	verdict := "deny"
	if d.Allowed {
		verdict = "allow"
	}
	s := verdict + " (" + d.Reason + ")"
	if d.Policy != "" {
		s = verdict + " " + d.Policy
	}
	if len(d.DryRun) > 0 {
		s += " | dry-run: " + strings.Join(d.DryRun, "; ")
	}
	return s
}

func parseConn(s string) (Conn, error) {
	var c Conn
	var haveSrc, haveDst bool
	for _, field := range strings.Fields(s) {
		key, value, ok := strings.Cut(field, "=")
		if !ok {
			return Conn{}, fmt.Errorf("field %q: want key=value", field)
		}
		var err error
		switch key {
		case "src":
			c.Src, err = netip.ParseAddrPort(value)
			haveSrc = true
		case "dst":
			c.Dst, err = netip.ParseAddrPort(value)
			haveDst = true
		case "peer":
			if value != "-" {
				c.Peer, err = spiffeid.FromString(value)
			}
		default:
			err = fmt.Errorf("unknown field %q", key)
		}
		if err != nil {
			return Conn{}, err
		}
	}
	if !haveSrc || !haveDst {
		return Conn{}, fmt.Errorf("%q: want src= and dst=", s)
	}
	return c, nil
}

// loadPolicies reads a YAML list of Authorization messages and compiles them.
func loadPolicies(t *testing.T, data []byte) []*Policy {
	t.Helper()
	var out []*Policy
	for i, a := range loadAuthorizations(t, data) {
		p, err := Compile(a)
		if err != nil {
			t.Fatalf("policies.yaml[%d]: compile: %v", i, err)
		}
		out = append(out, p)
	}
	return out
}

func loadAuthorizations(t testing.TB, data []byte) []*security.Authorization {
	t.Helper()
	js, err := yaml.YAMLToJSON(data)
	if err != nil {
		t.Fatalf("policies.yaml: %v", err)
	}
	var list []any
	if err := json.Unmarshal(js, &list); err != nil {
		t.Fatalf("policies.yaml: want a list: %v", err)
	}
	var out []*security.Authorization
	for i, item := range list {
		expandCIDRs(t, item)
		raw, err := json.Marshal(item)
		if err != nil {
			t.Fatal(err)
		}
		a := &security.Authorization{}
		if err := protojson.Unmarshal(raw, a); err != nil {
			t.Fatalf("policies.yaml[%d]: %v", i, err)
		}
		out = append(out, a)
	}
	return out
}

// expandCIDRs rewrites, anywhere in a decoded JSON value, string entries of
// address lists into the {address, length} objects protojson expects.
func expandCIDRs(t testing.TB, v any) {
	t.Helper()
	switch v := v.(type) {
	case map[string]any:
		for key, child := range v {
			if list, ok := child.([]any); ok && isAddressList(key) {
				for i, entry := range list {
					if s, ok := entry.(string); ok {
						list[i] = addressJSON(t, s)
					}
				}
			}
			expandCIDRs(t, child)
		}
	case []any:
		for _, child := range v {
			expandCIDRs(t, child)
		}
	}
}

func isAddressList(key string) bool {
	switch key {
	case "sourceIps", "notSourceIps", "destinationIps", "notDestinationIps",
		"source_ips", "not_source_ips", "destination_ips", "not_destination_ips":
		return true
	}
	return false
}

func addressJSON(t testing.TB, s string) map[string]any {
	t.Helper()
	var pfx netip.Prefix
	if strings.Contains(s, "/") {
		var err error
		if pfx, err = netip.ParsePrefix(s); err != nil {
			t.Fatalf("policies.yaml: %v", err)
		}
	} else {
		addr, err := netip.ParseAddr(s)
		if err != nil {
			t.Fatalf("policies.yaml: %v", err)
		}
		pfx = netip.PrefixFrom(addr, addr.BitLen())
	}
	return map[string]any{
		"address": base64.StdEncoding.EncodeToString(pfx.Addr().AsSlice()),
		"length":  pfx.Bits(),
	}
}
