package identity

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"slices"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"golang.org/x/sync/singleflight"
)

// Defaults of ManagerOptions.
const (
	DefaultFetchTimeout = 30 * time.Second
	DefaultMinBackoff   = time.Second
	DefaultMaxBackoff   = 2 * time.Minute
	// rotationJitter spreads rotations over ±10% of a certificate's
	// lifetime around its half-life, so pods started together do not all
	// hit the CA at once again a half-life later.
	rotationJitter = 0.1
	// backoffJitter spreads retries over ±20% of the backoff.
	backoffJitter = 0.2
	// maxConcurrentRefresh bounds the fetches rotation runs at once.
	maxConcurrentRefresh = 8
)

// ManagerOptions configure a Manager. The zero value is usable.
type ManagerOptions struct {
	// Clock drives expiry, rotation and backoff; RealClock if nil.
	Clock Clock
	// FetchTimeout bounds one fetch, and so how long SVID may block.
	FetchTimeout time.Duration
	// MinBackoff and MaxBackoff bound the exponential backoff between
	// failed fetches of one identity.
	MinBackoff, MaxBackoff time.Duration
	// Rand returns numbers in [0, 1) for jitter; math/rand/v2 if nil.
	// Tests return 0.5 for none.
	Rand   func() float64
	Logger *slog.Logger
}

// Manager is the Source of a node agent: it fetches the certificates of the
// local identities on demand, keeps them, and rotates them in the background
// at about half their lifetime. A certificate that expired is never handed
// out. Every certificate fetched is verified against the trust bundle the
// manager is given (the root-cert file), never against roots that came with
// the certificate. It is safe for concurrent use.
//
// TLS configs from ServerTLS and ClientTLS ask for the certificate at each
// handshake, so a rotation reaches new connections without touching live
// ones.
type Manager struct {
	fetcher      Fetcher
	bundle       x509bundle.Source
	clock        Clock
	fetchTimeout time.Duration
	minBackoff   time.Duration
	maxBackoff   time.Duration
	rand         func() float64
	log          *slog.Logger

	flights singleflight.Group
	wake    chan struct{} // nudges Run to reschedule; capacity 1

	mu      sync.Mutex
	entries map[spiffeid.ID]*certEntry
	running bool
}

// certEntry is the state of one tracked identity, guarded by Manager.mu.
type certEntry struct {
	svid       *x509svid.SVID
	next       time.Time // next rotation or retry; zero while the first fetch runs
	backoff    time.Duration
	lastErr    error
	refreshing bool // Run has a fetch under way
}

// CertInfo describes a tracked certificate, for the admin endpoint.
type CertInfo struct {
	ID           spiffeid.ID
	NotBefore    time.Time // zero if no certificate yet
	NotAfter     time.Time
	NextRotation time.Time
	LastError    string // of the last fetch; empty if it succeeded
}

// NewManager returns a Manager fetching with f and verifying against bundle.
func NewManager(f Fetcher, bundle x509bundle.Source, opts ManagerOptions) (*Manager, error) {
	if f == nil {
		return nil, errors.New("cert manager: nil fetcher")
	}
	if bundle == nil {
		return nil, errors.New("cert manager: nil trust bundle")
	}
	m := &Manager{
		fetcher:      f,
		bundle:       bundle,
		clock:        cmp.Or[Clock](opts.Clock, RealClock{}),
		fetchTimeout: cmp.Or(opts.FetchTimeout, DefaultFetchTimeout),
		minBackoff:   cmp.Or(opts.MinBackoff, DefaultMinBackoff),
		maxBackoff:   cmp.Or(opts.MaxBackoff, DefaultMaxBackoff),
		rand:         opts.Rand,
		log:          cmp.Or(opts.Logger, slog.Default()),
		wake:         make(chan struct{}, 1),
		entries:      map[spiffeid.ID]*certEntry{},
	}
	if m.rand == nil {
		m.rand = rand.Float64
	}
	switch {
	case m.fetchTimeout < 0:
		return nil, fmt.Errorf("cert manager: negative fetch timeout %s", m.fetchTimeout)
	case m.minBackoff < 0 || m.maxBackoff < m.minBackoff:
		return nil, fmt.Errorf("cert manager: backoff bounds %s..%s out of order", m.minBackoff, m.maxBackoff)
	}
	return m, nil
}

