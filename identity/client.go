package identity

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/types/known/structpb"
	pb "istio.io/api/security/v1alpha1"
)

// Fetcher obtains a fresh certificate for an identity. CertClient fetches
// from a certificate service; tests fetch from an in-process CA.
type Fetcher interface {
	Fetch(ctx context.Context, id spiffeid.ID) (*x509svid.SVID, error)
}

// FetcherFunc adapts a function to Fetcher.
type FetcherFunc func(ctx context.Context, id spiffeid.ID) (*x509svid.SVID, error)

// Fetch implements Fetcher.
func (f FetcherFunc) Fetch(ctx context.Context, id spiffeid.ID) (*x509svid.SVID, error) {
	return f(ctx, id)
}

// TokenSource returns the current bearer token; it is called for every
// request because tokens rotate.
type TokenSource func(ctx context.Context) (string, error)

// CertClient fetches certificates from an Istio-compatible certificate
// service (zmeshd or istiod), asking for each identity on behalf of a pod
// the way Istio's ztunnel does. It checks the shape of what it gets (one
// SPIFFE ID, the one asked for, matching the key it made) but not whom it
// chains to: the Manager verifies against its trust bundle.
type CertClient struct {
	client pb.IstioCertificateServiceClient
	token  TokenSource
	ttl    time.Duration
}

// NewCertClient returns a client over conn. ttl is the validity asked for;
// zero leaves it to the service's default.
func NewCertClient(conn grpc.ClientConnInterface, token TokenSource, ttl time.Duration) (*CertClient, error) {
	if conn == nil {
		return nil, errors.New("cert client: nil connection")
	}
	if token == nil {
		return nil, errors.New("cert client: nil token source")
	}
	if ttl < 0 {
		return nil, fmt.Errorf("cert client: negative ttl %s", ttl)
	}
	return &CertClient{client: pb.NewIstioCertificateServiceClient(conn), token: token, ttl: ttl}, nil
}

// Fetch implements Fetcher: it makes an ECDSA P-256 key, sends a CSR for id
// and returns the key with the certificate chain received.
func (c *CertClient) Fetch(ctx context.Context, id spiffeid.ID) (*x509svid.SVID, error) {
	tok, err := c.token(ctx)
	if err != nil {
		return nil, fmt.Errorf("fetch %s: token: %w", id, err)
	}
	key, csr, err := newKeyAndCSR(id)
	if err != nil {
		return nil, fmt.Errorf("fetch %s: %w", id, err)
	}
	md, err := structpb.NewStruct(map[string]any{ImpersonatedIdentityKey: id.String()})
	if err != nil {
		return nil, fmt.Errorf("fetch %s: metadata: %w", id, err)
	}
	req := &pb.IstioCertificateRequest{
		Csr:              string(pemCSR(csr)),
		ValidityDuration: int64(c.ttl / time.Second),
		Metadata:         md,
	}
	ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+tok)
	resp, err := c.client.CreateCertificate(ctx, req)
	if err != nil {
		return nil, fmt.Errorf("fetch %s: %w", id, err)
	}
	certs, err := parseWireChain(resp.GetCertChain())
	if err != nil {
		return nil, fmt.Errorf("fetch %s: response: %w", id, err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("fetch %s: %w", id, err)
	}
	var certsDER []byte
	for _, c := range certs {
		certsDER = append(certsDER, c.Raw...)
	}
	// ParseRaw checks what makes an X.509-SVID: one SPIFFE ID, leaf not a
	// CA, signing usage, and that the leaf matches our key.
	svid, err := x509svid.ParseRaw(certsDER, keyDER)
	if err != nil {
		return nil, fmt.Errorf("fetch %s: response: %w", id, err)
	}
	if svid.ID != id {
		return nil, fmt.Errorf("fetch %s: response is a certificate for %s", id, svid.ID)
	}
	return svid, nil
}

// parseWireChain reads a CreateCertificate response: the leaf first, then
// intermediates, then the roots. The roots are dropped: trusting roots
// handed over the same channel would defeat verification.
func parseWireChain(elems []string) ([]*x509.Certificate, error) {
	if len(elems) == 0 {
		return nil, errors.New("empty certificate chain")
	}
	var certs []*x509.Certificate
	for i, e := range elems {
		cs, err := parseCertsPEM([]byte(e))
		if err != nil {
			return nil, fmt.Errorf("cert_chain[%d]: %w", i, err)
		}
		certs = append(certs, cs...)
	}
	// Self-signed certificates are roots wherever they appear (istiod's
	// cert-chain.pem element often ends with one).
	out := certs[:1]
	for _, c := range certs[1:] {
		if !isSelfSigned(c) {
			out = append(out, c)
		}
	}
	return out, nil
}

func isSelfSigned(c *x509.Certificate) bool {
	return c.CheckSignatureFrom(c) == nil
}
