package hbone

import (
	"bytes"
	"context"
	"io"
	"net"
	"reflect"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/zmesh/zmesh/identity"
)

// The bulk path's syscalls: each test pins how many a burst of bytes
// costs on one side, whatever the machine's load, by queueing the burst
// in the socket before the side under test reads it.

// burst is larger than two of the old 64 KiB reads and fits the
// receive buffer queued below.
const burst = 160 << 10

// queueBurst writes p into from and waits until to's socket holds all
// of it unread.
func queueBurst(t *testing.T, from, to net.Conn, p []byte) {
	t.Helper()
	to.(*net.TCPConn).SetReadBuffer(1 << 20)
	if _, err := from.Write(p); err != nil {
		t.Fatal(err)
	}
	rc, err := to.(*net.TCPConn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		var queued int
		rc.Control(func(fd uintptr) { queued, _ = unix.IoctlGetInt(int(fd), unix.SIOCINQ) })
		if queued == len(p) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the socket holds %d of the %d bytes written", queued, len(p))
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TLS asks for a record header; the read under it takes the whole burst
// with one syscall, and the rest is served from memory (a deadline in
// the past does not stop it).
func TestReadAheadTakesABurstInOneRead(t *testing.T) {
	peer, c := tcpPair(t)
	sent := bytes.Repeat([]byte("0123456789abcdef"), burst/16)
	queueBurst(t, peer, c, sent)
	bc := BatchWrites(c).(*batchConn)
	bc.arm()
	got := make([]byte, 5)
	if _, err := io.ReadFull(bc, got); err != nil {
		t.Fatal(err)
	}
	bc.SetReadDeadline(time.Now().Add(-time.Second))
	buf := make([]byte, 16<<10)
	for {
		n, err := bc.Read(buf)
		got = append(got, buf[:n]...)
		if err != nil {
			break
		}
	}
	if len(got) != len(sent) || !bytes.Equal(got, sent) {
		t.Fatalf("one read syscall took %d bytes of the %d queued, want all", len(got), len(sent))
	}
}

// writeCounter counts the writes it gets.
type writeCounter struct {
	n      int
	writes int
}

func (w *writeCounter) Write(p []byte) (int, error) {
	w.n += len(p)
	w.writes++
	return len(p), nil
}

// The app's socket is read in one piece per burst: one read syscall, one
// write to the stream (a DATA frame, a TLS batch, one syscall).
func TestCopyFromTCPTakesABurstInOneRead(t *testing.T) {
	app, side := tcpPair(t)
	queueBurst(t, app, side, make([]byte, burst))
	app.(*net.TCPConn).CloseWrite()
	w := &writeCounter{}
	n, err := copyFromTCP(w, side.(*net.TCPConn))
	if err != nil || n != burst || w.n != burst {
		t.Fatalf("copied %d (%d written), %v; want %d", n, w.n, err, burst)
	}
	if w.writes != 1 {
		t.Fatalf("a %d KiB burst took %d writes, want 1", burst>>10, w.writes)
	}
}

// A peer that grants no credit makes the copy from the app's socket hold
// no buffer: the bytes wait in the socket (TCP pushes back on the app),
// not in our memory.
func TestStalledPeerHoldsNoCopyBuffers(t *testing.T) {
	const tunnels = 8
	const window = 64 << 10
	// The server's handlers never read: each stream's window, then the
	// connection's, runs out.
	stop := make(chan struct{})
	var handlers sync.WaitGroup
	handler := func(ctx context.Context, r *Request, s *Stream) {
		handlers.Add(1)
		defer handlers.Done()
		s.Respond(200)
		select {
		case <-stop:
		case <-ctx.Done():
		}
	}
	opts := ServerOptions{StreamWindow: window, ConnWindow: 4 * window}
	ts := serveHBONE(t, handler, opts, listenLoopback(t), identity.ServerTLS(testPKI(t).src, bob, nil))
	t.Cleanup(func() { close(stop) }) // first: the server's shutdown waits for the handlers
	cc, err := dialClient(t, ts.addr, alice, bob)
	if err != nil {
		t.Fatal(err)
	}

	held := copyBufsOut.Load()
	var joins sync.WaitGroup
	for range tunnels {
		st, err := cc.Connect(context.Background(), target("10.0.0.1:80"))
		if err != nil {
			t.Fatal(err)
		}
		app, side := tcpPair(t)
		joins.Go(func() { Join(st, side) })
		// More than the stream's window, and together more than the
		// connection's: the app's writes stop once TCP is full.
		go app.Write(make([]byte, 4*window))
		t.Cleanup(func() { st.Close(); side.Close() })
	}
	// Wait until the windows are spent and every copy has reached its
	// wait for credit.
	deadline := time.Now().Add(10 * time.Second)
	for {
		cc.c.mu.Lock()
		spent := cc.c.sendWindow <= 0
		cc.c.mu.Unlock()
		out := copyBufsOut.Load() - held
		if spent && out <= 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d tunnels stalled by their peer hold %d copy buffers (connection window spent: %v), want none", tunnels, out, spent)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// A stream whose app does not read holds at most its window, the bytes
// on their way to the app's socket included: the peer can send no more
// than what the socket took and the window.
func TestUnreadStreamHoldsAtMostItsWindow(t *testing.T) {
	const window = 256 << 10
	stop := make(chan struct{})
	app := listenApp(t, func(c net.Conn) {
		c.(*net.TCPConn).SetReadBuffer(4 << 10)
		<-stop // never reads
	})
	streams := make(chan *Stream, 1)
	handler := func(ctx context.Context, r *Request, s *Stream) {
		up, err := net.Dial("tcp", app.Addr().String())
		if err != nil {
			s.RespondError(503, err.Error())
			return
		}
		defer up.Close()
		up.(*net.TCPConn).SetWriteBuffer(4 << 10)
		s.Respond(200)
		streams <- s
		Join(s, up)
	}
	opts := ServerOptions{StreamWindow: window}
	ts := serveHBONE(t, handler, opts, listenLoopback(t), identity.ServerTLS(testPKI(t).src, bob, nil))
	t.Cleanup(func() { close(stop) }) // first: the server's shutdown waits for the handlers
	st := openStream(t, ts.addr)
	var sent atomic.Int64
	go func() {
		chunk := make([]byte, 64<<10)
		for {
			n, err := st.Write(chunk)
			sent.Add(int64(n))
			if err != nil {
				return
			}
		}
	}()
	ss := <-streams
	// Wait until the writer is stuck for want of credit (its count has
	// stopped moving): the invariant below holds at every moment, but it
	// is only tested once the window is full.
	last, still := int64(-1), 0
	deadline := time.Now().Add(10 * time.Second)
	for still < 10 {
		if time.Now().After(deadline) {
			t.Fatal("the writer never stopped")
		}
		time.Sleep(50 * time.Millisecond)
		if n := sent.Load(); n == last {
			still++
		} else {
			last, still = n, 0
		}
	}
	ss.c.mu.Lock()
	sunk := ss.sunk
	ss.c.mu.Unlock()
	t.Logf("sent %d, sunk %d, held %d", last, sunk, last-sunk)
	if held := last - sunk; held > window {
		t.Fatalf("the peer sent %d bytes, the app's socket took %d: we hold %d, more than the %d window", last, sunk, held, window)
	}
}

// A large stream write copies no frame into the framer: x/net's
// Framer.WriteData builds each frame in a buffer the framer keeps, as
// large as the largest frame, for the connection's life; a pooled
// connection that once carried a bulk transfer would pin it while idle.
func TestBulkWriteKeepsNoFrameBuffer(t *testing.T) {
	ts := startServer(t, func(ctx context.Context, r *Request, s *Stream) {
		s.Respond(200)
		io.Copy(io.Discard, s)
		s.CloseWrite()
	}, bob, nil)
	st := openStream(t, ts.addr)
	if _, err := st.Write(make([]byte, copyBufSize)); err != nil {
		t.Fatal(err)
	}
	// The framer's write buffer, read by reflection: it is unexported.
	c := st.c
	c.wmu.Lock()
	wbuf := reflect.ValueOf(c.fr).Elem().FieldByName("wbuf")
	c.wmu.Unlock()
	if !wbuf.IsValid() {
		t.Fatal("http2.Framer has no wbuf field any more: check what it keeps of a frame it writes")
	}
	if n := wbuf.Cap(); n > 16<<10 {
		t.Fatalf("after a %d KiB stream write the framer keeps a %d KiB buffer, want none of a frame's size", copyBufSize>>10, n>>10)
	}
}

// A batch carrying a whole DATA frame's records (flushed once it reaches
// maxBatch) is allocated at its full size when the pool is empty, not
// small and then grown by append.
func TestBatchOfAFrameIsAllocatedOnce(t *testing.T) {
	a, b := net.Pipe()
	defer b.Close()
	go func() { // a reader that allocates nothing per read
		buf := make([]byte, 64<<10)
		for {
			if _, err := b.Read(buf); err != nil {
				return
			}
		}
	}()
	bc := BatchWrites(a).(*batchConn)
	bc.arm()
	record := make([]byte, 16<<10+22) // a full TLS 1.3 record
	var before, after runtime.MemStats
	// Twice: the first moves pooled batches to the victim cache.
	runtime.GC()
	runtime.GC()
	runtime.ReadMemStats(&before)
	for range maxBatch/len(record) + 1 {
		bc.Write(record)
	}
	bc.flush()
	runtime.ReadMemStats(&after)
	if n := after.TotalAlloc - before.TotalAlloc; n > batchCap+16<<10 {
		t.Fatalf("a batch of %d KiB allocated %d KiB, want one buffer of %d KiB", maxBatch>>10, n>>10, batchCap>>10)
	}
}
