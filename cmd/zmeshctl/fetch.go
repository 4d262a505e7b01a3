package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/pflag"
)

// maxBody bounds what is read from an endpoint: a config dump of a large
// cluster is tens of megabytes, never gigabytes.
const maxBody = 256 << 20

// endpoint is an HTTP server zmeshctl reads from.
type endpoint struct {
	// what names the server in errors ("ztunnel admin").
	what string
	// addr is the address as the user gave it, for messages.
	addr string
	// base is addr as a URL without trailing slash.
	base string
	// hint says what to check when the server cannot be reached.
	hint    string
	timeout time.Duration
}

// endpointFlags registers the flag naming an endpoint and --timeout, and
// returns a function giving the endpoint once flags are parsed.
func endpointFlags(fs *pflag.FlagSet, name, def, what, hint string) func() (endpoint, error) {
	addr := fs.String(name, def, "address of "+what+": host:port or a URL")
	timeout := fs.Duration("timeout", 10*time.Second, "how long to wait for "+what)
	return func() (endpoint, error) {
		base, err := baseURL(*addr)
		if err != nil {
			return endpoint{}, usagef("--%s %q: %v", name, *addr, err)
		}
		return endpoint{what: what, addr: *addr, base: base, hint: hint, timeout: *timeout}, nil
	}
}

// baseURL accepts "host:port" or an http(s) URL.
func baseURL(addr string) (string, error) {
	s := addr
	if !strings.Contains(s, "://") {
		s = "http://" + s
	}
	u, err := url.Parse(s)
	if err != nil {
		return "", err
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return "", fmt.Errorf("scheme %q: want http or https", u.Scheme)
	}
	if u.Host == "" {
		return "", errors.New("no host")
	}
	return strings.TrimSuffix(u.String(), "/"), nil
}

// errNotFound is a 404 from an endpoint; callers that probe for an
// optional endpoint branch on it.
var errNotFound = errors.New("not found")

// get fetches path from e and returns the body of a 200 answer.
func (e endpoint) get(ctx context.Context, path string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, e.timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, e.base+path, nil)
	if err != nil {
		return nil, fmt.Errorf("build request for %s at %s: %w", e.what, e.addr, err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, fmt.Errorf("cannot reach %s at %s: %s (%s)", e.what, e.addr, reason(err, e.timeout), e.hint)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxBody))
	if err != nil {
		return nil, fmt.Errorf("read GET %s from %s at %s: %s", path, e.what, e.addr, reason(err, e.timeout))
	}
	switch {
	case resp.StatusCode == http.StatusNotFound:
		return nil, fmt.Errorf("%s at %s has no %s (404 Not Found): %w", e.what, e.addr, path, errNotFound)
	case resp.StatusCode != http.StatusOK:
		msg := strings.TrimSpace(string(body))
		if i := strings.IndexByte(msg, '\n'); i >= 0 {
			msg = msg[:i]
		}
		return nil, fmt.Errorf("%s at %s answered GET %s with %s: %s", e.what, e.addr, path, resp.Status, msg)
	}
	return body, nil
}

// reason is a transport error in a few words: the URL and the dial
// details the net package adds say nothing the message does not.
func reason(err error, timeout time.Duration) string {
	var dnsErr *net.DNSError
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		return "connection refused"
	case errors.Is(err, syscall.ECONNRESET):
		return "connection reset"
	case errors.Is(err, syscall.EHOSTUNREACH), errors.Is(err, syscall.ENETUNREACH):
		return "no route to host"
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, os.ErrDeadlineExceeded):
		return fmt.Sprintf("no answer within %s", timeout)
	case errors.Is(err, context.Canceled):
		return "interrupted"
	case errors.As(err, &dnsErr):
		return fmt.Sprintf("cannot resolve %s", dnsErr.Name)
	}
	var uerr *url.Error
	if errors.As(err, &uerr) {
		return uerr.Err.Error()
	}
	return err.Error()
}