// SVID implements Source. It returns the current certificate of id or
// fetches one, starting to track id; concurrent calls for one identity share
// one fetch. While a failed fetch waits out its backoff it fails at once with
// that failure rather than pressing on the CA.
func (m *Manager) SVID(ctx context.Context, id spiffeid.ID) (*x509svid.SVID, error) {
	if id.IsZero() {
		return nil, errors.New("certificate for empty identity")
	}
	now := m.clock.Now()
	m.mu.Lock()
	e := m.entries[id]
	if e == nil {
		e = &certEntry{}
		m.entries[id] = e
	}
	if e.svid != nil && now.Before(expiry(e.svid)) {
		s := e.svid
		m.mu.Unlock()
		return s, nil
	}
	if e.lastErr != nil && now.Before(e.next) {
		err := e.lastErr
		m.mu.Unlock()
		return nil, fmt.Errorf("certificate for %s: %w: %w", id, ErrNoIdentity, err)
	}
	m.mu.Unlock()

	// The fetch outlives callers who give up: others may be waiting on it,
	// and its result is kept. Its own timeout bounds it.
	ch := m.flights.DoChan(id.String(), func() (any, error) {
		return m.fetchAndStore(context.Background(), id, e)
	})
	ctx, cancel := context.WithTimeout(ctx, m.fetchTimeout)
	defer cancel()
	select {
	case r := <-ch:
		if r.Err != nil {
			return nil, fmt.Errorf("certificate for %s: %w: %w", id, ErrNoIdentity, r.Err)
		}
		return r.Val.(*x509svid.SVID), nil
	case <-ctx.Done():
		return nil, fmt.Errorf("certificate for %s: %w: %w", id, ErrNoIdentity, ctx.Err())
	}
}

// GetX509BundleForTrustDomain implements x509bundle.Source.
func (m *Manager) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	return m.bundle.GetX509BundleForTrustDomain(td)
}

// Forget stops tracking id, e.g. when its last local pod is gone. A fetch
// under way completes but is not kept.
func (m *Manager) Forget(id spiffeid.ID) {
	m.mu.Lock()
	delete(m.entries, id)
	m.mu.Unlock()
	m.flights.Forget(id.String())
}

// Certificates returns the state of every tracked identity, sorted by ID.
func (m *Manager) Certificates() []CertInfo {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]CertInfo, 0, len(m.entries))
	for id, e := range m.entries {
		ci := CertInfo{ID: id, NextRotation: e.next}
		if e.svid != nil {
			ci.NotBefore, ci.NotAfter = e.svid.Certificates[0].NotBefore, expiry(e.svid)
		}
		if e.lastErr != nil {
			ci.LastError = e.lastErr.Error()
		}
		out = append(out, ci)
	}
	slices.SortFunc(out, func(a, b CertInfo) int { return cmp.Compare(a.ID.String(), b.ID.String()) })
	return out
}

// Run rotates certificates and retries failed fetches until ctx is done. It
// returns nil once ctx is done and every fetch it started has returned.
func (m *Manager) Run(ctx context.Context) error {
	m.mu.Lock()
	if m.running {
		m.mu.Unlock()
		return errors.New("cert manager: already running")
	}
	m.running = true
	m.mu.Unlock()
	defer func() {
		m.mu.Lock()
		m.running = false
		m.mu.Unlock()
	}()

	var wg sync.WaitGroup
	defer wg.Wait()
	sem := make(chan struct{}, maxConcurrentRefresh)
	for {
		due, next := m.due()
		for id, e := range due {
			wg.Go(func() {
				select {
				case sem <- struct{}{}:
					defer func() { <-sem }()
					m.refresh(ctx, id, e)
				case <-ctx.Done():
					m.doneRefreshing(e)
				}
			})
		}
		var timer Timer
		var fire <-chan time.Time
		if !next.IsZero() {
			timer = m.clock.NewTimer(next.Sub(m.clock.Now()))
			fire = timer.C()
		}
		select {
		case <-ctx.Done():
		case <-fire:
		case <-m.wake:
		}
		if timer != nil {
			timer.Stop()
		}
		if ctx.Err() != nil {
			return nil
		}
	}
}

