package ca

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	authnv1 "k8s.io/api/authentication/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/zmesh/zmesh/identity"
)

// fakeReviews answers TokenReviews from a table and counts calls.
type fakeReviews struct {
	mu      sync.Mutex
	calls   int
	answers map[string]authnv1.TokenReviewStatus
	err     error
}

func (f *fakeReviews) Create(_ context.Context, r *authnv1.TokenReview, _ metav1.CreateOptions) (*authnv1.TokenReview, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls++
	if f.err != nil {
		return nil, f.err
	}
	out := r.DeepCopy()
	out.Status = f.answers[r.Spec.Token]
	return out, nil
}

func (f *fakeReviews) count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls
}

// jwt builds an unsigned token with the given claims (the fake review
// does the verifying).
func jwt(t *testing.T, claims map[string]any) string {
	t.Helper()
	b, err := json.Marshal(claims)
	if err != nil {
		t.Fatal(err)
	}
	enc := base64.RawURLEncoding.EncodeToString
	return enc([]byte(`{"alg":"RS256"}`)) + "." + enc(b) + ".sig"
}

func saUser(ns, sa, node string) authnv1.UserInfo {
	u := authnv1.UserInfo{Username: "system:serviceaccount:" + ns + ":" + sa}
	if node != "" {
		u.Extra = map[string]authnv1.ExtraValue{NodeNameExtra: {node}}
	}
	return u
}

func TestTokenReviewAuthenticator(t *testing.T) {
	now := time.Date(2030, 1, 1, 12, 0, 0, 0, time.UTC)
	td := spiffeid.RequireTrustDomainFromString("cluster.local")
	bound := jwt(t, map[string]any{"aud": []string{"istio-ca"}, "exp": now.Add(time.Hour).Unix()})
	unbound := jwt(t, map[string]any{"aud": "istio-ca", "exp": now.Add(time.Hour).Unix(), "sub": "unbound"})
	expired := jwt(t, map[string]any{"aud": []string{"istio-ca"}, "exp": now.Add(-time.Minute).Unix()})
	otherAud := jwt(t, map[string]any{"aud": []string{"https://kubernetes.default.svc"}, "exp": now.Add(time.Hour).Unix()})
	user := jwt(t, map[string]any{"aud": []string{"istio-ca"}, "sub": "alice"})
	noAudReviewed := jwt(t, map[string]any{"sub": "legacy"})
	reviews := &fakeReviews{answers: map[string]authnv1.TokenReviewStatus{
		bound:         {Authenticated: true, Audiences: []string{"istio-ca"}, User: saUser("istio-system", "ztunnel", "node-a")},
		unbound:       {Authenticated: true, Audiences: []string{"istio-ca"}, User: saUser("istio-system", "ztunnel", "")},
		expired:       {Error: "service account token has expired"},
		otherAud:      {Error: "token audiences [\"https://kubernetes.default.svc\"] is invalid for the target audiences [\"istio-ca\"]"},
		user:          {Authenticated: true, Audiences: []string{"istio-ca"}, User: authnv1.UserInfo{Username: "alice"}},
		noAudReviewed: {Authenticated: true, User: saUser("default", "default", "")},
	}}
	a, err := NewTokenReviewAuthenticator(reviews, TokenReviewOptions{TrustDomain: td, Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name    string
		token   string
		want    identity.Caller
		wantErr []error
	}{
		{name: "pod-bound", token: bound, want: identity.Caller{ID: identity.MustWorkloadID("cluster.local", "istio-system", "ztunnel"), Node: "node-a"}},
		{name: "not bound: no node", token: unbound, want: identity.Caller{ID: identity.MustWorkloadID("cluster.local", "istio-system", "ztunnel")}},
		{name: "expired", token: expired, wantErr: []error{ErrTokenRefused, ErrTokenExpired}},
		{name: "other audience", token: otherAud, wantErr: []error{ErrTokenRefused, ErrWrongAudience}},
		{name: "unknown token", token: "garbage", wantErr: []error{ErrTokenRefused}},
		{name: "not a service account", token: user, wantErr: []error{ErrNotServiceAccount}},
		{name: "review names no audience", token: noAudReviewed, wantErr: []error{ErrWrongAudience}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := a.Authenticate(t.Context(), tc.token)
			if len(tc.wantErr) > 0 {
				if err == nil {
					t.Fatalf("Authenticate = %+v, want an error", got)
				}
				for _, w := range tc.wantErr {
					if !errors.Is(err, w) {
						t.Errorf("error %q is not %q", err, w)
					}
				}
				t.Logf("refused: %v", err)
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got != tc.want {
				t.Fatalf("Authenticate = %+v, want %+v", got, tc.want)
			}
		})
	}
}

func TestTokenReviewCache(t *testing.T) {
	now := time.Date(2030, 1, 1, 12, 0, 0, 0, time.UTC)
	clock := func() time.Time { return now }
	td := spiffeid.RequireTrustDomainFromString("cluster.local")
	reviews := &fakeReviews{answers: map[string]authnv1.TokenReviewStatus{}}
	var tokens []string
	for i := range 4 {
		tok := jwt(t, map[string]any{"aud": "istio-ca", "n": i, "exp": now.Add(time.Duration(i+1) * 10 * time.Second).Unix()})
		tokens = append(tokens, tok)
		reviews.answers[tok] = authnv1.TokenReviewStatus{Authenticated: true, Audiences: []string{"istio-ca"}, User: saUser("ns", fmt.Sprint("sa", i), "n")}
	}
	a, err := NewTokenReviewAuthenticator(reviews, TokenReviewOptions{TrustDomain: td, Now: clock, CacheTTL: 25 * time.Second, CacheSize: 2})
	if err != nil {
		t.Fatal(err)
	}
	auth := func(tok string) {
		t.Helper()
		if _, err := a.Authenticate(t.Context(), tok); err != nil {
			t.Fatal(err)
		}
	}
	auth(tokens[0])
	auth(tokens[0])
	if n := reviews.count(); n != 1 {
		t.Fatalf("%d reviews for one token asked twice, want 1", n)
	}
	// The cache holds 2: a third token evicts the least recently used.
	auth(tokens[1])
	auth(tokens[0]) // tokens[1] is now the oldest
	auth(tokens[2])
	if n := a.cache.len(); n != 2 {
		t.Fatalf("cache holds %d, want 2", n)
	}
	calls := reviews.count()
	auth(tokens[0])
	if reviews.count() != calls {
		t.Fatal("recently used token was evicted")
	}
	auth(tokens[1])
	if reviews.count() != calls+1 {
		t.Fatal("least recently used token was not evicted")
	}
	// tokens[0] expires at +10 s, before the 25 s TTL: it is reviewed again.
	now = now.Add(11 * time.Second)
	calls = reviews.count()
	reviews.answers[tokens[0]] = authnv1.TokenReviewStatus{Error: "expired"}
	if _, err := a.Authenticate(t.Context(), tokens[0]); !errors.Is(err, ErrTokenExpired) {
		t.Fatalf("expired token: err = %v, want ErrTokenExpired", err)
	}
	if reviews.count() != calls+1 {
		t.Fatal("expired token served from the cache")
	}
	// Failures are not cached.
	if _, err := a.Authenticate(t.Context(), tokens[0]); err == nil {
		t.Fatal("refused token accepted on retry")
	}
	if reviews.count() != calls+2 {
		t.Fatal("a refusal was cached")
	}
	// The API being down is an error, not a refusal cached or a pass.
	reviews.err = errors.New("connection refused")
	if _, err := a.Authenticate(t.Context(), tokens[3]); err == nil || errors.Is(err, ErrTokenRefused) {
		t.Fatalf("API error: err = %v", err)
	}
}

func TestTokenReviewCacheDisabled(t *testing.T) {
	td := spiffeid.RequireTrustDomainFromString("cluster.local")
	tok := jwt(t, map[string]any{"aud": "istio-ca"})
	reviews := &fakeReviews{answers: map[string]authnv1.TokenReviewStatus{
		tok: {Authenticated: true, Audiences: []string{"istio-ca"}, User: saUser("ns", "sa", "n")},
	}}
	a, err := NewTokenReviewAuthenticator(reviews, TokenReviewOptions{TrustDomain: td, CacheTTL: -1})
	if err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if _, err := a.Authenticate(t.Context(), tok); err != nil {
			t.Fatal(err)
		}
	}
	if n := reviews.count(); n != 3 {
		t.Fatalf("%d reviews, want 3 with the cache disabled", n)
	}
}

