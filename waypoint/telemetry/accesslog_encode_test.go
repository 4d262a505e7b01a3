package telemetry

import (
	"bytes"
	"encoding/json"
	"net/netip"
	"strconv"
	"sync"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"time"
)

// TestAccessLogEncodingMatchesJSON: appendEntry writes what encoding/json
// writes for the line's struct (the log's format before it was written
// by hand), for values that need escaping too: quotes, backslashes,
// control characters, HTML characters, non-ASCII, invalid UTF-8, the line
// and paragraph separators.
func TestAccessLogEncodingMatchesJSON(t *testing.T) {
	odd := []string{
		"", "plain", `q"uote`, `back\slash`, "tab\tnl\ncr\rbs\bff\f", "nul\x00bell\x07esc\x1b", "del\x7f",
		"<script>&amp;</script>", "ünïcödé ☃ 𝄞", "bad\xffutf8\xc3", "sep\u2028par\u2029", "   ", "/a?b=c&d=e#f",
		"14", "007", "-1", "2147483648", "99999999999999999999",
	}
	rec := func(s string) *Record {
		return &Record{
			Start: time.Date(2026, 12, 5, 21, 4, 5, 678_900_000, time.FixedZone("x", 3600)), Duration: 1500 * time.Microsecond,
			Protocol: s, Method: s, Path: s, Authority: s, GRPCStatus: s, UserAgent: s, RequestID: s, ResponseCode: 503, ResponseFlags: s,
			BytesReceived: -1, BytesSent: 1 << 40, RouteName: s, UpstreamCluster: s, PolicyName: s, DestinationService: s,
			UpstreamHost: netip.MustParseAddrPort("[fe80::1%eth\"0]:8080"),
			Source:       Peer{Principal: s, Addr: netip.MustParseAddrPort("10.1.1.4:43210")},
			Destination:  Peer{Principal: s},
		}
	}
	recs := []*Record{request(), {}}
	for _, s := range odd {
		recs = append(recs, rec(s))
	}
	for _, r := range recs {
		var want bytes.Buffer
		enc := json.NewEncoder(&want)
		enc.SetEscapeHTML(false)
		if err := enc.Encode(newEntry(r)); err != nil {
			t.Fatal(err)
		}
		if got := appendEntry(nil, r); string(got) != want.String() {
			t.Errorf("line:\n%s\nwant (encoding/json):\n%s", got, want.String())
		}
	}
}

// entry is the access-log line as encoding/json wrote it from a struct,
// the reference appendEntry is held to.
type entry struct {
	StartTime              string  `json:"start_time"`
	RouteName              *string `json:"route_name"`
	Method                 *string `json:"method"`
	Path                   *string `json:"path"`
	Protocol               string  `json:"protocol"`
	ResponseCode           int     `json:"response_code"`
	ResponseFlags          string  `json:"response_flags"`
	GRPCStatus             *uint64 `json:"grpc_status"`
	BytesReceived          int64   `json:"bytes_received"`
	BytesSent              int64   `json:"bytes_sent"`
	Duration               int64   `json:"duration"`
	UserAgent              *string `json:"user_agent"`
	RequestID              *string `json:"request_id"`
	Authority              *string `json:"authority"`
	UpstreamHost           *string `json:"upstream_host"`
	UpstreamCluster        *string `json:"upstream_cluster"`
	DownstreamRemoteAddr   *string `json:"downstream_remote_address"`
	DownstreamPeerURISAN   *string `json:"downstream_peer_uri_san"`
	UpstreamPeerURISAN     *string `json:"upstream_peer_uri_san"`
	AuthorizationPolicy    *string `json:"authorization_policy"`
	DestinationServiceHost *string `json:"destination_service"`
}

func opt(s string) *string {
	if s == "" {
		return nil
	}
	return &s
}

func newEntry(r *Record) entry {
	e := entry{
		StartTime:              r.Start.UTC().Format(envoyTime),
		RouteName:              opt(r.RouteName),
		Method:                 opt(r.Method),
		Path:                   opt(r.Path),
		Protocol:               r.Protocol,
		ResponseCode:           r.ResponseCode,
		ResponseFlags:          r.ResponseFlags,
		BytesReceived:          r.BytesReceived,
		BytesSent:              r.BytesSent,
		Duration:               r.Duration.Milliseconds(),
		UserAgent:              opt(r.UserAgent),
		RequestID:              opt(r.RequestID),
		Authority:              opt(r.Authority),
		UpstreamCluster:        opt(r.UpstreamCluster),
		DownstreamPeerURISAN:   opt(r.Source.Principal),
		UpstreamPeerURISAN:     opt(r.Destination.Principal),
		AuthorizationPolicy:    opt(r.PolicyName),
		DestinationServiceHost: opt(r.DestinationService),
	}
	if n, err := strconv.ParseUint(r.GRPCStatus, 10, 31); err == nil {
		e.GRPCStatus = &n
	}
	if e.ResponseFlags == "" {
		e.ResponseFlags = "-"
	}
	if r.UpstreamHost.IsValid() {
		e.UpstreamHost = opt(r.UpstreamHost.String())
	}
	if r.Source.Addr.IsValid() {
		e.DownstreamRemoteAddr = opt(r.Source.Addr.String())
	}
	return e
}

// countingWriter counts its writes and lines.
type countingWriter struct {
	mu            sync.Mutex
	writes, lines int
}

func (w *countingWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.writes++
	w.lines += bytes.Count(p, []byte("\n"))
	return len(p), nil
}

// TestAccessLogBatchesWrites: records arriving one at a time, each after
// the writer has caught up with the one before, are written in a few
// batched writes, not one write (a system call for a file or stdout) per
// line; every line is written.
func TestAccessLogBatchesWrites(t *testing.T) {
	w := &countingWriter{}
	l, err := NewAccessLog(w, 0, prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	const n = 20
	for range n {
		l.Observe(request())
		time.Sleep(time.Millisecond)
	}
	l.Close()
	if w.lines != n {
		t.Fatalf("%d lines written, want %d", w.lines, n)
	}
	// The records span some 20 ms here, more on a loaded machine; each
	// line written on its own makes n writes.
	if w.writes > n/2 {
		t.Errorf("%d writes for %d lines, want them batched", w.writes, n)
	}
}
