package hbone

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"net"
	"path/filepath"
	"runtime"
	"strings"
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
	return attackOn(t, nc)
}

// attackOn is attack on a connected socket.
func attackOn(t *testing.T, nc net.Conn) *attacker {
	t.Helper()
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

// A flood is fought over unix sockets with small send buffers. Each side
// then holds at most kilobytes the other has not read, so a peer that does
// not read blocks the writer at once, and a flood reaches the server as
// fast as it reads and no faster. Loopback TCP cannot be made to do both:
// its buffers grow to megabytes, and a receive buffer set small makes the
// kernel drop loopback's 64 KiB segments and back off for up to minutes.

// listenUnix listens on a unix socket in the test's directory.
func listenUnix(t *testing.T) net.Listener {
	t.Helper()
	ln, err := net.Listen("unix", filepath.Join(t.TempDir(), "hbone.sock"))
	if err != nil {
		t.Fatal(err)
	}
	return ln
}

// dialFlood dials a listenUnix socket with a small send buffer.
func dialFlood(t *testing.T, addr string) net.Conn {
	t.Helper()
	nc, err := net.Dial("unix", addr)
	if err != nil {
		t.Fatal(err)
	}
	nc.(*net.UnixConn).SetWriteBuffer(floodBuffer)
	return nc
}

const floodBuffer = 16 << 10

// startFloodServer is startServer on a unix socket whose accepted sockets
// have small send buffers, and which reports each limit it enforces on
// limited. A connection with no stream is kept for longer than any flood
// takes, so that only the flood's bound can end it.
func startFloodServer(t *testing.T, h Handler) (ts *testServer, limited <-chan string) {
	t.Helper()
	limits := make(chan string, 16)
	opts := ServerOptions{
		Limits:  Limits{FirstStreamTimeout: 5 * time.Minute},
		OnLimit: reportLimit(limits),
	}
	ts = serveHBONE(t, h, opts, smallBuffers{listenUnix(t)}, identity.ServerTLS(testPKI(t).src, bob, nil))
	return ts, limits
}

// reportLimit is an OnLimit that sends the limit's name on limits without
// ever blocking.
func reportLimit(limits chan<- string) func(string) {
	return func(limit string) {
		select {
		case limits <- limit:
		default:
		}
	}
}

type smallBuffers struct{ net.Listener }

func (l smallBuffers) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		c.(interface{ SetWriteBuffer(int) error }).SetWriteBuffer(floodBuffer)
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

// Bounds of floodUntilCut: ten times what an unprotected victim needs to
// hold tens of megabytes, and time enough to send it under the race
// detector on a loaded machine.
const (
	maxFlood  = 2_000_000
	floodTime = 60 * time.Second
)

// floodUntilCut writes frames made by write, without reading, until the
// victim reports through limited that it cut the connection off, writing
// fails, or maxFlood frames or floodTime went. How fast the victim reads
// does not matter: the flood lasts until the victim's bound trips, never
// ending early in buffers it has not read yet. A victim without the bound
// never reports, and gets the whole flood.
func floodUntilCut(a *attacker, limited <-chan string, write func(fr *http2.Framer)) (sent int, limit string) {
	deadline := time.Now().Add(floodTime)
	// The victim reads and drops the input of a connection it cut off;
	// the deadline bounds a write to one that stopped reading.
	a.tc.SetWriteDeadline(deadline)
	defer a.tc.SetWriteDeadline(time.Time{})
	for sent < maxFlood {
		write(a.fr)
		sent++
		if a.bw.Buffered() < 32<<10 {
			continue
		}
		if a.bw.Flush() != nil {
			return sent, ""
		}
		select {
		case limit := <-limited:
			return sent, limit
		default:
		}
		if time.Now().After(deadline) {
			return sent, ""
		}
	}
	a.bw.Flush()
	select {
	case limit = <-limited:
	default:
	}
	return sent, limit
}

// goroutineMark is the set of goroutines running when it was taken.
type goroutineMark map[string]bool

func markGoroutines() goroutineMark {
	m := goroutineMark{}
	for id := range goroutineStacks() {
		m[id] = true
	}
	return m
}

// goroutineStacks returns the stack of every goroutine, by id.
func goroutineStacks() map[string]string {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	stacks := map[string]string{}
	for _, g := range strings.Split(string(buf), "\n\n") {
		// "goroutine 42 [running]:" heads each.
		head, _, _ := strings.Cut(g, " [")
		if id, ok := strings.CutPrefix(head, "goroutine "); ok {
			stacks[id] = g
		}
	}
	return stacks
}

// since returns the stacks of the goroutines started after m was taken and
// still running. Goroutine ids are never reused, so goroutines of earlier
// tests ending meanwhile neither hide one nor count as one.
func (m goroutineMark) since() []string {
	var started []string
	for id, stack := range goroutineStacks() {
		if !m[id] {
			started = append(started, stack)
		}
	}
	return started
}

// waitGoroutines waits until every goroutine started after m has ended,
// and fails naming those that never do.
func waitGoroutines(t *testing.T, m goroutineMark) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		started := m.since()
		if len(started) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d goroutines started during the attack still run:\n%s", len(started), strings.Join(started, "\n\n"))
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// 2 M PINGs (or SETTINGS, each owing an ACK) at most, from a peer that
// reads none of the ACKs: the server queues at most maxQueuedCtrl of them,
// then ends the connection with GOAWAY(ENHANCE_YOUR_CALM), which the peer
// gets once it reads.
func TestPingFloodIsCutOff(t *testing.T) {
	controlFlood(t, "PING", func(fr *http2.Framer) { fr.WritePing(false, [8]byte{1}) })
}

func TestSettingsFloodIsCutOff(t *testing.T) {
	controlFlood(t, "SETTINGS", func(fr *http2.Framer) { fr.WriteSettings() })
}

func controlFlood(t *testing.T, kind string, write func(fr *http2.Framer)) {
	ts, limited := startFloodServer(t, echoHandler)
	a := attackOn(t, dialFlood(t, ts.addr))
	mark, heap0 := markGoroutines(), heapInUse()
	sent, limit := floodUntilCut(a, limited, write)
	grown := heapInUse() - heap0
	end := readToEnd(a.tc, a.fr, 20*time.Second)
	t.Logf("%s flood: %d sent until the server reported %q; heap grew %.1f MB; read %d frames, then %v (GOAWAY %v %v)",
		kind, sent, limit, float64(grown)/1e6, end.frames, end.readErr, end.goAway, end.code)
	if limit != LimitControlFrames {
		t.Errorf("server reported limit %q after %d %s frames, want %q", limit, sent, kind, LimitControlFrames)
	}
	if grown > 8<<20 {
		t.Errorf("heap grew %.1f MB under a %s flood, want < 8 MB", float64(grown)/1e6, kind)
	}
	if !end.closedCalm() {
		t.Errorf("connection not closed with GOAWAY(ENHANCE_YOUR_CALM): GOAWAY %v %v, then %v", end.goAway, end.code, end.readErr)
	}
	a.tc.Close()
	waitGoroutines(t, mark)
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

// rapidReset sends pairs CONNECTs each reset at once, then a pingDone
// PING, and returns how many pairs went.
func rapidReset(a *attacker, pairs int) (sent int) {
	block := connectBlock()
	id := uint32(1)
	sent = flood(a, pairs, func(fr *http2.Framer) {
		fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: block, EndHeaders: true})
		fr.WriteRSTStream(id, http2.ErrCodeCancel)
		id += 2
	})
	a.fr.WritePing(false, pingDone)
	a.bw.Flush()
	return sent
}

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
	mark := markGoroutines()
	ended := make(chan ending, 1)
	acked := make(chan struct{})
	go func() { ended <- readToEndAcked(a.tc, a.fr, 60*time.Second, acked) }()
	const pairs = 20_000
	rapidReset(a, pairs)
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
	goroutines := len(mark.since())
	t.Logf("rapid reset: %d pairs; %d handlers started, at most %d at once, %d still running (%d goroutines started since the attack began), %d ended by their context",
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
	mark := markGoroutines()
	ended := make(chan ending, 1)
	go func() { ended <- readToEnd(a.tc, a.fr, 60*time.Second) }()
	const pairs = 20_000
	sent := rapidReset(a, pairs)
	var e ending
	select {
	case e = <-ended:
	case <-time.After(20 * time.Second):
		// Old behaviour: the connection stays; stop reading.
		a.tc.SetReadDeadline(time.Now())
		e = <-ended
	}
	goroutines := len(mark.since())
	t.Logf("rapid reset, slow handlers: %d of %d pairs sent; %d handlers started, at most %d at once (%d goroutines started since the attack began); GOAWAY %v %v, then %v",
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
	waitGoroutines(t, mark)
}

// CONTINUATION flood (CVE-2023-45288): a HEADERS frame that never ends,
// followed by CONTINUATION frames. The frame codec bounds what it decodes
// but reads empty CONTINUATIONs forever; the server must end the
// connection.
func TestContinuationFloodIsCutOff(t *testing.T) {
	ts := startServer(t, echoHandler, bob, nil)
	a := attack(t, ts.addr)
	mark, heap0 := markGoroutines(), heapInUse()
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
	waitGoroutines(t, mark)
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