func TestNewTokenReviewAuthenticatorValidates(t *testing.T) {
	td := spiffeid.RequireTrustDomainFromString("cluster.local")
	for name, tc := range map[string]struct {
		reviews *fakeReviews
		opts    TokenReviewOptions
	}{
		"nil client":     {nil, TokenReviewOptions{TrustDomain: td}},
		"no td":          {&fakeReviews{}, TokenReviewOptions{}},
		"empty audience": {&fakeReviews{}, TokenReviewOptions{TrustDomain: td, Audiences: []string{""}}},
		"negative size":  {&fakeReviews{}, TokenReviewOptions{TrustDomain: td, CacheSize: -1}},
	} {
		var err error
		if tc.reviews == nil {
			_, err = NewTokenReviewAuthenticator(nil, tc.opts)
		} else {
			_, err = NewTokenReviewAuthenticator(tc.reviews, tc.opts)
		}
		if err == nil {
			t.Errorf("%s: no error", name)
		}
	}
}

func TestParseNodeAgents(t *testing.T) {
	td := spiffeid.RequireTrustDomainFromString("example.org")
	ids, err := ParseNodeAgents(td, DefaultNodeAgents)
	if err != nil {
		t.Fatal(err)
	}
	if len(ids) != 2 || ids[0].String() != "spiffe://example.org/ns/istio-system/sa/ztunnel" {
		t.Fatalf("ParseNodeAgents = %v", ids)
	}
	for _, bad := range []string{"ztunnel", "/ztunnel", "ns/", "a/b/c", "NS!/x"} {
		if _, err := ParseNodeAgents(td, []string{bad}); err == nil {
			t.Errorf("ParseNodeAgents(%q): no error", bad)
		}
	}
}