// due marks the entries whose rotation or retry time has come as
// refreshing and returns them, with the earliest time still to come.
func (m *Manager) due() (map[spiffeid.ID]*certEntry, time.Time) {
	now := m.clock.Now()
	m.mu.Lock()
	defer m.mu.Unlock()
	due := map[spiffeid.ID]*certEntry{}
	var next time.Time
	for id, e := range m.entries {
		switch {
		case e.refreshing || e.next.IsZero():
		case !e.next.After(now):
			e.refreshing = true
			due[id] = e
		case next.IsZero() || e.next.Before(next):
			next = e.next
		}
	}
	return due, next
}

func (m *Manager) refresh(ctx context.Context, id spiffeid.ID, e *certEntry) {
	// Joining a fetch SVID started is fine: its result lands in e too.
	_, _, _ = m.flights.Do(id.String(), func() (any, error) {
		return m.fetchAndStore(ctx, id, e)
	})
	m.doneRefreshing(e)
}

func (m *Manager) doneRefreshing(e *certEntry) {
	m.mu.Lock()
	e.refreshing = false
	m.mu.Unlock()
	m.nudge()
}

// fetchAndStore fetches and verifies a certificate for id and records the
// outcome in e, unless id was forgotten meanwhile. On failure the old
// certificate stays in e: it keeps serving until it expires.
func (m *Manager) fetchAndStore(ctx context.Context, id spiffeid.ID, e *certEntry) (*x509svid.SVID, error) {
	ctx, cancel := context.WithTimeout(ctx, m.fetchTimeout)
	defer cancel()
	svid, err := m.fetcher.Fetch(ctx, id)
	if err == nil {
		err = m.verify(id, svid)
	}

	now := m.clock.Now()
	m.mu.Lock()
	defer m.mu.Unlock()
	defer m.nudge()
	tracked := m.entries[id] == e
	if err != nil {
		if tracked {
			e.lastErr = err
			e.backoff = min(max(2*e.backoff, m.minBackoff), m.maxBackoff)
			e.next = now.Add(e.backoff + m.jitter(e.backoff, backoffJitter))
			m.log.Warn("certificate fetch failed", "identity", id.String(), "reason", err.Error(), "retry_at", e.next)
		}
		return nil, err
	}
	if tracked {
		// The certificate's life as far as we can use it, from when we
		// got it to its end: CAs backdate NotBefore for clock skew, which
		// for a short-lived certificate is much of its life.
		life := expiry(svid).Sub(now)
		e.svid, e.lastErr, e.backoff = svid, nil, 0
		e.next = now.Add(life/2 + m.jitter(life, rotationJitter))
		// A certificate already past its half-life (its CA expires soon)
		// must not make rotation spin against the CA.
		if soonest := now.Add(m.minBackoff); e.next.Before(soonest) {
			e.next = soonest
		}
		m.log.Info("certificate fetched", "identity", id.String(), "not_after", expiry(svid), "rotate_at", e.next)
	}
	return svid, nil
}

// verify checks that svid chains to the trust bundle and names id.
func (m *Manager) verify(id spiffeid.ID, svid *x509svid.SVID) error {
	if svid == nil || len(svid.Certificates) == 0 || svid.PrivateKey == nil {
		return errors.New("fetcher returned an incomplete certificate")
	}
	got, _, err := x509svid.Verify(svid.Certificates, m.bundle, x509svid.WithTime(m.clock.Now()))
	if err != nil {
		return fmt.Errorf("verify certificate: %w", err)
	}
	if got != id || svid.ID != id {
		return fmt.Errorf("verify certificate: names %s, want %s", got, id)
	}
	return nil
}

// jitter returns a random offset within ±frac of d.
func (m *Manager) jitter(d time.Duration, frac float64) time.Duration {
	return time.Duration((m.rand()*2 - 1) * frac * float64(d))
}

func (m *Manager) nudge() {
	select {
	case m.wake <- struct{}{}:
	default:
	}
}

// expiry is when the first certificate of svid's chain expires.
func expiry(svid *x509svid.SVID) time.Time {
	t := svid.Certificates[0].NotAfter
	for _, c := range svid.Certificates[1:] {
		if c.NotAfter.Before(t) {
			t = c.NotAfter
		}
	}
	return t
}
