package identity

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"os"
	"path/filepath"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// File names of a CA directory.
//
// Istio's plugged-in CA layout ("cacerts"): ca-cert.pem signs, ca-key.pem is
// its key, cert-chain.pem its chain up to the root, root-cert.pem the roots.
// root-cert.pem may hold several roots: that is how a root rotation is served
// (old and new root both trusted while workloads move over).
//
// zmesh's self-generated layout: root-cert.pem + root-key.pem, a self-signed
// root that signs directly. root-cert.pem may again hold several roots; the
// one matching root-key.pem signs.
const (
	FileCACert    = "ca-cert.pem"
	FileCAKey     = "ca-key.pem"
	FileCertChain = "cert-chain.pem"
	FileRootCert  = "root-cert.pem"
	FileRootKey   = "root-key.pem"
)

// Defaults of CAOptions.
const (
	DefaultCertTTL = 24 * time.Hour
	DefaultMaxTTL  = 7 * 24 * time.Hour
	rootTTL        = 10 * 365 * 24 * time.Hour
	// clockSkew backdates NotBefore so that a peer whose clock is a little
	// behind accepts a fresh certificate.
	clockSkew = time.Minute
)

// CAOptions configure a CA. The zero value is usable.
type CAOptions struct {
	// TrustDomain the CA signs identities in; DefaultTrustDomain if zero.
	TrustDomain spiffeid.TrustDomain
	// DefaultTTL of a certificate whose request names none; DefaultCertTTL if zero.
	DefaultTTL time.Duration
	// MaxTTL caps any requested TTL; DefaultMaxTTL if zero.
	MaxTTL time.Duration
	// Now is the CA's clock; time.Now if nil.
	Now func() time.Time
	// ExtraRoots are trusted besides those in root-cert.pem, e.g. the old
	// root while rotating to a new one.
	ExtraRoots []*x509.Certificate
}

// CA is a certificate authority for one trust domain. It is immutable once
// loaded and safe for concurrent use.
type CA struct {
	td         spiffeid.TrustDomain
	key        crypto.Signer
	cert       *x509.Certificate   // signs the leaves
	chain      []*x509.Certificate // cert and its intermediates, without the root; empty if cert is a root
	roots      []*x509.Certificate // root-cert.pem then ExtraRoots, deduplicated
	defaultTTL time.Duration
	maxTTL     time.Duration
	now        func() time.Time
}

// LoadOrCreateCA loads the CA kept in dir, or creates one there. In order:
// Istio's cacerts layout if dir holds ca-cert.pem, ca-key.pem or
// cert-chain.pem (then ca-cert.pem, ca-key.pem and root-cert.pem are
// required, cert-chain.pem is optional); else a root zmesh generated earlier
// if dir holds root-key.pem; else a new self-signed ECDSA P-256 root valid 10
// years, written to dir (created 0700) as root-cert.pem and root-key.pem
// (0600). A root-cert.pem alone cannot sign and is an error.
func LoadOrCreateCA(dir string, opts CAOptions) (*CA, error) {
	if dir == "" {
		return nil, errors.New("load ca: empty directory")
	}
	exists := func(name string) (bool, error) {
		_, err := os.Stat(filepath.Join(dir, name))
		if errors.Is(err, fs.ErrNotExist) {
			return false, nil
		}
		if err != nil {
			return false, fmt.Errorf("ca dir: %w", err)
		}
		return true, nil
	}
	read := func(name string, optional bool) ([]byte, error) {
		b, err := os.ReadFile(filepath.Join(dir, name))
		if optional && errors.Is(err, fs.ErrNotExist) {
			return nil, nil
		}
		if err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		return b, nil
	}

	var plugged, generated, rootOnly bool
	for _, name := range []string{FileCACert, FileCAKey, FileCertChain} {
		ok, err := exists(name)
		if err != nil {
			return nil, err
		}
		plugged = plugged || ok
	}
	generated, err := exists(FileRootKey)
	if err != nil {
		return nil, err
	}
	if rootOnly, err = exists(FileRootCert); err != nil {
		return nil, err
	}

	switch {
	case plugged:
		var files [4][]byte
		for i, name := range []string{FileCACert, FileCAKey, FileCertChain, FileRootCert} {
			if files[i], err = read(name, name == FileCertChain); err != nil {
				return nil, fmt.Errorf("load cacerts from %s: %w", dir, err)
			}
		}
		ca, err := NewCAFromPEM(files[0], files[1], files[2], files[3], opts)
		if err != nil {
			return nil, fmt.Errorf("load cacerts from %s: %w", dir, err)
		}
		return ca, nil
	case generated:
		rootPEM, err := read(FileRootCert, false)
		if err != nil {
			return nil, fmt.Errorf("load generated root from %s: %w", dir, err)
		}
		keyPEM, err := read(FileRootKey, false)
		if err != nil {
			return nil, fmt.Errorf("load generated root from %s: %w", dir, err)
		}
		ca, err := newSelfSignedCAFromPEM(rootPEM, keyPEM, opts)
		if err != nil {
			return nil, fmt.Errorf("load generated root from %s: %w", dir, err)
		}
		return ca, nil
	case rootOnly:
		return nil, fmt.Errorf("load ca from %s: %s without %s or %s: cannot sign", dir, FileRootCert, FileRootKey, FileCAKey)
	}
	return createCA(dir, opts)
}

