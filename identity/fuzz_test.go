package identity

import (
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/protobuf/types/known/structpb"
)

// FuzzSign feeds arbitrary CSRs to the signing path: it must never panic,
// and whatever it signs must carry exactly the authorized identity.
func FuzzSign(f *testing.F) {
	ca, _ := newPluggedCA(f, CAOptions{})
	good := newCSR(f, "spiffe://evil.example/x")
	f.Add(good)
	if der, err := pemToDER(good); err == nil {
		f.Add(der)
	}
	f.Add([]byte("-----BEGIN CERTIFICATE REQUEST-----\n-----END CERTIFICATE REQUEST-----\n"))
	f.Add([]byte{0x30, 0x82, 0xff, 0xff})
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, csr []byte) {
		leaf, err := ca.Sign(csr, podAID, time.Hour)
		if err != nil {
			return
		}
		if len(leaf.URIs) != 1 || leaf.URIs[0].String() != podAID.String() || leaf.IsCA {
			t.Fatalf("signed a certificate with URIs %v, CA %v", leaf.URIs, leaf.IsCA)
		}
	})
}

func pemToDER(p []byte) ([]byte, error) {
	r, err := parseCSR(p)
	if err != nil {
		return nil, err
	}
	return r.Raw, nil
}

// FuzzNewCAFromPEM: loading cacerts files must fail cleanly on any input.
func FuzzNewCAFromPEM(f *testing.F) {
	p := newPluggedFiles(f, 365*24*time.Hour)
	f.Add(p.caCert, p.caKey, p.certChain, p.rootCert)
	f.Add(p.caCert, p.caKey, []byte{}, p.rootCert)
	f.Add(p.rootCert, p.caKey, p.certChain, p.caCert)
	f.Add([]byte("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"), []byte("-----BEGIN EC PARAMETERS-----\nBggqhkjOPQMBBw==\n-----END EC PARAMETERS-----\n"), []byte{}, []byte("x"))
	f.Fuzz(func(t *testing.T, caCert, caKey, certChain, rootCert []byte) {
		ca, err := NewCAFromPEM(caCert, caKey, certChain, rootCert, CAOptions{Now: fixedNow})
		if err != nil {
			return
		}
		if len(ca.Bundle().X509Authorities()) == 0 {
			t.Fatal("loaded a CA with no root")
		}
	})
}

// FuzzParseStaticTokens: the token file parser must never panic, and every
// token it accepts must authenticate to a valid identity.
func FuzzParseStaticTokens(f *testing.F) {
	f.Add("tok spiffe://cluster.local/ns/a/sa/b node1\n")
	f.Add("# comment\n\n  tok\tspiffe://cluster.local/x -\n")
	f.Add("tok spiffe://cluster.local/x n1\ntok spiffe://cluster.local/y n2\n")
	f.Add("tok spiffe://Cluster.local/x n1 extra\r\n")
	f.Add("\x00 \xff spiffe://")
	f.Fuzz(func(t *testing.T, in string) {
		a, err := ParseStaticTokens(strings.NewReader(in))
		if err != nil {
			return
		}
		for _, line := range strings.Split(in, "\n") {
			fields := strings.Fields(line)
			if len(fields) != 3 || strings.HasPrefix(fields[0], "#") {
				continue
			}
			c, err := a.Authenticate(t.Context(), fields[0])
			if err != nil || c.ID.IsZero() {
				t.Fatalf("accepted token %q does not authenticate: %v", fields[0], err)
			}
		}
	})
}

// FuzzRequestMetadata covers what a caller controls in a request besides
// the CSR: the authorization header and ImpersonatedIdentity.
func FuzzRequestMetadata(f *testing.F) {
	f.Add("Bearer tok", "spiffe://cluster.local/ns/a/sa/b", false)
	f.Add("bearer  tok ", "", false)
	f.Add("Basic x", "spiffe://cluster.local/ns/a/sa/b/../c", false)
	f.Add("Bearer", "not a spiffe id", true)
	f.Add("", "spiffe://cluster.local", false)
	f.Fuzz(func(t *testing.T, auth, impersonated string, asNumber bool) {
		if tok, err := parseBearer([]string{auth}); err == nil && (tok == "" || tok != strings.TrimSpace(tok)) {
			t.Fatalf("bearer token %q accepted from %q", tok, auth)
		}
		v := structpb.NewStringValue(impersonated)
		if asNumber {
			v = structpb.NewNumberValue(float64(len(impersonated)))
		}
		id, err := requestedIdentity(&structpb.Struct{Fields: map[string]*structpb.Value{ImpersonatedIdentityKey: v}})
		if err != nil {
			return
		}
		if asNumber {
			t.Fatal("non-string ImpersonatedIdentity accepted")
		}
		if !id.IsZero() && id.String() != impersonated {
			t.Fatalf("parsed %q as %s", impersonated, id)
		}
	})
}

// FuzzParseWireChain: a certificate service's answer must parse or fail
// cleanly.
func FuzzParseWireChain(f *testing.F) {
	ca, _ := newPluggedCA(f, CAOptions{})
	leaf, err := ca.Sign(newCSR(f), podAID, 0)
	if err != nil {
		f.Fatal(err)
	}
	chain := ca.WireChain(leaf)
	f.Add(chain[0], chain[1], chain[2])
	f.Add("", "", "")
	f.Add(chain[2], chain[0], "junk")
	f.Fuzz(func(t *testing.T, a, b, c string) {
		certs, err := parseWireChain([]string{a, b, c})
		if err != nil {
			return
		}
		if len(certs) == 0 || certs[0] == nil {
			t.Fatal("chain without a leaf accepted")
		}
	})
}

// FuzzParseWorkload: ParseWorkload and ID() must round-trip.
func FuzzParseWorkload(f *testing.F) {
	for _, s := range []string{
		"spiffe://cluster.local/ns/default/sa/a",
		"spiffe://cluster.local/ns/default",
		"spiffe://Cluster.local/ns/a/sa/b",
		"spiffe://cluster.local/ns//sa/b",
		"spiffe://cluster.local/ns/a%2F/sa/b",
		"",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		w, err := ParseWorkload(s)
		if err != nil {
			return
		}
		id, err := w.ID()
		if err != nil {
			t.Fatalf("parsed %q but cannot rebuild its ID: %v", s, err)
		}
		if id.String() != s {
			t.Fatalf("round trip %q → %s", s, id)
		}
		if _, err := spiffeid.FromString(id.String()); err != nil {
			t.Fatal(err)
		}
	})
}
