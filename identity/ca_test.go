package identity

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

func TestLoadOrCreateCAGeneratesAndReloads(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "ca")
	ca, err := LoadOrCreateCA(dir, CAOptions{})
	if err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(filepath.Join(dir, FileRootKey))
	if err != nil {
		t.Fatal(err)
	}
	if perm := st.Mode().Perm(); perm != 0o600 {
		t.Errorf("%s mode = %o, want 600", FileRootKey, perm)
	}
	if ca.TrustDomain() != testTD {
		t.Errorf("trust domain = %s, want default %s", ca.TrustDomain(), testTD)
	}
	root := ca.Bundle().X509Authorities()
	if len(root) != 1 || root[0].PublicKeyAlgorithm != x509.ECDSA {
		t.Fatalf("roots = %v, want one ECDSA root", root)
	}
	if got := root[0].NotAfter.Sub(root[0].NotBefore); got < 9*365*24*time.Hour {
		t.Errorf("root lifetime = %s, want about 10 years", got)
	}

	again, err := LoadOrCreateCA(dir, CAOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if !again.Bundle().Equal(ca.Bundle()) {
		t.Fatal("reloaded CA has another root")
	}
	// A certificate of the reloaded CA verifies against the first one's roots.
	svid, err := again.Issue(podAID, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := x509svid.Verify(svid.Certificates, ca.Bundle()); err != nil {
		t.Fatal(err)
	}
}

func TestLoadOrCreateCAPluggedIntermediate(t *testing.T) {
	f := newPluggedFiles(t, 365*24*time.Hour)
	dir := t.TempDir()
	for name, b := range map[string][]byte{FileCACert: f.caCert, FileCAKey: f.caKey, FileCertChain: f.certChain, FileRootCert: f.rootCert} {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	ca, err := LoadOrCreateCA(dir, CAOptions{Now: fixedNow})
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := ca.Sign(newCSR(t, "spiffe://evil.example/ns/x/sa/y"), podAID, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := leaf.CheckSignatureFrom(f.inter); err != nil {
		t.Errorf("leaf not signed by ca-cert.pem: %v", err)
	}
	chain := ca.WireChain(leaf)
	if len(chain) != 3 {
		t.Fatalf("wire chain has %d elements, want leaf, intermediate, root", len(chain))
	}
	if chain[2] != string(f.rootCert) {
		t.Errorf("last wire chain element is not root-cert.pem")
	}
	certs, err := parseWireChain(chain)
	if err != nil {
		t.Fatal(err)
	}
	id, _, err := x509svid.Verify(certs, ca.Bundle(), x509svid.WithTime(testEpoch))
	if err != nil {
		t.Fatal(err)
	}
	if id != podAID {
		t.Errorf("verified id = %s, want %s", id, podAID)
	}
}

func TestSignCertificateShape(t *testing.T) {
	ca, _ := newPluggedCA(t, CAOptions{})
	leaf, err := ca.Sign(newCSR(t, "spiffe://cluster.local/ns/x/sa/other"), podAID, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(leaf.URIs) != 1 || leaf.URIs[0].String() != podAID.String() {
		t.Errorf("URI SANs = %v, want only %s", leaf.URIs, podAID)
	}
	if len(leaf.DNSNames)+len(leaf.IPAddresses)+len(leaf.EmailAddresses) != 0 {
		t.Errorf("leaf has SANs from the CSR: %v %v %v", leaf.DNSNames, leaf.IPAddresses, leaf.EmailAddresses)
	}
	if leaf.Subject.CommonName != "" {
		t.Errorf("subject = %s, want empty", leaf.Subject)
	}
	if leaf.IsCA {
		t.Error("leaf is a CA")
	}
	if want := x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment; leaf.KeyUsage != want {
		t.Errorf("key usage = %v, want %v", leaf.KeyUsage, want)
	}
	if len(leaf.ExtKeyUsage) != 2 || leaf.ExtKeyUsage[0] != x509.ExtKeyUsageServerAuth || leaf.ExtKeyUsage[1] != x509.ExtKeyUsageClientAuth {
		t.Errorf("ext key usage = %v, want server+client auth", leaf.ExtKeyUsage)
	}
	if !leaf.NotBefore.Equal(testEpoch.Add(-time.Minute)) {
		t.Errorf("NotBefore = %s, want now-1m", leaf.NotBefore)
	}
	if leaf.SerialNumber.Sign() <= 0 || leaf.SerialNumber.BitLen() > 128 {
		t.Errorf("serial %s is not a positive 128-bit number", leaf.SerialNumber)
	}
}

func TestSignTTL(t *testing.T) {
	shortInter := newPluggedFiles(t, 3*time.Hour)
	short, err := NewCAFromPEM(shortInter.caCert, shortInter.caKey, shortInter.certChain, shortInter.rootCert, CAOptions{Now: fixedNow})
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := newPluggedCA(t, CAOptions{DefaultTTL: 2 * time.Hour, MaxTTL: 10 * time.Hour})
	tests := []struct {
		name string
		ca   *CA
		ttl  time.Duration
		want time.Duration
	}{
		{"default", ca, 0, 2 * time.Hour},
		{"requested", ca, 5 * time.Hour, 5 * time.Hour},
		{"capped at max", ca, 100 * time.Hour, 10 * time.Hour},
		{"capped at signer expiry", short, 24 * time.Hour, 3 * time.Hour},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			leaf, err := tt.ca.Sign(newCSR(t), podAID, tt.ttl)
			if err != nil {
				t.Fatal(err)
			}
			if got := leaf.NotAfter.Sub(testEpoch); got != tt.want {
				t.Errorf("lifetime from now = %s, want %s", got, tt.want)
			}
		})
	}
	if _, err := ca.Sign(newCSR(t), podAID, -time.Second); err == nil {
		t.Error("negative ttl accepted")
	}
	if _, err := NewCAFromPEM(shortInter.caCert, shortInter.caKey, shortInter.certChain, shortInter.rootCert, CAOptions{DefaultTTL: 48 * time.Hour, MaxTTL: time.Hour}); err == nil {
		t.Error("default ttl above max ttl accepted")
	}
}

func TestSignRejects(t *testing.T) {
	ca, _ := newPluggedCA(t, CAOptions{})
	good := newCSR(t)
	rsa1024, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	p224, err := ecdsa.GenerateKey(elliptic.P224(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tampered := []byte(strings.Replace(string(good), "A", "B", 1))
	tests := []struct {
		name    string
		csr     []byte
		id      spiffeid.ID
		wantCSR bool // error is ErrInvalidCSR
		want    string
	}{
		{"empty", nil, podAID, true, "empty"},
		{"garbage DER", []byte{0x30, 0x03, 1, 2, 3}, podAID, true, ""},
		{"bad PEM", []byte("-----BEGIN CERTIFICATE REQUEST-----\n!!!\n"), podAID, true, "no PEM block"},
		{"wrong PEM type", []byte("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"), podAID, true, "want CERTIFICATE REQUEST"},
		{"trailing data", append(append([]byte{}, good...), "junk"...), podAID, true, "data after"},
		{"tampered", tampered, podAID, true, ""},
		{"rsa 1024", csrFor(t, rsa1024), podAID, true, "1024 bits"},
		{"p224", csrFor(t, p224), podAID, true, "P-224"},
		{"too large", make([]byte, maxCSRSize+1), podAID, true, "exceeds"},
		{"foreign trust domain", good, foreignID, false, "outside"},
		{"empty identity", good, spiffeid.ID{}, false, "empty identity"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ca.Sign(tt.csr, tt.id, 0)
			if err == nil {
				t.Fatal("accepted")
			}
			if errors.Is(err, ErrInvalidCSR) != tt.wantCSR {
				t.Errorf("errors.Is(ErrInvalidCSR) = %v, want %v: %v", !tt.wantCSR, tt.wantCSR, err)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %q does not mention %q", err, tt.want)
			}
		})
	}
	rsa2048, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ca.Sign(csrFor(t, rsa2048), podAID, 0); err != nil {
		t.Errorf("rsa 2048 CSR rejected: %v", err)
	}
}

func TestNewCAFromPEMErrors(t *testing.T) {
	f := newPluggedFiles(t, 365*24*time.Hour)
	other := newPluggedFiles(t, 365*24*time.Hour)
	notCA, notCAKey := testCert(t, &x509.Certificate{NotBefore: testEpoch.Add(-time.Hour), NotAfter: testEpoch.Add(time.Hour), BasicConstraintsValid: true, KeyUsage: x509.KeyUsageDigitalSignature}, nil, nil)
	notCAKeyPEM, err := keyPEM(notCAKey)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name                             string
		caCert, caKey, certChain, rootPE []byte
		now                              time.Time
		want                             string
	}{
		{"key not PEM", f.caCert, []byte("nope"), f.certChain, f.rootCert, testEpoch, "ca-key.pem: no PEM block"},
		{"cert not PEM", []byte{}, f.caKey, f.certChain, f.rootCert, testEpoch, "ca-cert.pem: no PEM block"},
		{"root not PEM", f.caCert, f.caKey, f.certChain, []byte("x"), testEpoch, "root-cert.pem: no PEM block"},
		{"chain has a key", f.caCert, f.caKey, f.caKey, f.rootCert, testEpoch, "cert-chain.pem: PEM block 1"},
		{"key mismatch", f.caCert, other.caKey, f.certChain, f.rootCert, testEpoch, "ca-key.pem: does not match"},
		{"not a CA", certsPEM(notCA), notCAKeyPEM, nil, certsPEM(notCA), testEpoch, "ca-cert.pem: not a CA certificate"},
		{"other root", f.caCert, f.caKey, f.certChain, other.rootCert, testEpoch, "ca-cert.pem: does not chain to a root in root-cert.pem"},
		{"expired", f.caCert, f.caKey, f.certChain, f.rootCert, testEpoch.Add(2 * 365 * 24 * time.Hour), "ca-cert.pem: expired"},
		{"two ca certs", certsPEM(f.inter, f.root), f.caKey, f.certChain, f.rootCert, testEpoch, "want 1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			now := tt.now
			_, err := NewCAFromPEM(tt.caCert, tt.caKey, tt.certChain, tt.rootPE, CAOptions{Now: func() time.Time { return now }})
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error = %v, want one containing %q", err, tt.want)
			}
		})
	}
}

