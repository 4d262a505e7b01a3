package main

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"sync/atomic"
	"time"

	"github.com/zmesh/zmesh/identity"
)

// tokenFile is --tokens-file, read again when it changes: without a
// cluster it stands in for TokenReview, which knows a service account as
// soon as it exists, so a caller added to the file (the waypoint of a
// Gateway created after the start) is known without a restart, and one
// removed from it is refused from then on. A version that does not parse
// is logged and the last good one stays.
type tokenFile struct {
	path     string
	interval time.Duration
	log      *slog.Logger
	cur      atomic.Pointer[identity.StaticTokenAuthenticator]
	// last is the content last read; unreadable says the last read failed.
	last       []byte
	unreadable bool
}

// loadTokenFile reads the file once; it must parse.
func loadTokenFile(path string, log *slog.Logger) (*tokenFile, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	a, err := identity.ParseStaticTokens(bytes.NewReader(b))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	t := &tokenFile{path: path, interval: 250 * time.Millisecond, log: log, last: b}
	t.cur.Store(a)
	return t, nil
}

// Authenticate implements identity.Authenticator with the newest good
// version of the file.
func (t *tokenFile) Authenticate(ctx context.Context, token string) (identity.Caller, error) {
	return t.cur.Load().Authenticate(ctx, token)
}

// run reads the file again every interval until ctx ends.
func (t *tokenFile) run(ctx context.Context) {
	tick := time.NewTicker(t.interval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		t.reload()
	}
}

func (t *tokenFile) reload() {
	b, err := os.ReadFile(t.path)
	if err != nil {
		if !t.unreadable {
			t.log.Warn("tokens file unreadable, keeping its last good version", "file", t.path, "reason", err.Error())
			t.unreadable = true
		}
		return
	}
	if !t.unreadable && bytes.Equal(b, t.last) {
		return
	}
	t.last, t.unreadable = b, false
	a, err := identity.ParseStaticTokens(bytes.NewReader(b))
	if err != nil {
		t.log.Warn("tokens file rejected, keeping its last good version", "file", t.path, "reason", err.Error())
		return
	}
	t.cur.Store(a)
	t.log.Info("tokens file read again", "file", t.path, "tokens", a.Len())
}
