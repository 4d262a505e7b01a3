package hbone

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"golang.org/x/net/http2"

	"github.com/zmesh/zmesh/identity"
)

func TestLimitsDefaultsAndValidation(t *testing.T) {
	got, err := Limits{}.withDefaults()
	if err != nil || got != DefaultLimits() {
		t.Fatalf("zero Limits = %+v, %v; want the defaults", got, err)
	}
	got, err = Limits{MaxConnsPerPeer: 3, IdleTimeout: time.Second}.withDefaults()
	if err != nil || got.MaxConnsPerPeer != 3 || got.IdleTimeout != time.Second || got.MaxStreams != DefaultLimits().MaxStreams {
		t.Fatalf("partial Limits = %+v, %v", got, err)
	}
	for name, l := range map[string]Limits{
		"MaxStreamsPerPeer":  {MaxStreamsPerPeer: -1},
		"FirstStreamTimeout": {FirstStreamTimeout: -time.Second},
		"MaxStreamsPerConn":  {MaxStreamsPerConn: 1 << 32},
	} {
		if _, err := l.withDefaults(); err == nil || !strings.Contains(err.Error(), name) {
			t.Errorf("%+v: err = %v, want one naming %s", l, err, name)
		}
	}
	if _, err := NewServer(echoHandler, ServerOptions{Limits: Limits{MaxConns: -1}}); err == nil {
		t.Error("NewServer took a negative MaxConns")
	}
}

// limitedServer serves echo as bob with the given limits, counting the
// limits that bite and logging into a buffer.
type limitedServer struct {
	*testServer
	mu   sync.Mutex
	hits map[string]int
	log  *lockedBuffer
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *lockedBuffer) count(s string) int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return strings.Count(b.b.String(), s)
}

func (ls *limitedServer) hitCount(limit string) int {
	ls.mu.Lock()
	defer ls.mu.Unlock()
	return ls.hits[limit]
}

func startLimitedServer(t *testing.T, h Handler, l Limits) *limitedServer {
	t.Helper()
	ls := &limitedServer{hits: map[string]int{}, log: &lockedBuffer{}}
	opts := ServerOptions{
		Limits: l,
		Logger: slog.New(slog.NewTextHandler(ls.log, nil)),
		OnLimit: func(limit string) {
			ls.mu.Lock()
			ls.hits[limit]++
			ls.mu.Unlock()
		},
	}
	ls.testServer = serveHBONE(t, h, opts, listenLoopback(t), identity.ServerTLS(testPKI(t).src, bob, nil))
	return ls
}

// Slowloris: a peer that completes the preface and sends no stream is
// closed after FirstStreamTimeout, with GOAWAY(NO_ERROR).
func TestFirstStreamTimeout(t *testing.T) {
	ls := startLimitedServer(t, echoHandler, Limits{FirstStreamTimeout: 50 * time.Millisecond})
	a := attack(t, ls.addr)
	e := readToEnd(a.tc, a.fr, 10*time.Second)
	if !e.goAway || e.code != http2.ErrCodeNo || !errors.Is(e.readErr, io.EOF) {
		t.Fatalf("silent connection: GOAWAY %v %v, then %v; want GOAWAY(NO_ERROR) and the end", e.goAway, e.code, e.readErr)
	}
}

// Slowloris before the handshake: a TCP connection that never sends a
// ClientHello is closed after HandshakeTimeout.
func TestHandshakeTimeout(t *testing.T) {
	ls := startLimitedServer(t, echoHandler, Limits{HandshakeTimeout: 50 * time.Millisecond})
	nc, err := net.Dial("tcp", ls.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	nc.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, err = nc.Read(make([]byte, 1))
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatal("server kept a connection that never began its handshake")
	}
}

