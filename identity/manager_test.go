package identity

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"go.uber.org/goleak"
)

// newTestManager returns a manager on a fake clock fetching 24 h
// certificates from an in-process CA on the same clock, without jitter.
func newTestManager(t *testing.T) (*Manager, *countingFetcher, *fakeClock) {
	t.Helper()
	clk := newFakeClock(testEpoch)
	ca, _ := newPluggedCA(t, CAOptions{Now: clk.Now})
	f := &countingFetcher{ca: ca, ttl: 24 * time.Hour}
	m, err := NewManager(f, ca.Bundle(), ManagerOptions{Clock: clk, Rand: halfRandom, Logger: quietLog})
	if err != nil {
		t.Fatal(err)
	}
	return m, f, clk
}

// verifyNoLeaks checks, after every cleanup of t, that t left no goroutine.
func verifyNoLeaks(t *testing.T) {
	ignore := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, ignore) })
}

// runManager runs m until the test ends, then checks Run returned and left
// no goroutine behind.
func runManager(t *testing.T, m *Manager) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- m.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
}

func TestManagerSingleflight(t *testing.T) {
	m, f, _ := newTestManager(t)
	f.gate = make(chan struct{})
	const n = 20
	var wg sync.WaitGroup
	got := make([]*x509svid.SVID, n)
	for i := range n {
		wg.Go(func() {
			s, err := m.SVID(context.Background(), podAID)
			if err != nil {
				t.Error(err)
			}
			got[i] = s
		})
	}
	eventually(t, "first fetch", func() bool { return f.calls.Load() == 1 })
	time.Sleep(10 * time.Millisecond) // let the others queue on the flight
	close(f.gate)
	wg.Wait()
	if c := f.calls.Load(); c != 1 {
		t.Errorf("%d fetches, want 1", c)
	}
	for i := range got {
		if got[i] != got[0] {
			t.Fatalf("caller %d got another certificate", i)
		}
	}
}

func TestManagerCacheHit(t *testing.T) {
	m, f, clk := newTestManager(t)
	a, err := m.SVID(context.Background(), podAID)
	if err != nil {
		t.Fatal(err)
	}
	if a.ID != podAID {
		t.Fatalf("certificate for %s, want %s", a.ID, podAID)
	}
	clk.Advance(20 * time.Hour) // past half-life, but Run is not there to rotate
	b, err := m.SVID(context.Background(), podAID)
	if err != nil {
		t.Fatal(err)
	}
	if a != b || f.calls.Load() != 1 {
		t.Errorf("second call fetched again (%d fetches)", f.calls.Load())
	}
	if _, err := m.SVID(context.Background(), podBID); err != nil || f.calls.Load() != 2 {
		t.Errorf("other identity: %v, %d fetches; want a second fetch", err, f.calls.Load())
	}
}

func TestManagerRotatesAtHalfLife(t *testing.T) {
	verifyNoLeaks(t)
	m, f, clk := newTestManager(t)
	runManager(t, m)
	first, err := m.SVID(context.Background(), podAID)
	if err != nil {
		t.Fatal(err)
	}
	// Half of the life left when it was fetched: the CA's backdating of
	// NotBefore for clock skew does not count, or a short-lived
	// certificate would be renewed as soon as it arrives.
	leaf := first.Certificates[0]
	half := clk.Now().Add(leaf.NotAfter.Sub(clk.Now()) / 2)
	if info := m.Certificates(); len(info) != 1 || !info[0].NextRotation.Equal(half) || info[0].LastError != "" {
		t.Fatalf("Certificates() = %+v, want next rotation at %s", info, half)
	}

	clk.awaitTimer(t, half)
	clk.Advance(half.Sub(clk.Now()) - time.Second)
	time.Sleep(20 * time.Millisecond)
	if c := f.calls.Load(); c != 1 {
		t.Fatalf("rotated before half-life (%d fetches)", c)
	}
	clk.Advance(time.Second)
	eventually(t, "rotation", func() bool {
		info := m.Certificates()
		return f.calls.Load() == 2 && info[0].NextRotation.After(half)
	})
	second, err := m.SVID(context.Background(), podAID)
	if err != nil {
		t.Fatal(err)
	}
	if second == first || second.Certificates[0].SerialNumber.Cmp(leaf.SerialNumber) == 0 {
		t.Fatal("SVID still returns the old certificate")
	}
}

