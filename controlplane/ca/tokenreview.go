package ca

import (
	"container/list"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	authnv1 "k8s.io/api/authentication/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	authnv1client "k8s.io/client-go/kubernetes/typed/authentication/v1"

	"github.com/zmesh/zmesh/identity"
)

// Audience is the audience a token presented to the certificate service
// must carry, as with istiod.
const Audience = "istio-ca"

// NodeNameExtra is the TokenReview user.extra key in which the API server
// names the node of the Pod a token is bound to.
const NodeNameExtra = "authentication.kubernetes.io/node-name"

const serviceAccountPrefix = "system:serviceaccount:"

// Reasons a token is refused. They are wrapped with details; test with
// errors.Is.
var (
	// ErrTokenRefused: the API server did not authenticate the token. It
	// wraps the more precise ErrTokenExpired or ErrWrongAudience when the
	// token's own claims explain the refusal.
	ErrTokenRefused = errors.New("token refused by TokenReview")
	// ErrTokenExpired: the token's exp claim is in the past.
	ErrTokenExpired = errors.New("token expired")
	// ErrWrongAudience: the token is not meant for the certificate service.
	ErrWrongAudience = errors.New("token audience is not the certificate service's")
	// ErrNotServiceAccount: the token authenticates a user that is not a
	// Kubernetes service account, which has no workload identity.
	ErrNotServiceAccount = errors.New("token does not authenticate a service account")
)

// Defaults of TokenReviewOptions.
const (
	DefaultTokenCacheTTL  = 30 * time.Second
	DefaultTokenCacheSize = 4096
)

// TokenReviewOptions configure a TokenReviewAuthenticator.
type TokenReviewOptions struct {
	// TrustDomain of the identities callers are given. Required.
	TrustDomain spiffeid.TrustDomain
	// Audiences a token must carry one of; default [Audience].
	Audiences []string
	// CacheTTL is how long a successful review is reused (never beyond the
	// token's expiry); 0 means DefaultTokenCacheTTL, negative disables the
	// cache. Until it lapses, a token revoked by deleting its Pod still
	// works: keep it short.
	CacheTTL time.Duration
	// CacheSize bounds the cache; 0 means DefaultTokenCacheSize.
	CacheSize int
	// Now is the clock; time.Now if nil.
	Now func() time.Time
}

// TokenReviewAuthenticator is an identity.Authenticator that asks the API
// server (TokenReview) who a bearer token belongs to. A service account
// system:serviceaccount:NS:SA becomes spiffe://<trust-domain>/ns/NS/sa/SA;
// the caller's node is the one of the Pod the token is bound to (empty for
// a token bound to no pod). Successful reviews are cached briefly, keyed by
// the token's SHA-256, so that each CSR does not cost an API call.
type TokenReviewAuthenticator struct {
	reviews   authnv1client.TokenReviewInterface
	td        spiffeid.TrustDomain
	audiences []string
	ttl       time.Duration
	now       func() time.Time
	cache     *callerCache
}

// NewTokenReviewAuthenticator returns an authenticator using reviews, e.g.
// clientset.AuthenticationV1().TokenReviews(). The client needs permission
// to create tokenreviews.
func NewTokenReviewAuthenticator(reviews authnv1client.TokenReviewInterface, opts TokenReviewOptions) (*TokenReviewAuthenticator, error) {
	if reviews == nil {
		return nil, errors.New("token review authenticator: nil client")
	}
	if opts.TrustDomain.IsZero() {
		return nil, errors.New("token review authenticator: empty trust domain")
	}
	a := &TokenReviewAuthenticator{
		reviews:   reviews,
		td:        opts.TrustDomain,
		audiences: slices.Clone(opts.Audiences),
		ttl:       opts.CacheTTL,
		now:       opts.Now,
	}
	if len(a.audiences) == 0 {
		a.audiences = []string{Audience}
	}
	if slices.Contains(a.audiences, "") {
		return nil, errors.New("token review authenticator: empty audience")
	}
	if a.ttl == 0 {
		a.ttl = DefaultTokenCacheTTL
	}
	if a.now == nil {
		a.now = time.Now
	}
	size := opts.CacheSize
	if size == 0 {
		size = DefaultTokenCacheSize
	}
	if size < 0 {
		return nil, fmt.Errorf("token review authenticator: negative cache size %d", size)
	}
	if a.ttl > 0 {
		a.cache = newCallerCache(size)
	}
	return a, nil
}

// Authenticate implements identity.Authenticator.
func (a *TokenReviewAuthenticator) Authenticate(ctx context.Context, token string) (identity.Caller, error) {
	key := sha256.Sum256([]byte(token))
	now := a.now()
	if c, ok := a.cache.get(key, now); ok {
		return c, nil
	}
	review, err := a.reviews.Create(ctx, &authnv1.TokenReview{
		Spec: authnv1.TokenReviewSpec{Token: token, Audiences: a.audiences},
	}, metav1.CreateOptions{})
	if err != nil {
		return identity.Caller{}, fmt.Errorf("token review: %w", err)
	}
	claims := peekClaims(token)
	caller, err := a.caller(review.Status, claims, now)
	if err != nil {
		return identity.Caller{}, err
	}
	expires := now.Add(a.ttl)
	if !claims.Expiry.IsZero() && claims.Expiry.Before(expires) {
		expires = claims.Expiry
	}
	a.cache.put(key, caller, expires, now)
	return caller, nil
}