// NewCAFromPEM builds a CA from the contents of Istio's cacerts files, e.g.
// read from a Kubernetes Secret. certChainPEM may be empty when caCertPEM is
// a root itself or directly signed by one.
func NewCAFromPEM(caCertPEM, caKeyPEM, certChainPEM, rootCertPEM []byte, opts CAOptions) (*CA, error) {
	ca, err := newCA(opts)
	if err != nil {
		return nil, err
	}
	certs, err := parseCertsPEM(caCertPEM)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", FileCACert, err)
	}
	if len(certs) != 1 {
		return nil, fmt.Errorf("%s: holds %d certificates, want 1 (the chain belongs in %s)", FileCACert, len(certs), FileCertChain)
	}
	key, err := parseKeyPEM(caKeyPEM)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", FileCAKey, err)
	}
	var chain []*x509.Certificate
	if len(certChainPEM) > 0 {
		if chain, err = parseCertsPEM(certChainPEM); err != nil {
			return nil, fmt.Errorf("%s: %w", FileCertChain, err)
		}
	}
	roots, err := parseCertsPEM(rootCertPEM)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", FileRootCert, err)
	}
	if err := ca.init(certs[0], key, chain, roots, FileCACert, FileCAKey); err != nil {
		return nil, err
	}
	return ca, nil
}

// newSelfSignedCAFromPEM builds a CA from zmesh's generated layout: the
// root matching the key signs.
func newSelfSignedCAFromPEM(rootCertPEM, rootKeyPEM []byte, opts CAOptions) (*CA, error) {
	ca, err := newCA(opts)
	if err != nil {
		return nil, err
	}
	roots, err := parseCertsPEM(rootCertPEM)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", FileRootCert, err)
	}
	key, err := parseKeyPEM(rootKeyPEM)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", FileRootKey, err)
	}
	var signer *x509.Certificate
	for _, r := range roots {
		if publicKeyEqual(key.Public(), r.PublicKey) {
			signer = r
			break
		}
	}
	if signer == nil {
		return nil, fmt.Errorf("%s: matches no certificate in %s", FileRootKey, FileRootCert)
	}
	if err := ca.init(signer, key, nil, roots, FileRootCert, FileRootKey); err != nil {
		return nil, err
	}
	return ca, nil
}

func newCA(opts CAOptions) (*CA, error) {
	ca := &CA{td: opts.TrustDomain, defaultTTL: opts.DefaultTTL, maxTTL: opts.MaxTTL, now: opts.Now}
	if ca.td.IsZero() {
		ca.td = spiffeid.RequireTrustDomainFromString(DefaultTrustDomain)
	}
	if ca.defaultTTL == 0 {
		ca.defaultTTL = DefaultCertTTL
	}
	if ca.maxTTL == 0 {
		ca.maxTTL = DefaultMaxTTL
	}
	if ca.now == nil {
		ca.now = time.Now
	}
	switch {
	case ca.defaultTTL < 0:
		return nil, fmt.Errorf("ca options: negative default ttl %s", ca.defaultTTL)
	case ca.maxTTL < 0:
		return nil, fmt.Errorf("ca options: negative max ttl %s", ca.maxTTL)
	case ca.defaultTTL > ca.maxTTL:
		return nil, fmt.Errorf("ca options: default ttl %s exceeds max ttl %s", ca.defaultTTL, ca.maxTTL)
	}
	for i, r := range opts.ExtraRoots {
		if r == nil {
			return nil, fmt.Errorf("ca options: extra root %d is nil", i)
		}
	}
	ca.roots = append(ca.roots, opts.ExtraRoots...)
	return ca, nil
}

