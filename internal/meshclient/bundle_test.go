package meshclient

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

func rootPEM(t *testing.T, cn string) ([]byte, *x509.Certificate) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), c
}

// A root added to the file is trusted without a restart, a file that stops
// parsing keeps the roots in force, and a removed root stops being trusted.
func TestBundleReloadsOnChange(t *testing.T) {
	td := spiffeid.RequireTrustDomainFromString("cluster.local")
	path := filepath.Join(t.TempDir(), "root-cert.pem")
	oldPEM, oldRoot := rootPEM(t, "old")
	newPEM, newRoot := rootPEM(t, "new")
	if err := os.WriteFile(path, oldPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	b, err := LoadBundle(td, path, nil)
	if err != nil {
		t.Fatal(err)
	}
	clock := time.Now()
	b.now = func() time.Time { return clock }
	has := func(c *x509.Certificate) bool {
		got, err := b.GetX509BundleForTrustDomain(td)
		if err != nil {
			t.Fatal(err)
		}
		return got.HasX509Authority(c)
	}
	write := func(data []byte) {
		t.Helper()
		tmp := path + ".tmp"
		if err := os.WriteFile(tmp, data, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, path); err != nil { // a new inode, as a ConfigMap update makes
			t.Fatal(err)
		}
		clock = clock.Add(bundleRecheck)
	}
	if !has(oldRoot) || has(newRoot) {
		t.Fatal("the initial bundle is not the file's")
	}

	write(append(append([]byte{}, oldPEM...), newPEM...))
	if !has(oldRoot) || !has(newRoot) {
		t.Fatal("the added root is not trusted after the file changed")
	}
	write([]byte("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n"))
	if !has(oldRoot) || !has(newRoot) {
		t.Fatal("a file that does not parse dropped the roots in force")
	}
	write([]byte{})
	if !has(newRoot) {
		t.Fatal("an empty file dropped the roots in force")
	}
	write(newPEM)
	if has(oldRoot) || !has(newRoot) {
		t.Fatal("the removed root is still trusted")
	}
	if _, err := b.GetX509BundleForTrustDomain(spiffeid.RequireTrustDomainFromString("other.td")); err == nil {
		t.Fatal("a bundle was returned for another trust domain")
	}
}

// The file is looked at again only once per bundleRecheck.
func TestBundleRecheckIsRateLimited(t *testing.T) {
	td := spiffeid.RequireTrustDomainFromString("cluster.local")
	path := filepath.Join(t.TempDir(), "root-cert.pem")
	oldPEM, _ := rootPEM(t, "old")
	newPEM, newRoot := rootPEM(t, "new")
	os.WriteFile(path, oldPEM, 0o644)
	b, err := LoadBundle(td, path, nil)
	if err != nil {
		t.Fatal(err)
	}
	clock := time.Now()
	b.now = func() time.Time { return clock }
	os.WriteFile(path, newPEM, 0o644)
	if got, _ := b.GetX509BundleForTrustDomain(td); got.HasX509Authority(newRoot) {
		t.Fatal("re-read before the recheck interval")
	}
	clock = clock.Add(bundleRecheck)
	if got, _ := b.GetX509BundleForTrustDomain(td); !got.HasX509Authority(newRoot) {
		t.Fatal("not re-read after the recheck interval")
	}
}