// A connection whose streams are all done is closed after IdleTimeout;
// one with a stream open is not.
func TestIdleTimeout(t *testing.T) {
	ls := startLimitedServer(t, echoHandler, Limits{IdleTimeout: 50 * time.Millisecond})
	cc, err := dialClient(t, ls.addr, alice, bob)
	if err != nil {
		t.Fatal(err)
	}
	st, err := cc.Connect(context.Background(), target("10.0.0.1:80"))
	if err != nil {
		t.Fatal(err)
	}
	// Many idle timeouts pass while the stream is open.
	time.Sleep(300 * time.Millisecond)
	if got := exchange(t, st, "still here"); got != "still here" {
		t.Fatalf("echo %q", got)
	}
	st.Close()
	select {
	case <-cc.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("idle connection not closed")
	}
}

// connectOnce opens a connection as `as` and one stream on it; the stream
// stays open until the test ends.
func connectOnce(t *testing.T, addr string, as spiffeid.ID) (*ClientConn, error) {
	t.Helper()
	cc, err := dialClient(t, addr, as, bob)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	st, err := cc.Connect(ctx, target("10.0.0.1:80"))
	if err != nil {
		return cc, err
	}
	t.Cleanup(func() { st.Close() })
	return cc, nil
}

// Connections are capped per peer identity and per server; a refused one
// gets GOAWAY(ENHANCE_YOUR_CALM), counted and logged.
func TestConnLimits(t *testing.T) {
	ls := startLimitedServer(t, echoHandler, Limits{MaxConnsPerPeer: 2, MaxConns: 3})
	first, err := connectOnce(t, ls.addr, alice)
	if err != nil {
		t.Fatalf("alice's first connection: %v", err)
	}
	if _, err := connectOnce(t, ls.addr, alice); err != nil {
		t.Fatalf("alice's second connection: %v", err)
	}
	if _, err := connectOnce(t, ls.addr, alice); err == nil {
		t.Fatal("alice's third connection served, limit per peer 2")
	}
	if _, err := connectOnce(t, ls.addr, carol); err != nil {
		t.Fatalf("carol's connection, refused for alice's: %v", err)
	}
	if _, err := connectOnce(t, ls.addr, bob); err == nil {
		t.Fatal("a fourth connection served, limit 3")
	}
	if ls.hitCount(LimitConnsPerPeer) != 1 || ls.hitCount(LimitConns) != 1 {
		t.Errorf("limit hits = %v", ls.hits)
	}
	if n := ls.log.count("limit=" + LimitConnsPerPeer); n != 1 {
		t.Errorf("%d log lines for %s, want 1:\n%s", n, LimitConnsPerPeer, ls.log.b.String())
	}
	// Once alice's first connection is gone, she may open another.
	first.Close()
	waitUntil(t, func() bool { ls.srv.mu.Lock(); defer ls.srv.mu.Unlock(); return ls.srv.peers[alice].conns == 1 })
	if _, err := connectOnce(t, ls.addr, alice); err != nil {
		t.Fatalf("alice's connection after one closed: %v", err)
	}
}

// Streams (running handlers) are capped per peer identity over all its
// connections, and per server; a refused stream gets REFUSED_STREAM, and
// a limit hit many times in a second is logged once.
func TestStreamLimits(t *testing.T) {
	release := make(chan struct{})
	var once sync.Once
	free := func() { once.Do(func() { close(release) }) }
	defer free()
	ls := startLimitedServer(t, func(ctx context.Context, r *Request, s *Stream) {
		s.Respond(200)
		select {
		case <-release:
		case <-ctx.Done():
		}
	}, Limits{MaxStreamsPerPeer: 3, MaxStreams: 4})
	a1, err := dialClient(t, ls.addr, alice, bob)
	if err != nil {
		t.Fatal(err)
	}
	a2, err := dialClient(t, ls.addr, alice, bob)
	if err != nil {
		t.Fatal(err)
	}
	c1, err := dialClient(t, ls.addr, carol, bob)
	if err != nil {
		t.Fatal(err)
	}
	open := func(cc *ClientConn) error {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		st, err := cc.Connect(ctx, target("10.0.0.1:80"))
		if err == nil {
			t.Cleanup(func() { st.Close() })
		}
		return err
	}
	refused := func(err error) bool {
		var re *ResetError
		return errors.As(err, &re) && re.Code == http2.ErrCodeRefusedStream
	}
	for i, cc := range []*ClientConn{a1, a1, a2} {
		if err := open(cc); err != nil {
			t.Fatalf("alice's stream %d: %v", i+1, err)
		}
	}
	for range 5 {
		if err := open(a2); !refused(err) {
			t.Fatalf("alice's fourth stream: %v, want REFUSED_STREAM (3 per peer)", err)
		}
	}
	if err := open(c1); err != nil {
		t.Fatalf("carol's stream: %v", err)
	}
	if err := open(c1); !refused(err) {
		t.Fatalf("the server's fifth stream: %v, want REFUSED_STREAM (4 per server)", err)
	}
	if ls.hitCount(LimitStreamsPerPeer) != 5 || ls.hitCount(LimitStreams) != 1 {
		t.Errorf("limit hits = %v", ls.hits)
	}
	if n := ls.log.count("limit=" + LimitStreamsPerPeer); n < 1 || n > 2 {
		t.Errorf("%d log lines for 5 hits of %s in a moment, want 1:\n%s", n, LimitStreamsPerPeer, ls.log.b.String())
	}
}

