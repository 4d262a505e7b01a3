package identity

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"net/url"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// ErrInvalidCSR is wrapped by Sign's errors caused by the request itself
// (unparsable, bad signature, weak key), as opposed to the CA failing.
var ErrInvalidCSR = errors.New("invalid certificate signing request")

// ErrForeignTrustDomain is returned when asked to sign an identity outside
// the CA's trust domain.
var ErrForeignTrustDomain = errors.New("identity is outside the ca's trust domain")

const (
	// maxCSRSize bounds the work an unauthenticated-looking blob can cause;
	// a CSR with a 4096-bit RSA key is about 1.7 KiB of PEM.
	maxCSRSize = 64 << 10
	minRSABits = 2048
	// maxRSABits bounds the cost of checking a CSR's signature.
	maxRSABits = 8192
)

// Sign issues a certificate for id, valid ttl (the default if zero, capped
// at the CA's MaxTTL and at the signing certificate's own expiry), to the
// public key of csr (PKCS#10, DER or PEM). The CSR's subject and SANs are
// ignored: the caller's authorized identity alone decides the certificate's
// only SAN, the SPIFFE ID. The result is an X.509-SVID leaf usable for both
// server and client authentication.
func (ca *CA) Sign(csr []byte, id spiffeid.ID, ttl time.Duration) (*x509.Certificate, error) {
	return ca.sign(csr, id, nil, ttl)
}

// sign is Sign with extra SANs (DNS names and IPs) for the control plane's
// own serving certificate, which clients verify by host name.
func (ca *CA) sign(csr []byte, id spiffeid.ID, hosts []string, ttl time.Duration) (*x509.Certificate, error) {
	if id.IsZero() {
		return nil, errors.New("sign: empty identity")
	}
	if id.TrustDomain() != ca.td {
		return nil, fmt.Errorf("sign %s: %w %s", id, ErrForeignTrustDomain, ca.td)
	}
	if ttl < 0 {
		return nil, fmt.Errorf("sign %s: negative ttl %s", id, ttl)
	}
	req, err := parseCSR(csr)
	if err != nil {
		return nil, fmt.Errorf("sign %s: %w: %w", id, ErrInvalidCSR, err)
	}
	if ttl == 0 {
		ttl = ca.defaultTTL
	}
	ttl = min(ttl, ca.maxTTL)
	now := ca.now()
	notBefore := now.Add(-clockSkew)
	if notBefore.Before(ca.cert.NotBefore) {
		notBefore = ca.cert.NotBefore
	}
	notAfter := now.Add(ttl)
	if notAfter.After(ca.cert.NotAfter) {
		notAfter = ca.cert.NotAfter
	}
	if !notAfter.After(now) {
		return nil, fmt.Errorf("sign %s: signing certificate expired at %s", id, ca.cert.NotAfter.UTC().Format(time.RFC3339))
	}
	serial, err := randomSerial()
	if err != nil {
		return nil, fmt.Errorf("sign %s: %w", id, err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		// An empty subject is what SPIFFE expects; crypto/x509 then marks
		// the SAN extension critical, as RFC 5280 requires.
		URIs:                  []*url.URL{id.URL()},
		NotBefore:             notBefore,
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
		IsCA:                  false,
	}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, req.PublicKey, ca.key)
	if err != nil {
		return nil, fmt.Errorf("sign %s: %w", id, err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("sign %s: parse issued certificate: %w", id, err)
	}
	return leaf, nil
}

// parseCSR decodes a PEM or DER CSR, checks its self-signature (proof that
// the requester holds the key) and that its key is strong enough.
func parseCSR(data []byte) (*x509.CertificateRequest, error) {
	if len(data) == 0 {
		return nil, errors.New("empty")
	}
	if len(data) > maxCSRSize {
		return nil, fmt.Errorf("%d bytes exceeds the limit of %d", len(data), maxCSRSize)
	}
	der := data
	if trimmed := bytes.TrimSpace(data); bytes.HasPrefix(trimmed, []byte("-----BEGIN")) {
		block, rest := pem.Decode(trimmed)
		if block == nil {
			return nil, errNoPEM
		}
		if block.Type != "CERTIFICATE REQUEST" && block.Type != "NEW CERTIFICATE REQUEST" {
			return nil, fmt.Errorf("PEM block type %q, want CERTIFICATE REQUEST", block.Type)
		}
		if len(bytes.TrimSpace(rest)) != 0 {
			return nil, errors.New("data after the PEM block")
		}
		der = block.Bytes
	}
	req, err := x509.ParseCertificateRequest(der)
	if err != nil {
		return nil, err
	}
	// Check the key before the signature: the signature check is where a
	// huge RSA key would cost.
	if err := checkPublicKey(req.PublicKey); err != nil {
		return nil, err
	}
	if err := req.CheckSignature(); err != nil {
		return nil, fmt.Errorf("signature: %w", err)
	}
	return req, nil
}

// checkPublicKey accepts ECDSA P-256/P-384, RSA of 2048 to 8192 bits and
// Ed25519.
func checkPublicKey(pub crypto.PublicKey) error {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		if k.Curve != elliptic.P256() && k.Curve != elliptic.P384() {
			return fmt.Errorf("ecdsa curve %s not accepted, want P-256 or P-384", k.Curve.Params().Name)
		}
	case *rsa.PublicKey:
		if bits := k.N.BitLen(); bits < minRSABits || bits > maxRSABits {
			return fmt.Errorf("rsa key of %d bits not accepted, want %d to %d", bits, minRSABits, maxRSABits)
		}
	case ed25519.PublicKey:
	default:
		return fmt.Errorf("public key type %T not accepted", pub)
	}
	return nil
}

// WireChain returns leaf with its chain as istiod answers CreateCertificate:
// the leaf, then each intermediate, then one element holding every trusted
// root. Istio's ztunnel reads the last element as its roots.
func (ca *CA) WireChain(leaf *x509.Certificate) []string {
	out := make([]string, 0, len(ca.chain)+2)
	out = append(out, string(certsPEM(leaf)))
	for _, c := range ca.chain {
		out = append(out, string(certsPEM(c)))
	}
	return append(out, string(ca.RootsPEM()))
}

// Issue creates a key and a certificate for id in process, for the CA's own
// servers and tests; ttl as in Sign.
func (ca *CA) Issue(id spiffeid.ID, ttl time.Duration) (*x509svid.SVID, error) {
	return ca.IssueServing(id, nil, ttl)
}

// IssueServing is Issue for a server that clients reach by name or IP
// (zmeshd's TLS port): hosts (DNS names or IP addresses) are added as SANs
// beside the SPIFFE ID.
func (ca *CA) IssueServing(id spiffeid.ID, hosts []string, ttl time.Duration) (*x509svid.SVID, error) {
	key, csr, err := newKeyAndCSR(id)
	if err != nil {
		return nil, err
	}
	leaf, err := ca.sign(csr, id, hosts, ttl)
	if err != nil {
		return nil, err
	}
	return &x509svid.SVID{
		ID:           id,
		Certificates: append([]*x509.Certificate{leaf}, ca.chain...),
		PrivateKey:   key,
	}, nil
}

// newKeyAndCSR generates an ECDSA P-256 key and a DER CSR for id.
func newKeyAndCSR(id spiffeid.ID) (crypto.Signer, []byte, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("generate key for %s: %w", id, err)
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{URIs: []*url.URL{id.URL()}}, key)
	if err != nil {
		return nil, nil, fmt.Errorf("create csr for %s: %w", id, err)
	}
	return key, csr, nil
}
