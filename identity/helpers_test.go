package identity

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"net/url"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

var (
	testTD     = spiffeid.RequireTrustDomainFromString("cluster.local")
	ztunnelID  = MustWorkloadID("cluster.local", "istio-system", "ztunnel")
	podAID     = MustWorkloadID("cluster.local", "default", "a")
	podBID     = MustWorkloadID("cluster.local", "default", "b")
	podCID     = MustWorkloadID("cluster.local", "other", "c")
	foreignID  = MustWorkloadID("example.org", "default", "a")
	testEpoch  = time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	fixedNow   = func() time.Time { return testEpoch }
	halfRandom = func() float64 { return 0.5 } // no jitter
)

// testCert creates a certificate from tmpl signed by parent/parentKey (self-
// signed if parent is nil) and returns it with its new key.
func testCert(t testing.TB, tmpl *x509.Certificate, parent *x509.Certificate, parentKey crypto.Signer) (*x509.Certificate, crypto.Signer) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	if tmpl.SerialNumber == nil {
		if tmpl.SerialNumber, err = randomSerial(); err != nil {
			t.Fatal(err)
		}
	}
	if parent == nil {
		parent, parentKey = tmpl, key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, key.Public(), parentKey)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c, key
}

func caTemplate(name string, notBefore, notAfter time.Time) *x509.Certificate {
	return &x509.Certificate{
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             notBefore,
		NotAfter:              notAfter,
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
}

// pluggedFiles is an Istio cacerts directory's contents.
type pluggedFiles struct {
	caCert, caKey, certChain, rootCert []byte
	root, inter                        *x509.Certificate
}

// newPluggedFiles makes a root and an intermediate valid around testEpoch,
// the intermediate expiring after interTTL.
func newPluggedFiles(t testing.TB, interTTL time.Duration) pluggedFiles {
	t.Helper()
	return newPluggedFilesAt(t, testEpoch, interTTL)
}

func newPluggedFilesAt(t testing.TB, now time.Time, interTTL time.Duration) pluggedFiles {
	t.Helper()
	root, rootKey := testCert(t, caTemplate("root", now.Add(-time.Hour), now.Add(10*365*24*time.Hour)), nil, nil)
	inter, interKey := testCert(t, caTemplate("intermediate", now.Add(-time.Hour), now.Add(interTTL)), root, rootKey)
	kp, err := keyPEM(interKey)
	if err != nil {
		t.Fatal(err)
	}
	return pluggedFiles{
		caCert:    certsPEM(inter),
		caKey:     kp,
		certChain: certsPEM(inter, root), // as Istio's tools write it
		rootCert:  certsPEM(root),
		root:      root,
		inter:     inter,
	}
}

func newPluggedCA(t testing.TB, opts CAOptions) (*CA, pluggedFiles) {
	t.Helper()
	if opts.Now == nil {
		opts.Now = fixedNow
	}
	f := newPluggedFilesAt(t, opts.Now(), 365*24*time.Hour)
	ca, err := NewCAFromPEM(f.caCert, f.caKey, f.certChain, f.rootCert, opts)
	if err != nil {
		t.Fatal(err)
	}
	return ca, f
}

// newCSR returns a PEM CSR for a fresh P-256 key, carrying the given SANs
// (which the CA must ignore).
func newCSR(t testing.TB, uris ...string) []byte {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return csrFor(t, key, uris...)
}

func csrFor(t testing.TB, key crypto.Signer, uris ...string) []byte {
	t.Helper()
	tmpl := &x509.CertificateRequest{Subject: pkix.Name{CommonName: "ignored"}, DNSNames: []string{"ignored.example"}}
	for _, u := range uris {
		pu, err := url.Parse(u)
		if err != nil {
			t.Fatal(err)
		}
		tmpl.URIs = append(tmpl.URIs, pu)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		t.Fatal(err)
	}
	return pemCSR(der)
}

// fakeClock is a Clock moved by hand. Timers fire when Advance passes their
// deadline, or at once if created with a deadline already passed.
type fakeClock struct {
	mu     sync.Mutex
	now    time.Time
	timers map[*fakeTimer]struct{}
}

type fakeTimer struct {
	c        *fakeClock
	deadline time.Time
	ch       chan time.Time
}

func newFakeClock(now time.Time) *fakeClock {
	return &fakeClock{now: now, timers: map[*fakeTimer]struct{}{}}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) NewTimer(d time.Duration) Timer {
	c.mu.Lock()
	defer c.mu.Unlock()
	t := &fakeTimer{c: c, deadline: c.now.Add(d), ch: make(chan time.Time, 1)}
	if d <= 0 {
		t.ch <- c.now
	} else {
		c.timers[t] = struct{}{}
	}
	return t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
	for t := range c.timers {
		if !t.deadline.After(c.now) {
			t.ch <- c.now
			delete(c.timers, t)
		}
	}
}

// awaitTimer waits until a timer due at deadline is pending: the code
// under test computes a duration from Now and then asks for a timer, so an
// Advance between the two would push that timer's deadline out by the step.
// Tests that advance the clock past a deadline wait here first.
func (c *fakeClock) awaitTimer(t *testing.T, deadline time.Time) {
	t.Helper()
	eventually(t, "a timer due at "+deadline.String(), func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		for tm := range c.timers {
			if tm.deadline.Equal(deadline) {
				return true
			}
		}
		return false
	})
}

func (t *fakeTimer) C() <-chan time.Time { return t.ch }

func (t *fakeTimer) Stop() bool {
	t.c.mu.Lock()
	defer t.c.mu.Unlock()
	_, ok := t.c.timers[t]
	delete(t.c.timers, t)
	return ok
}

// countingFetcher issues from a CA in process, counting fetches; it fails
// while err is set and blocks while gate is non-nil and open.
type countingFetcher struct {
	ca    *CA
	ttl   time.Duration
	calls atomic.Int32
	mu    sync.Mutex
	err   error
	gate  chan struct{}
}

func (f *countingFetcher) Fetch(ctx context.Context, id spiffeid.ID) (*x509svid.SVID, error) {
	f.calls.Add(1)
	f.mu.Lock()
	err, gate := f.err, f.gate
	f.mu.Unlock()
	if gate != nil {
		select {
		case <-gate:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	if err != nil {
		return nil, err
	}
	return f.ca.Issue(id, f.ttl)
}

func (f *countingFetcher) setErr(err error) {
	f.mu.Lock()
	f.err = err
	f.mu.Unlock()
}

// eventually polls cond until it holds, for 10 s at most.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}
