package hbone

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"net"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/zmesh/zmesh/identity"
)

// These tests attack the server (and the client) as a peer holding a mesh
// identity would, with hand-made frames over a real TLS connection, and
// assert what the attack can make us hold: heap, goroutines, handlers.

// heapInUse returns the live heap after a full collection.
func heapInUse() int64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return int64(m.HeapAlloc)
}

// attacker is a raw HTTP/2 client connection: TLS as alice, the preface
// and an empty SETTINGS sent.
type attacker struct {
	tc *tls.Conn
	bw *bufio.Writer
	fr *http2.Framer
}

func attack(t *testing.T, addr string) *attacker {
	t.Helper()
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	// A small receive buffer: what the attacker does not read soon
	// blocks the server's writer, as over a real network.
	nc.(*net.TCPConn).SetReadBuffer(16 << 10)
	tc := tls.Client(nc, identity.ClientTLS(testPKI(t).src, alice, []spiffeid.ID{bob}))
	t.Cleanup(func() { tc.Close() })
	if err := tc.Handshake(); err != nil {
		t.Fatal(err)
	}
	a := &attacker{tc: tc, bw: bufio.NewWriterSize(tc, 64<<10)}
	a.fr = http2.NewFramer(a.bw, tc)
	a.fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	a.bw.WriteString(http2.ClientPreface)
	a.fr.WriteSettings()
	if err := a.bw.Flush(); err != nil {
		t.Fatal(err)
	}
	return a
}

// startFloodServer is startServer whose accepted sockets have small send
// buffers: what a peer does not read soon blocks the server's writer after
// kilobytes, as over a real network, instead of after the megabytes
// loopback buffers, so a flood overflows the same way in every run.
func startFloodServer(t *testing.T, h Handler) *testServer {
	t.Helper()
	srv, err := NewServer(h, ServerOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ts := &testServer{srv: srv, addr: ln.Addr().String(), ln: ln}
	serveOn(srv, smallBuffers{ln}, identity.ServerTLS(testPKI(t).src, bob, nil))
	t.Cleanup(func() {
		ln.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
	})
	return ts
}

type smallBuffers struct{ net.Listener }

func (l smallBuffers) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		c.(*net.TCPConn).SetWriteBuffer(16 << 10)
	}
	return c, err
}

// connectBlock is the HPACK block of a valid CONNECT.
func connectBlock() []byte {
	var hb bytes.Buffer
	enc := hpack.NewEncoder(&hb)
	enc.WriteField(hpack.HeaderField{Name: ":method", Value: "CONNECT"})
	enc.WriteField(hpack.HeaderField{Name: ":authority", Value: "10.0.0.1:80"})
	return hb.Bytes()
}

// ending is how a connection ended, seen from the other side.
type ending struct {
	goAway  bool
	code    http2.ErrCode
	frames  int   // frames read before the end
	readErr error // what ended the reading
}

// readToEnd reads frames until the connection ends or d passes, and
// reports the last GOAWAY. It answers nothing.
func readToEnd(conn net.Conn, fr *http2.Framer, d time.Duration) ending {
	return readToEndAcked(conn, fr, d, nil)
}

// pingDone is the payload of the PING an attacker sends behind its frames:
// its ACK says the server has read them all.
var pingDone = [8]byte{'d', 'o', 'n', 'e'}

// readToEndAcked is readToEnd that also closes acked (if not nil) when
// the ACK of a pingDone PING arrives.
func readToEndAcked(conn net.Conn, fr *http2.Framer, d time.Duration, acked chan struct{}) ending {
	conn.SetReadDeadline(time.Now().Add(d))
	var e ending
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			e.readErr = err
			return e
		}
		e.frames++
		switch f := f.(type) {
		case *http2.GoAwayFrame:
			e.goAway, e.code = true, f.ErrCode
		case *http2.PingFrame:
			if f.IsAck() && f.Data == pingDone && acked != nil {
				close(acked)
				acked = nil
			}
		}
	}
}

func (e ending) closedCalm() bool {
	var ne net.Error
	timedOut := errors.As(e.readErr, &ne) && ne.Timeout()
	return e.goAway && e.code == http2.ErrCodeEnhanceYourCalm && !timedOut
}

// floodSize is n, or a tenth of it under the race detector: the server
// drains a flood for abortLinger at most, and the detector slows it.
func floodSize(n int) int {
	if raceEnabled {
		return n / 10
	}
	return n
}

// flood writes n frames made by write, without reading, and returns once
// all are written or writing failed, with how many went.
func flood(a *attacker, n int, write func(fr *http2.Framer)) (sent int) {
	// Writing stops when the server closes; it may also stop reading
	// while it closes, for a few seconds at most.
	a.tc.SetWriteDeadline(time.Now().Add(30 * time.Second))
	defer a.tc.SetWriteDeadline(time.Time{})
	for i := range n {
		write(a.fr)
		if a.bw.Buffered() > 32<<10 || i == n-1 {
			if a.bw.Flush() != nil {
				return i
			}
		}
	}
	return n
}

