package hbone

import (
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Limits bound what peers can make a server hold. A peer holding a mesh
// identity is not thereby trusted: every connection, stream and
// unanswered frame it can open costs memory and a goroutine here, so each
// is capped, per connection, per peer identity and for the whole server.
// The zero value of a field means its default.
type Limits struct {
	// HandshakeTimeout bounds the TLS handshake and the HTTP/2 preface.
	HandshakeTimeout time.Duration // default 10 s
	// FirstStreamTimeout bounds the time from the preface to the first
	// stream: a client opens a connection because it has a stream to send.
	FirstStreamTimeout time.Duration // default 10 s
	// IdleTimeout closes a connection that has had no stream for this
	// long. It should exceed the clients' own (the pool's is 60 s), so
	// that the client, which knows when it will need the connection
	// again, is the one that closes it.
	IdleTimeout time.Duration // default 5 min

	// MaxStreamsPerConn is the SETTINGS_MAX_CONCURRENT_STREAMS advertised.
	// It counts running handlers, not open streams: a handler whose stream
	// the peer reset holds its slot until it returns.
	MaxStreamsPerConn int // default 1000
	// MaxStreams and MaxStreamsPerPeer cap running handlers over all
	// connections, and over those of one peer identity.
	MaxStreams        int // default 16384
	MaxStreamsPerPeer int // default 8192
	// MaxConns and MaxConnsPerPeer cap established connections.
	MaxConns        int // default 2048
	MaxConnsPerPeer int // default 512
	// MaxHandshakes caps connections in their TLS handshake or preface,
	// whose peers are not yet authenticated.
	MaxHandshakes int // default 256
}

// DefaultLimits returns the limits a zero Limits stands for.
func DefaultLimits() Limits {
	return Limits{
		HandshakeTimeout:   10 * time.Second,
		FirstStreamTimeout: 10 * time.Second,
		IdleTimeout:        5 * time.Minute,
		MaxStreamsPerConn:  1000,
		MaxStreams:         16384,
		MaxStreamsPerPeer:  8192,
		MaxConns:           2048,
		MaxConnsPerPeer:    512,
		MaxHandshakes:      256,
	}
}

// withDefaults fills zero fields and rejects negative ones.
func (l Limits) withDefaults() (Limits, error) {
	d := DefaultLimits()
	durs := []struct {
		name   string
		v, def *time.Duration
	}{
		{"HandshakeTimeout", &l.HandshakeTimeout, &d.HandshakeTimeout},
		{"FirstStreamTimeout", &l.FirstStreamTimeout, &d.FirstStreamTimeout},
		{"IdleTimeout", &l.IdleTimeout, &d.IdleTimeout},
	}
	for _, f := range durs {
		if *f.v < 0 {
			return l, fmt.Errorf("hbone: limits: %s is negative (%s)", f.name, *f.v)
		}
		if *f.v == 0 {
			*f.v = *f.def
		}
	}
	ints := []struct {
		name   string
		v, def *int
	}{
		{"MaxStreamsPerConn", &l.MaxStreamsPerConn, &d.MaxStreamsPerConn},
		{"MaxStreams", &l.MaxStreams, &d.MaxStreams},
		{"MaxStreamsPerPeer", &l.MaxStreamsPerPeer, &d.MaxStreamsPerPeer},
		{"MaxConns", &l.MaxConns, &d.MaxConns},
		{"MaxConnsPerPeer", &l.MaxConnsPerPeer, &d.MaxConnsPerPeer},
		{"MaxHandshakes", &l.MaxHandshakes, &d.MaxHandshakes},
	}
	for _, f := range ints {
		if *f.v < 0 {
			return l, fmt.Errorf("hbone: limits: %s is negative (%d)", f.name, *f.v)
		}
		if *f.v == 0 {
			*f.v = *f.def
		}
	}
	if l.MaxStreamsPerConn > 1<<31-1 {
		return l, fmt.Errorf("hbone: limits: MaxStreamsPerConn %d exceeds what SETTINGS can carry", l.MaxStreamsPerConn)
	}
	return l, nil
}

// Names of the limits, as reported to ServerOptions.OnLimit and in logs.
const (
	LimitHandshakes        = "handshakes"
	LimitConns             = "conns"
	LimitConnsPerPeer      = "conns_per_peer"
	LimitStreams           = "streams"
	LimitStreamsPerPeer    = "streams_per_peer"
	LimitStreamsPerConn    = "streams_per_conn"
	LimitControlFrames     = "control_frames"
	LimitHeaderBlock       = "header_block"
	LimitSettingsFrameSize = "settings_frame"
)

// peerUse is what one peer identity holds on a server.
type peerUse struct {
	conns, streams int
}

// limitLog logs a limit that bit at most once a second per limit, with
// how many times it bit since the last line: a peer hammering a limit must
// not turn the log into the next thing to exhaust.
type limitLog struct {
	log *slog.Logger
	mu  sync.Mutex
	// by limit name: when it was last logged, and hits since.
	last       map[string]time.Time
	suppressed map[string]int
}

func (l *limitLog) hit(limit string, peer spiffeid.ID, addr string) {
	now := time.Now()
	l.mu.Lock()
	if l.last == nil {
		l.last, l.suppressed = map[string]time.Time{}, map[string]int{}
	}
	if now.Sub(l.last[limit]) < time.Second {
		l.suppressed[limit]++
		l.mu.Unlock()
		return
	}
	n := l.suppressed[limit]
	l.last[limit] = now
	l.suppressed[limit] = 0
	l.mu.Unlock()
	args := []any{"limit", limit, "src.addr", addr, "suppressed", n}
	if !peer.IsZero() {
		args = append(args, "src.identity", peer.String())
	}
	l.log.Warn("hbone limit reached", args...)
}
