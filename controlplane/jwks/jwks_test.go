package jwks

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"

	"github.com/zmesh/zmesh/internal/testutil"
)

func keySet(t *testing.T, kid string) string {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: &k.PublicKey, KeyID: kid, Algorithm: "ES256", Use: "sig"}}})
	return string(b)
}

// TestFetcher: a key set is fetched from a server on loopback, refreshed,
// kept when a refresh fails (the failure is reported), and replaced when
// the server serves a new one; a set too large or not a key set is never
// served.
func TestFetcher(t *testing.T) {
	first, second := keySet(t, "k1"), keySet(t, "k2")
	var mu sync.Mutex
	status, body := 200, first
	var hits atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		mu.Lock()
		defer mu.Unlock()
		w.WriteHeader(status)
		fmt.Fprint(w, body)
	}))
	t.Cleanup(srv.Close)
	serve := func(code int, b string) {
		mu.Lock()
		status, body = code, b
		mu.Unlock()
	}
	var changes atomic.Int64
	f := &Fetcher{Refresh: 100 * time.Millisecond, Retry: 50 * time.Millisecond, Timeout: 5 * time.Second, OnChange: func() { changes.Add(1) }}
	uri := srv.URL + "/jwks.json"
	if _, err := f.Get(uri); !errors.Is(err, ErrNotFetched) {
		t.Fatalf("before fetching: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); f.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	f.Want([]string{uri})

	got := func(wantSet string, wantErr bool) func() error {
		return func() error {
			s, err := f.Get(uri)
			if s != wantSet || (err != nil) != wantErr {
				return fmt.Errorf("got %.30q, %v", s, err)
			}
			return nil
		}
	}
	testutil.Eventually(t, 10*time.Second, "first fetch", got(first, false))
	if changes.Load() == 0 {
		t.Error("no change notified")
	}
	before := hits.Load()
	testutil.Eventually(t, 10*time.Second, "refresh", func() error {
		if hits.Load() < before+2 {
			return fmt.Errorf("%d fetches", hits.Load()-before)
		}
		return nil
	})

	serve(500, "oops")
	testutil.Eventually(t, 10*time.Second, "failure keeps the last good set", got(first, true))
	if _, err := f.Get(uri); !strings.Contains(err.Error(), "status 500") {
		t.Errorf("reported failure %v", err)
	}
	serve(200, `{"keys":[{"kty":"XYZ"}]}`)
	testutil.Eventually(t, 10*time.Second, "a set with no usable key is refused", func() error {
		s, err := f.Get(uri)
		if s != first || err == nil || !strings.Contains(err.Error(), "no usable signing key") {
			return fmt.Errorf("got %.30q, %v", s, err)
		}
		return nil
	})
	serve(200, `{"keys":[`+strings.Repeat(" ", MaxBytes)+`]}`)
	testutil.Eventually(t, 10*time.Second, "an oversized set is refused", func() error {
		s, err := f.Get(uri)
		if s != first || err == nil || !strings.Contains(err.Error(), "more than") {
			return fmt.Errorf("got %.30q, %v", s, err)
		}
		return nil
	})
	serve(200, second)
	testutil.Eventually(t, 10*time.Second, "new set", got(second, false))

	f.Want(nil)
	if _, err := f.Get(uri); !errors.Is(err, ErrNotFetched) {
		t.Errorf("forgotten URI: %v", err)
	}
}

func TestValidate(t *testing.T) {
	if err := Validate(keySet(t, "k")); err != nil {
		t.Fatal(err)
	}
	for _, bad := range []string{"", "{", `{"keys":[]}`, `{"keys":[{"kty":"RSA"}]}`} {
		if err := Validate(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}