// waitGoroutines waits until at most base goroutines run (plus slack for
// the runtime's own), and fails if they never do.
func waitGoroutines(t *testing.T, base int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for runtime.NumGoroutine() > base+2 {
		if time.Now().After(deadline) {
			t.Fatalf("%d goroutines left, %d before the attack", runtime.NumGoroutine(), base)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// 2 M PINGs (or SETTINGS, each owing an ACK) from a peer that reads none
// of the ACKs: the server queues at most maxQueuedCtrl of them, then ends
// the connection with GOAWAY(ENHANCE_YOUR_CALM), which the peer gets once
// it reads.
func TestPingFloodIsCutOff(t *testing.T) {
	controlFlood(t, "PING", func(fr *http2.Framer) { fr.WritePing(false, [8]byte{1}) })
}

func TestSettingsFloodIsCutOff(t *testing.T) {
	controlFlood(t, "SETTINGS", func(fr *http2.Framer) { fr.WriteSettings() })
}

func controlFlood(t *testing.T, kind string, write func(fr *http2.Framer)) {
	ts := startFloodServer(t, echoHandler)
	a := attack(t, ts.addr)
	base, heap0 := runtime.NumGoroutine(), heapInUse()
	n := floodSize(2_000_000)
	sent := flood(a, n, write)
	grown := heapInUse() - heap0
	end := readToEnd(a.tc, a.fr, 20*time.Second)
	t.Logf("%s flood: %d of %d sent; heap grew %.1f MB; read %d frames, then %v (GOAWAY %v %v)",
		kind, sent, n, float64(grown)/1e6, end.frames, end.readErr, end.goAway, end.code)
	if grown > 8<<20 {
		t.Errorf("heap grew %.1f MB under a %s flood, want < 8 MB", float64(grown)/1e6, kind)
	}
	if !end.closedCalm() {
		t.Errorf("connection not closed with GOAWAY(ENHANCE_YOUR_CALM): GOAWAY %v %v, then %v", end.goAway, end.code, end.readErr)
	}
	a.tc.Close()
	waitGoroutines(t, base)
}

// handlerGauge counts the handlers running and the most that ever ran at
// once.
type handlerGauge struct {
	running, peak, total, cancelled atomic.Int64
}

func (g *handlerGauge) enter() {
	g.total.Add(1)
	n := g.running.Add(1)
	for {
		p := g.peak.Load()
		if n <= p || g.peak.CompareAndSwap(p, n) {
			return
		}
	}
}

func (g *handlerGauge) leave() { g.running.Add(-1) }

// Rapid reset (CVE-2023-44487): 20 000 CONNECTs each reset at once. A
// reset cancels the handler's context, so handlers that honour it end;
// and since a handler keeps its slot until it returns, never more run than
// the advertised SETTINGS_MAX_CONCURRENT_STREAMS.
func TestRapidResetCancelsHandlers(t *testing.T) {
	var g handlerGauge
	release := make(chan struct{})
	defer close(release)
	ts := startServer(t, func(ctx context.Context, r *Request, s *Stream) {
		g.enter()
		defer g.leave()
		select {
		case <-ctx.Done():
			g.cancelled.Add(1)
		case <-release:
		}
	}, bob, nil)
	a := attack(t, ts.addr)
	base := runtime.NumGoroutine()
	ended := make(chan ending, 1)
	acked := make(chan struct{})
	go func() { ended <- readToEndAcked(a.tc, a.fr, 60*time.Second, acked) }()
	block := connectBlock()
	const pairs = 20_000
	id := uint32(1)
	flood(a, pairs, func(fr *http2.Framer) {
		fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: block, EndHeaders: true})
		fr.WriteRSTStream(id, http2.ErrCodeCancel)
		id += 2
	})
	a.fr.WritePing(false, pingDone)
	a.bw.Flush()
	// Once the server has read everything (or cut the connection off,
	// which ends the handlers too), the handlers of reset streams end by
	// themselves.
	var e ending
	select {
	case <-acked:
	case e = <-ended:
	}
	deadline := time.Now().Add(20 * time.Second)
	for g.running.Load() > 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	goroutines := runtime.NumGoroutine() - base
	t.Logf("rapid reset: %d pairs; %d handlers started, at most %d at once, %d still running (%d goroutines over the baseline), %d ended by their context",
		pairs, g.total.Load(), g.peak.Load(), g.running.Load(), goroutines, g.cancelled.Load())
	limit := int64(DefaultLimits().MaxStreamsPerConn)
	if p := g.peak.Load(); p > limit {
		t.Errorf("%d handlers ran at once, limit %d", p, limit)
	}
	if r := g.running.Load(); r > 0 {
		t.Errorf("%d handlers of reset streams still running: their context was not cancelled", r)
	}
	if g.total.Load() == 0 {
		t.Error("no handler ran")
	}
	a.tc.Close()
	if !e.goAway {
		e = <-ended
	}
	if e.goAway && e.code != http2.ErrCodeEnhanceYourCalm {
		t.Errorf("connection ended with GOAWAY %v", e.code)
	}
}

// Handlers that do not notice the reset keep their slots: the peer's
// streams beyond the limit are refused, and a peer that keeps opening
// them is cut off with GOAWAY(ENHANCE_YOUR_CALM).
func TestRapidResetAgainstSlowHandlers(t *testing.T) {
	var g handlerGauge
	release := make(chan struct{})
	var once sync.Once
	free := func() { once.Do(func() { close(release) }) }
	defer free()
	ts := startServer(t, func(ctx context.Context, r *Request, s *Stream) {
		g.enter()
		defer g.leave()
		<-release
	}, bob, nil)
	a := attack(t, ts.addr)
	base := runtime.NumGoroutine()
	ended := make(chan ending, 1)
	go func() { ended <- readToEnd(a.tc, a.fr, 60*time.Second) }()
	block := connectBlock()
	const pairs = 20_000
	id := uint32(1)
	sent := flood(a, pairs, func(fr *http2.Framer) {
		fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: block, EndHeaders: true})
		fr.WriteRSTStream(id, http2.ErrCodeCancel)
		id += 2
	})
	a.fr.WritePing(false, pingDone)
	a.bw.Flush()
	var e ending
	select {
	case e = <-ended:
	case <-time.After(20 * time.Second):
		// Old behaviour: the connection stays; stop reading.
		a.tc.SetReadDeadline(time.Now())
		e = <-ended
	}
	goroutines := runtime.NumGoroutine() - base
	t.Logf("rapid reset, slow handlers: %d of %d pairs sent; %d handlers started, at most %d at once (%d goroutines over the baseline); GOAWAY %v %v, then %v",
		sent, pairs, g.total.Load(), g.peak.Load(), goroutines, e.goAway, e.code, e.readErr)
	limit := int64(DefaultLimits().MaxStreamsPerConn)
	if p := g.peak.Load(); p > limit {
		t.Errorf("%d handlers ran at once, limit %d", p, limit)
	}
	if !e.closedCalm() {
		t.Errorf("peer exceeding the stream limit not cut off with GOAWAY(ENHANCE_YOUR_CALM): GOAWAY %v %v, then %v", e.goAway, e.code, e.readErr)
	}
	free()
	a.tc.Close()
	waitGoroutines(t, base)
}