// init checks that cert can sign with key and chains (through chain) to one
// of roots, then completes the CA. certName and keyName name the files in
// errors.
func (ca *CA) init(cert *x509.Certificate, key crypto.Signer, chain, roots []*x509.Certificate, certName, keyName string) error {
	if !publicKeyEqual(key.Public(), cert.PublicKey) {
		return fmt.Errorf("%s: does not match the public key of %s", keyName, certName)
	}
	if !cert.BasicConstraintsValid || !cert.IsCA {
		return fmt.Errorf("%s: not a CA certificate", certName)
	}
	if cert.KeyUsage&x509.KeyUsageCertSign == 0 {
		return fmt.Errorf("%s: key usage lacks certificate signing", certName)
	}
	now := ca.now()
	if now.After(cert.NotAfter) {
		return fmt.Errorf("%s: expired at %s", certName, cert.NotAfter.UTC().Format(time.RFC3339))
	}
	rootPool, interPool := x509.NewCertPool(), x509.NewCertPool()
	for _, r := range roots {
		rootPool.AddCert(r)
	}
	for _, c := range chain {
		interPool.AddCert(c)
	}
	chains, err := cert.Verify(x509.VerifyOptions{
		Roots:         rootPool,
		Intermediates: interPool,
		CurrentTime:   now,
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageAny},
	})
	if err != nil {
		return fmt.Errorf("%s: does not chain to a root in %s: %w", certName, FileRootCert, err)
	}
	// The verified chain, not the file's order, decides what is sent: it
	// drops duplicates and the root that cert-chain.pem usually ends with.
	ca.cert, ca.key = cert, key
	ca.chain = chains[0][:len(chains[0])-1]
	extra := ca.roots
	ca.roots = nil
	for _, r := range append(roots, extra...) {
		if !containsCert(ca.roots, r) {
			ca.roots = append(ca.roots, r)
		}
	}
	return nil
}

func containsCert(certs []*x509.Certificate, c *x509.Certificate) bool {
	for _, x := range certs {
		if x.Equal(c) {
			return true
		}
	}
	return false
}

// createCA generates a self-signed root and persists it in dir.
func createCA(dir string, opts CAOptions) (*CA, error) {
	ca, err := newCA(opts)
	if err != nil {
		return nil, err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate root key: %w", err)
	}
	serial, err := randomSerial()
	if err != nil {
		return nil, err
	}
	now := ca.now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{Organization: []string{ca.td.Name()}, CommonName: "zmesh root CA"},
		NotBefore:             now.Add(-clockSkew),
		NotAfter:              now.Add(rootTTL),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, fmt.Errorf("create root certificate: %w", err)
	}
	root, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("parse generated root: %w", err)
	}
	kp, err := keyPEM(key)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create ca dir: %w", err)
	}
	// The certificate goes first: a crash in between leaves root-cert.pem
	// alone, which LoadOrCreateCA reports instead of silently replacing a
	// root that peers may already trust.
	if err := writeFileAtomic(filepath.Join(dir, FileRootCert), certsPEM(root), 0o644); err != nil {
		return nil, err
	}
	if err := writeFileAtomic(filepath.Join(dir, FileRootKey), kp, 0o600); err != nil {
		return nil, err
	}
	if err := ca.init(root, key, nil, []*x509.Certificate{root}, FileRootCert, FileRootKey); err != nil {
		return nil, err
	}
	return ca, nil
}

// writeFileAtomic writes a file so that readers see the old content or the
// new, never a torn one, with perm set before any byte is written.
func writeFileAtomic(path string, data []byte, perm os.FileMode) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	defer os.Remove(f.Name()) // no-op after a successful rename
	if err := f.Chmod(perm); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(f.Name(), path); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// randomSerial returns a positive random 128-bit serial number, as RFC 5280
// asks serials to be unpredictable.
func randomSerial() (*big.Int, error) {
	for {
		s, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
		if err != nil {
			return nil, fmt.Errorf("generate serial number: %w", err)
		}
		if s.Sign() > 0 {
			return s, nil
		}
	}
}

// TrustDomain returns the trust domain the CA signs for.
func (ca *CA) TrustDomain() spiffeid.TrustDomain { return ca.td }

// Bundle returns the trusted roots: root-cert.pem's and the extra roots. The
// caller owns the returned bundle.
func (ca *CA) Bundle() *x509bundle.Bundle {
	return x509bundle.FromX509Authorities(ca.td, ca.roots)
}

// RootsPEM returns the trusted roots as concatenated PEM, what workloads and
// ztunnel are given as their root-cert file.
func (ca *CA) RootsPEM() []byte { return certsPEM(ca.roots...) }