func TestLoadOrCreateCALayoutErrors(t *testing.T) {
	f := newPluggedFiles(t, 365*24*time.Hour)
	t.Run("root cert alone", func(t *testing.T) {
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, FileRootCert), f.rootCert, 0o644); err != nil {
			t.Fatal(err)
		}
		if _, err := LoadOrCreateCA(dir, CAOptions{}); err == nil || !strings.Contains(err.Error(), "cannot sign") {
			t.Fatalf("error = %v, want cannot sign", err)
		}
	})
	t.Run("partial cacerts", func(t *testing.T) {
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, FileCACert), f.caCert, 0o644); err != nil {
			t.Fatal(err)
		}
		if _, err := LoadOrCreateCA(dir, CAOptions{}); err == nil || !strings.Contains(err.Error(), FileCAKey) {
			t.Fatalf("error = %v, want one naming %s", err, FileCAKey)
		}
	})
}

// TestRootRotation serves old and new roots together: certificates of
// either CA verify against the bundle of both.
func TestRootRotation(t *testing.T) {
	oldCA, oldFiles := newPluggedCA(t, CAOptions{})
	newFiles := newPluggedFiles(t, 365*24*time.Hour)

	// Istio's way: root-cert.pem holds both roots.
	both := append(append([]byte{}, newFiles.rootCert...), oldFiles.rootCert...)
	viaFile, err := NewCAFromPEM(newFiles.caCert, newFiles.caKey, newFiles.certChain, both, CAOptions{Now: fixedNow})
	if err != nil {
		t.Fatal(err)
	}
	// zmesh's way: ExtraRoots.
	viaOpts, err := NewCAFromPEM(newFiles.caCert, newFiles.caKey, newFiles.certChain, newFiles.rootCert,
		CAOptions{Now: fixedNow, ExtraRoots: []*x509.Certificate{oldFiles.root}})
	if err != nil {
		t.Fatal(err)
	}
	for name, ca := range map[string]*CA{"root-cert.pem": viaFile, "ExtraRoots": viaOpts} {
		t.Run(name, func(t *testing.T) {
			if n := len(ca.Bundle().X509Authorities()); n != 2 {
				t.Fatalf("bundle has %d roots, want 2", n)
			}
			if n := len(mustParseCerts(t, ca.RootsPEM())); n != 2 {
				t.Fatalf("RootsPEM has %d roots, want 2", n)
			}
			for signer, issuer := range map[string]*CA{"old": oldCA, "new": ca} {
				svid, err := issuer.Issue(podAID, 0)
				if err != nil {
					t.Fatal(err)
				}
				if _, _, err := x509svid.Verify(svid.Certificates, ca.Bundle(), x509svid.WithTime(testEpoch)); err != nil {
					t.Errorf("certificate of the %s CA: %v", signer, err)
				}
			}
		})
	}
	// Without the old root, old certificates are no longer trusted.
	newOnly := x509bundle.FromX509Authorities(testTD, []*x509.Certificate{newFiles.root})
	svid, err := oldCA.Issue(podAID, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := x509svid.Verify(svid.Certificates, newOnly, x509svid.WithTime(testEpoch)); err == nil {
		t.Error("old certificate verified against the new root alone")
	}
}

// TestGeneratedLayoutRotation: root-cert.pem may hold several roots; the
// one matching root-key.pem signs.
func TestGeneratedLayoutRotation(t *testing.T) {
	dir := t.TempDir()
	ca, err := LoadOrCreateCA(dir, CAOptions{})
	if err != nil {
		t.Fatal(err)
	}
	other := newPluggedFiles(t, 365*24*time.Hour)
	rootPEM, err := os.ReadFile(filepath.Join(dir, FileRootCert))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, FileRootCert), append(append([]byte{}, other.rootCert...), rootPEM...), 0o644); err != nil {
		t.Fatal(err)
	}
	again, err := LoadOrCreateCA(dir, CAOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if n := len(again.Bundle().X509Authorities()); n != 2 {
		t.Fatalf("bundle has %d roots, want 2", n)
	}
	svid, err := again.Issue(podAID, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := x509svid.Verify(svid.Certificates, ca.Bundle()); err != nil {
		t.Fatalf("signed by the wrong root: %v", err)
	}
}

func mustParseCerts(t *testing.T, b []byte) []*x509.Certificate {
	t.Helper()
	c, err := parseCertsPEM(b)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestIssueServingAddsHostSANs(t *testing.T) {
	ca, err := LoadOrCreateCA(t.TempDir(), CAOptions{})
	if err != nil {
		t.Fatal(err)
	}
	id := MustWorkloadID("cluster.local", "istio-system", "zmeshd")
	svid, err := ca.IssueServing(id, []string{"zmeshd.istio-system.svc", "127.0.0.1"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	leaf := svid.Certificates[0]
	if err := leaf.VerifyHostname("zmeshd.istio-system.svc"); err != nil {
		t.Error(err)
	}
	if err := leaf.VerifyHostname("127.0.0.1"); err != nil {
		t.Error(err)
	}
	if err := leaf.VerifyHostname("other.example"); err == nil {
		t.Error("a host that was not asked for verifies")
	}
	if len(leaf.URIs) != 1 || leaf.URIs[0].String() != id.String() {
		t.Errorf("URIs = %v, want only %s", leaf.URIs, id)
	}
}
