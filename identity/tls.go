package identity

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// Source hands out the certificates of local identities and the trust bundle
// peers are verified against. The certificate manager implements it; tests
// use StaticSource.
type Source interface {
	// SVID returns the current certificate of a local identity, fetching it
	// if needed. It fails, never blocks forever, when none can be had.
	SVID(ctx context.Context, id spiffeid.ID) (*x509svid.SVID, error)
	// Bundle returns the roots trusted for a trust domain.
	x509bundle.Source
}

// ErrNoIdentity is returned when a Source has no certificate for an identity.
var ErrNoIdentity = errors.New("no certificate for identity")

// ALPN for HBONE.
const ALPNH2 = "h2"

// ServerTLS returns a TLS 1.3-only, h2-only config that presents local's
// certificate, requires a client certificate chaining to the bundle, and
// passes the client's SPIFFE ID to authorize (nil accepts any ID the bundle
// vouches for).
func ServerTLS(src Source, local spiffeid.ID, authorize func(peer spiffeid.ID) error) *tls.Config {
	cfg := tlsconfig.MTLSServerConfig(svidFor(src, local), src, authorizer(authorize))
	harden(cfg)
	return cfg
}

// ClientTLS returns a TLS 1.3-only, h2-only config that presents local's
// certificate and accepts a server only if its SPIFFE ID is in expected.
// An empty expected set accepts no server: the data plane fails closed.
func ClientTLS(src Source, local spiffeid.ID, expected []spiffeid.ID) *tls.Config {
	allowed := append([]spiffeid.ID(nil), expected...)
	auth := func(peer spiffeid.ID) error {
		for _, id := range allowed {
			if id == peer {
				return nil
			}
		}
		return &PeerMismatchError{Got: peer, Want: allowed}
	}
	cfg := tlsconfig.MTLSClientConfig(svidFor(src, local), src, authorizer(auth))
	harden(cfg)
	return cfg
}

// PeerMismatchError says a verified peer is not one of the identities expected.
type PeerMismatchError struct {
	Got  spiffeid.ID
	Want []spiffeid.ID
}

func (e *PeerMismatchError) Error() string {
	return fmt.Sprintf("peer identity %s is not one of the expected %v", e.Got, e.Want)
}

// PeerID returns the SPIFFE ID of the verified peer of a TLS connection.
func PeerID(cs tls.ConnectionState) (spiffeid.ID, error) {
	if len(cs.PeerCertificates) == 0 {
		return spiffeid.ID{}, errors.New("peer presented no certificate")
	}
	return x509svid.IDFromCert(cs.PeerCertificates[0])
}

func harden(cfg *tls.Config) {
	cfg.MinVersion = tls.VersionTLS13
	cfg.MaxVersion = tls.VersionTLS13
	cfg.NextProtos = []string{ALPNH2}
	// HBONE gathers its frames into large writes itself: full-size
	// records from the first byte, not Go's ramp from ~1 KiB (eleven
	// records instead of four for the first 64 KiB of a connection).
	cfg.DynamicRecordSizingDisabled = true
	// No resumption: every handshake checks the peer's current
	// certificate, and no client keeps a session cache, so a ticket
	// would be sealed and sent after each handshake for nothing.
	cfg.SessionTicketsDisabled = true
}

func authorizer(f func(spiffeid.ID) error) tlsconfig.Authorizer {
	if f == nil {
		return tlsconfig.AuthorizeAny()
	}
	return func(id spiffeid.ID, _ [][]*x509.Certificate) error { return f(id) }
}

// svidFor adapts a multi-identity Source to go-spiffe's single-identity one.
// The handshake has no context of its own; the Source bounds its own waits.
func svidFor(src Source, id spiffeid.ID) x509svid.Source {
	return svidSourceFunc(func() (*x509svid.SVID, error) {
		s, err := src.SVID(context.Background(), id)
		if err != nil {
			return nil, fmt.Errorf("certificate for %s: %w", id, err)
		}
		return s, nil
	})
}

type svidSourceFunc func() (*x509svid.SVID, error)

func (f svidSourceFunc) GetX509SVID() (*x509svid.SVID, error) { return f() }