func TestManagerBackoffAndRecovery(t *testing.T) {
	verifyNoLeaks(t)
	m, f, clk := newTestManager(t)
	runManager(t, m)
	first, err := m.SVID(context.Background(), podAID)
	if err != nil {
		t.Fatal(err)
	}
	f.setErr(errors.New("ca unavailable"))
	rotation := m.Certificates()[0].NextRotation
	clk.awaitTimer(t, rotation)
	clk.Advance(rotation.Sub(clk.Now()))

	// Failures back off 1 s, 2 s, 4 s (no jitter in this test).
	var calls int32 = 1
	waits := []time.Duration{time.Second, 2 * time.Second, 4 * time.Second}
	for i, wait := range waits {
		calls++
		var info CertInfo
		eventually(t, "failed fetch", func() bool {
			info = m.Certificates()[0]
			return f.calls.Load() == calls && info.LastError != "" && info.NextRotation.Equal(clk.Now().Add(wait))
		})
		// The old certificate keeps serving.
		if s, err := m.SVID(context.Background(), podAID); err != nil || s != first {
			t.Fatalf("during backoff SVID = %v, %v; want the old certificate", s, err)
		}
		if i == len(waits)-1 {
			// The CA is back before the retry the clock is about to
			// trigger: set after the advance, the retry could run (and
			// fail) first, and the next one is 8 s of fake time away.
			f.setErr(nil)
		}
		clk.awaitTimer(t, info.NextRotation)
		clk.Advance(wait)
	}
	calls++
	eventually(t, "recovery", func() bool {
		info := m.Certificates()[0]
		return f.calls.Load() == calls && info.LastError == "" && info.NextRotation.After(clk.Now())
	})
	if s, err := m.SVID(context.Background(), podAID); err != nil || s == first {
		t.Fatalf("after recovery SVID = %v, %v; want a new certificate", s, err)
	}
}

func TestManagerNeverReturnsExpired(t *testing.T) {
	m, f, clk := newTestManager(t)
	s, err := m.SVID(context.Background(), podAID)
	if err != nil {
		t.Fatal(err)
	}
	f.setErr(errors.New("ca unavailable"))
	clk.Advance(s.Certificates[0].NotAfter.Sub(clk.Now()))
	if _, err := m.SVID(context.Background(), podAID); !errors.Is(err, ErrNoIdentity) {
		t.Fatalf("expired: err = %v, want ErrNoIdentity", err)
	}
	// Within the backoff the failure is returned without asking the CA.
	calls := f.calls.Load()
	if _, err := m.SVID(context.Background(), podAID); !errors.Is(err, ErrNoIdentity) || f.calls.Load() != calls {
		t.Fatalf("in backoff: err = %v, fetches %d → %d", err, calls, f.calls.Load())
	}
	f.setErr(nil)
	clk.Advance(time.Second)
	if _, err := m.SVID(context.Background(), podAID); err != nil {
		t.Fatalf("after backoff: %v", err)
	}
}

func TestManagerForget(t *testing.T) {
	m, f, _ := newTestManager(t)
	if _, err := m.SVID(context.Background(), podAID); err != nil {
		t.Fatal(err)
	}
	m.Forget(podAID)
	if info := m.Certificates(); len(info) != 0 {
		t.Fatalf("Certificates() = %+v after Forget", info)
	}
	if _, err := m.SVID(context.Background(), podAID); err != nil || f.calls.Load() != 2 {
		t.Fatalf("after Forget: %v, %d fetches; want a new fetch", err, f.calls.Load())
	}
}

func TestManagerRejectsUntrustedCertificate(t *testing.T) {
	m, _, clk := newTestManager(t)
	other, _ := newPluggedCA(t, CAOptions{Now: clk.Now})
	m.fetcher = FetcherFunc(func(_ context.Context, id spiffeid.ID) (*x509svid.SVID, error) { return other.Issue(id, 0) })
	if _, err := m.SVID(context.Background(), podAID); err == nil {
		t.Fatal("certificate of an untrusted CA accepted")
	}
	m.fetcher = FetcherFunc(func(_ context.Context, _ spiffeid.ID) (*x509svid.SVID, error) { return other.Issue(podBID, 0) })
	m.Forget(podAID)
	if _, err := m.SVID(context.Background(), podAID); err == nil {
		t.Fatal("certificate for another identity accepted")
	}
}

func TestManagerRunOnce(t *testing.T) {
	verifyNoLeaks(t)
	m, _, _ := newTestManager(t)
	runManager(t, m)
	eventually(t, "Run to start", func() bool {
		m.mu.Lock()
		defer m.mu.Unlock()
		return m.running
	})
	if err := m.Run(context.Background()); err == nil {
		t.Fatal("second Run accepted")
	}
}