// CONTINUATION flood (CVE-2023-45288): a HEADERS frame that never ends,
// followed by CONTINUATION frames. The frame codec bounds what it decodes
// but reads empty CONTINUATIONs forever; the server must end the
// connection.
func TestContinuationFloodIsCutOff(t *testing.T) {
	ts := startServer(t, echoHandler, bob, nil)
	a := attack(t, ts.addr)
	base, heap0 := runtime.NumGoroutine(), heapInUse()
	ended := make(chan ending, 1)
	go func() { ended <- readToEnd(a.tc, a.fr, 60*time.Second) }()
	block := connectBlock()
	a.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: block[:1]})
	n := floodSize(200_000)
	sent := flood(a, n, func(fr *http2.Framer) { fr.WriteContinuation(1, false, nil) })
	grown := heapInUse() - heap0
	var e ending
	select {
	case e = <-ended:
	case <-time.After(20 * time.Second):
		a.tc.SetReadDeadline(time.Now())
		e = <-ended
	}
	t.Logf("CONTINUATION flood: %d of %d sent; heap grew %.1f MB; GOAWAY %v %v, then %v", sent, n, float64(grown)/1e6, e.goAway, e.code, e.readErr)
	if !e.closedCalm() {
		t.Errorf("connection not closed with GOAWAY(ENHANCE_YOUR_CALM): GOAWAY %v %v, then %v", e.goAway, e.code, e.readErr)
	}
	if grown > 4<<20 {
		t.Errorf("heap grew %.1f MB, want < 4 MB", float64(grown)/1e6)
	}
	a.tc.Close()
	waitGoroutines(t, base)
}

// One SETTINGS frame repeating INITIAL_WINDOW_SIZE thousands of times
// would walk every open stream for each: more than 100 settings in a frame
// end the connection.
func TestOversizedSettingsFrameIsCutOff(t *testing.T) {
	ts := startServer(t, echoHandler, bob, nil)
	a := attack(t, ts.addr)
	settings := make([]http2.Setting, 10_000)
	for i := range settings {
		settings[i] = http2.Setting{ID: http2.SettingInitialWindowSize, Val: uint32(65535 + i%2)}
	}
	a.fr.WriteSettings(settings...)
	a.bw.Flush()
	e := readToEnd(a.tc, a.fr, 20*time.Second)
	if !e.closedCalm() {
		t.Errorf("SETTINGS with 10 000 entries: GOAWAY %v %v, then %v; want GOAWAY(ENHANCE_YOUR_CALM)", e.goAway, e.code, e.readErr)
	}
}