// Connections in their handshake are capped: their peers are not yet
// known, and one that never finishes holds its slot until HandshakeTimeout.
func TestHandshakeLimit(t *testing.T) {
	ls := startLimitedServer(t, echoHandler, Limits{MaxHandshakes: 1})
	slow, err := net.Dial("tcp", ls.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer slow.Close()
	waitUntil(t, func() bool { ls.srv.mu.Lock(); defer ls.srv.mu.Unlock(); return ls.srv.opening == 1 })
	if _, err := dialClient(t, ls.addr, alice, bob); err == nil {
		t.Fatal("a second handshake was served, limit 1")
	}
	if ls.hitCount(LimitHandshakes) != 1 {
		t.Errorf("limit hits = %v", ls.hits)
	}
	slow.Close()
	waitUntil(t, func() bool { ls.srv.mu.Lock(); defer ls.srv.mu.Unlock(); return ls.srv.opening == 0 })
	if _, err := connectOnce(t, ls.addr, alice); err != nil {
		t.Fatalf("handshake after the slow one left: %v", err)
	}
}

// The header guard follows frame boundaries however the bytes are cut.
func TestHeaderGuard(t *testing.T) {
	var b bytes.Buffer
	fr := http2.NewFramer(&b, nil)
	fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: []byte{0x82}})
	for range maxContinuations - 1 {
		fr.WriteContinuation(1, false, []byte{0x82})
	}
	fr.WriteData(1, false, make([]byte, 100)) // a frame boundary check only
	okInput := append([]byte(nil), b.Bytes()...)
	b.Reset()
	fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 3, BlockFragment: []byte{0x82}})
	for range maxContinuations + 1 {
		fr.WriteContinuation(3, false, nil)
	}
	tooMany := append([]byte(nil), b.Bytes()...)
	b.Reset()
	fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 5, BlockFragment: make([]byte, maxHeaderBlock+1), EndHeaders: true})
	tooLarge := append([]byte(nil), b.Bytes()...)

	for _, tc := range []struct {
		name  string
		input []byte
		fail  bool
	}{
		{"within bounds", okInput, false},
		{"too many CONTINUATIONs", tooMany, true},
		{"too large", tooLarge, true},
	} {
		for _, chunk := range []int{1, 7, 9, 4096} {
			g := &headerGuard{r: &chunkReader{b: tc.input, n: chunk}}
			_, err := io.Copy(io.Discard, g)
			var hb *errHeaderBlock
			if got := errors.As(err, &hb); got != tc.fail {
				t.Errorf("%s in %d-byte reads: err = %v", tc.name, chunk, err)
			}
		}
	}
}

type chunkReader struct {
	b []byte
	n int
}

func (r *chunkReader) Read(p []byte) (int, error) {
	if len(r.b) == 0 {
		return 0, io.EOF
	}
	n := copy(p[:min(len(p), r.n)], r.b)
	r.b = r.b[n:]
	return n, nil
}
