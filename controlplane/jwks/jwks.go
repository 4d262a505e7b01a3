// Package jwks keeps the JSON Web Key Sets that RequestAuthentications
// name by jwksUri, so that zmeshd can send waypoints their keys inline and
// waypoints never need egress. A Fetcher fetches each wanted URI (bounded
// in size and time), refreshes it on an interval, keeps the last good set
// when a refresh fails and says why, and tells its owner when anything it
// serves changed. Validate is the check both fetched and inline key sets
// pass before a waypoint is sent them.
package jwks

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"slices"
	"sync"
	"time"

	jose "github.com/go-jose/go-jose/v4"
)

// Bounds of a key set, the same the waypoint compiles.
const (
	MaxBytes = 256 << 10
	MaxKeys  = 64
)

// Defaults of a Fetcher.
const (
	DefaultRefresh = 20 * time.Minute // istiod's default refresh interval
	DefaultRetry   = 5 * time.Second
	DefaultTimeout = 5 * time.Second // istiod's default fetch timeout
)

// Validate checks that s is a JSON Web Key Set, within the bounds, with at
// least one key a waypoint can verify signatures with.
func Validate(s string) error {
	if len(s) > MaxBytes {
		return fmt.Errorf("%d bytes, more than %d", len(s), MaxBytes)
	}
	var set struct {
		Keys []json.RawMessage `json:"keys"`
	}
	if err := json.Unmarshal([]byte(s), &set); err != nil {
		return fmt.Errorf("not a JSON Web Key Set: %v", err)
	}
	if len(set.Keys) > MaxKeys {
		return fmt.Errorf("%d keys, more than %d", len(set.Keys), MaxKeys)
	}
	var last error
	for i, raw := range set.Keys {
		var k jose.JSONWebKey
		if err := k.UnmarshalJSON(raw); err != nil {
			last = fmt.Errorf("keys[%d]: %v", i, err)
			continue
		}
		if k.Use == "" || k.Use == "sig" {
			return nil
		}
	}
	if last != nil {
		return fmt.Errorf("no usable signing key (%v)", last)
	}
	return errors.New("no usable signing key")
}

// Fetcher keeps the key sets of the wanted URIs. Set the fields, then Run.
type Fetcher struct {
	// Client fetches; nil: a client with Timeout and no redirects to
	// other schemes than https and http.
	Client *http.Client
	// Refresh is how often a set is fetched again (DefaultRefresh); Retry
	// how soon after a failure (DefaultRetry, doubling up to Refresh).
	Refresh, Retry time.Duration
	Timeout        time.Duration
	Log            *slog.Logger
	// OnChange is called (from Run's goroutine) when a set or an error
	// Get reports changed.
	OnChange func()

	mu      sync.Mutex
	entries map[string]*entry
	wake    chan struct{}
	once    sync.Once
}

type entry struct {
	jwks    string // last good, "" before the first success
	err     error  // last failure, nil after a success
	next    time.Time
	backoff time.Duration
}

func (f *Fetcher) init() {
	f.once.Do(func() {
		f.entries = map[string]*entry{}
		f.wake = make(chan struct{}, 1)
		if f.Refresh <= 0 {
			f.Refresh = DefaultRefresh
		}
		if f.Retry <= 0 {
			f.Retry = DefaultRetry
		}
		if f.Timeout <= 0 {
			f.Timeout = DefaultTimeout
		}
		if f.Log == nil {
			f.Log = slog.Default()
		}
		if f.Client == nil {
			f.Client = &http.Client{Timeout: f.Timeout}
		}
	})
}

// ErrNotFetched is Get's error for a URI not fetched yet.
var ErrNotFetched = errors.New("not fetched yet")

// Get returns the last good key set of uri (empty when there is none) and
// the last failure (nil when the last fetch succeeded).
func (f *Fetcher) Get(uri string) (string, error) {
	f.init()
	f.mu.Lock()
	defer f.mu.Unlock()
	e := f.entries[uri]
	if e == nil {
		return "", ErrNotFetched
	}
	if e.jwks == "" && e.err == nil {
		return "", ErrNotFetched
	}
	return e.jwks, e.err
}

// Want sets the URIs to keep; new ones are fetched at once, the others
// forgotten.
func (f *Fetcher) Want(uris []string) {
	f.init()
	f.mu.Lock()
	added := false
	for _, u := range uris {
		if f.entries[u] == nil {
			f.entries[u] = &entry{}
			added = true
		}
	}
	for u := range f.entries {
		if !slices.Contains(uris, u) {
			delete(f.entries, u)
		}
	}
	f.mu.Unlock()
	if added {
		select {
		case f.wake <- struct{}{}:
		default:
		}
	}
}

// Run fetches what is due until ctx ends.
func (f *Fetcher) Run(ctx context.Context) {
	f.init()
	for {
		f.mu.Lock()
		now := time.Now()
		var due []string
		next := now.Add(f.Refresh)
		for u, e := range f.entries {
			if !e.next.After(now) {
				due = append(due, u)
			} else if e.next.Before(next) {
				next = e.next
			}
		}
		f.mu.Unlock()
		changed := false
		for _, u := range due {
			if f.fetchOne(ctx, u) {
				changed = true
			}
			if ctx.Err() != nil {
				return
			}
		}
		if changed && f.OnChange != nil {
			f.OnChange()
		}
		if len(due) > 0 {
			continue // recompute the next deadline
		}
		t := time.NewTimer(time.Until(next))
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-f.wake:
			t.Stop()
		case <-t.C:
		}
	}
}

// fetchOne fetches uri and records the outcome; true when what Get
// returns changed.
func (f *Fetcher) fetchOne(ctx context.Context, uri string) bool {
	body, err := f.fetch(ctx, uri)
	if err == nil {
		err = Validate(body)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	e := f.entries[uri]
	if e == nil {
		return false // no longer wanted
	}
	before, beforeErr := e.jwks, errString(e.err)
	if err != nil {
		e.err = err
		if e.backoff == 0 {
			e.backoff = f.Retry
		} else {
			e.backoff = min(2*e.backoff, f.Refresh)
		}
		e.next = time.Now().Add(e.backoff)
		f.Log.Warn("jwks fetch failed", "uri", uri, "reason", err, "lastGoodKept", e.jwks != "")
	} else {
		e.jwks, e.err, e.backoff = body, nil, 0
		e.next = time.Now().Add(f.Refresh)
		if body != before {
			f.Log.Info("jwks fetched", "uri", uri, "bytes", len(body))
		}
	}
	return e.jwks != before || errString(e.err) != beforeErr
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

func (f *Fetcher) fetch(ctx context.Context, uri string) (string, error) {
	u, err := url.Parse(uri)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		return "", fmt.Errorf("%q is not an http(s) URL", uri)
	}
	ctx, cancel := context.WithTimeout(ctx, f.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, uri, nil)
	if err != nil {
		return "", err
	}
	req.Header.Set("Accept", "application/json")
	res, err := f.Client.Do(req)
	if err != nil {
		return "", fmt.Errorf("fetch: %w", err)
	}
	defer res.Body.Close()
	if res.StatusCode != http.StatusOK {
		return "", fmt.Errorf("fetch: status %d", res.StatusCode)
	}
	b, err := io.ReadAll(io.LimitReader(res.Body, MaxBytes+1))
	if err != nil {
		return "", fmt.Errorf("fetch: %w", err)
	}
	if len(b) > MaxBytes {
		return "", fmt.Errorf("more than %d bytes", MaxBytes)
	}
	return string(b), nil
}
