package identity

import (
	"context"
	"fmt"
	"sync"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// StaticSource is a Source holding fixed certificates, for tests, the demo
// and tools. It is safe for concurrent use.
type StaticSource struct {
	mu     sync.RWMutex
	bundle *x509bundle.Set
	svids  map[spiffeid.ID]*x509svid.SVID
}

// NewStaticSource returns a Source trusting the given bundles.
func NewStaticSource(bundles ...*x509bundle.Bundle) *StaticSource {
	return &StaticSource{bundle: x509bundle.NewSet(bundles...), svids: map[spiffeid.ID]*x509svid.SVID{}}
}

// Put stores (or replaces) the certificate of an identity.
func (s *StaticSource) Put(svid *x509svid.SVID) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.svids[svid.ID] = svid
}

// SVID implements Source.
func (s *StaticSource) SVID(_ context.Context, id spiffeid.ID) (*x509svid.SVID, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if v, ok := s.svids[id]; ok {
		return v, nil
	}
	return nil, fmt.Errorf("%s: %w", id, ErrNoIdentity)
}

// GetX509BundleForTrustDomain implements x509bundle.Source.
func (s *StaticSource) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	return s.bundle.GetX509BundleForTrustDomain(td)
}