// caller reads the review's verdict. claims (unverified, from the token
// itself) only explain a refusal; they never grant anything.
func (a *TokenReviewAuthenticator) caller(st authnv1.TokenReviewStatus, claims tokenClaims, now time.Time) (identity.Caller, error) {
	if !st.Authenticated {
		return identity.Caller{}, a.refusal(st.Error, claims, now)
	}
	// The API server lists the audiences it validated the token for; one
	// that does not (an authenticator unaware of audiences) must be taken
	// as a refusal.
	if !slices.ContainsFunc(st.Audiences, func(aud string) bool { return slices.Contains(a.audiences, aud) }) {
		return identity.Caller{}, fmt.Errorf("%w: reviewed for audiences %q, want one of %q", ErrWrongAudience, st.Audiences, a.audiences)
	}
	rest, ok := strings.CutPrefix(st.User.Username, serviceAccountPrefix)
	ns, sa, ok2 := strings.Cut(rest, ":")
	if !ok || !ok2 || ns == "" || sa == "" || strings.Contains(sa, ":") {
		return identity.Caller{}, fmt.Errorf("%w: user %q", ErrNotServiceAccount, st.User.Username)
	}
	id, err := identity.WorkloadID(a.td, ns, sa)
	if err != nil {
		return identity.Caller{}, fmt.Errorf("token of %s: %w", st.User.Username, err)
	}
	var node string
	if v := st.User.Extra[NodeNameExtra]; len(v) > 0 {
		node = v[0]
	}
	return identity.Caller{ID: id, Node: node}, nil
}

func (a *TokenReviewAuthenticator) refusal(apiErr string, claims tokenClaims, now time.Time) error {
	if apiErr == "" {
		apiErr = "not authenticated"
	}
	switch {
	case !claims.Expiry.IsZero() && !now.Before(claims.Expiry):
		return fmt.Errorf("%w: %w at %s (%s)", ErrTokenRefused, ErrTokenExpired, claims.Expiry.UTC().Format(time.RFC3339), apiErr)
	case claims.HasAudience && !slices.ContainsFunc(claims.Audiences, func(aud string) bool { return slices.Contains(a.audiences, aud) }):
		return fmt.Errorf("%w: %w: token is for %q, want one of %q (%s)", ErrTokenRefused, ErrWrongAudience, claims.Audiences, a.audiences, apiErr)
	}
	return fmt.Errorf("%w: %s", ErrTokenRefused, apiErr)
}

// tokenClaims are the JWT claims read, without verification, to explain a
// refusal and to bound the cache lifetime of a token the API server has
// just verified.
type tokenClaims struct {
	Expiry      time.Time
	Audiences   []string
	HasAudience bool
}

// peekClaims decodes a JWT's payload; anything malformed yields zero
// claims (the TokenReview has the last word anyway).
func peekClaims(token string) tokenClaims {
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		return tokenClaims{}
	}
	payload, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return tokenClaims{}
	}
	var raw struct {
		Exp *float64        `json:"exp"`
		Aud json.RawMessage `json:"aud"`
	}
	if json.Unmarshal(payload, &raw) != nil {
		return tokenClaims{}
	}
	var c tokenClaims
	if raw.Exp != nil && *raw.Exp > 0 && *raw.Exp < 1<<40 {
		c.Expiry = time.Unix(int64(*raw.Exp), 0)
	}
	// aud is a string or an array of strings (RFC 7519 §4.1.3).
	var one string
	if json.Unmarshal(raw.Aud, &one) == nil {
		c.Audiences, c.HasAudience = []string{one}, true
	} else if json.Unmarshal(raw.Aud, &c.Audiences) == nil {
		c.HasAudience = true
	}
	return c
}

// callerCache is a bounded LRU of reviewed tokens. A nil cache holds
// nothing.
type callerCache struct {
	mu      sync.Mutex
	size    int
	entries map[[sha256.Size]byte]*list.Element
	lru     list.List // front = most recently used; values are *cacheEntry
}

type cacheEntry struct {
	key     [sha256.Size]byte
	caller  identity.Caller
	expires time.Time
}

func newCallerCache(size int) *callerCache {
	return &callerCache{size: size, entries: make(map[[sha256.Size]byte]*list.Element)}
}

func (c *callerCache) get(key [sha256.Size]byte, now time.Time) (identity.Caller, bool) {
	if c == nil {
		return identity.Caller{}, false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	el, ok := c.entries[key]
	if !ok {
		return identity.Caller{}, false
	}
	e := el.Value.(*cacheEntry)
	if !now.Before(e.expires) {
		c.lru.Remove(el)
		delete(c.entries, key)
		return identity.Caller{}, false
	}
	c.lru.MoveToFront(el)
	return e.caller, true
}

func (c *callerCache) put(key [sha256.Size]byte, caller identity.Caller, expires, now time.Time) {
	if c == nil || !now.Before(expires) {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if el, ok := c.entries[key]; ok {
		el.Value = &cacheEntry{key: key, caller: caller, expires: expires}
		c.lru.MoveToFront(el)
		return
	}
	for c.lru.Len() >= c.size {
		oldest := c.lru.Back()
		c.lru.Remove(oldest)
		delete(c.entries, oldest.Value.(*cacheEntry).key)
	}
	c.entries[key] = c.lru.PushFront(&cacheEntry{key: key, caller: caller, expires: expires})
}

// len returns how many entries are held, for tests.
func (c *callerCache) len() int {
	if c == nil {
		return 0
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.lru.Len()
}
