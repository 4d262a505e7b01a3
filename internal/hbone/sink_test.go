package hbone

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"io"
	"math/rand/v2"
	"net"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// joinedServer serves HBONE streams joined (as ztunnel's inbound does) to
// a fresh TCP connection to app each, and reports what each Join moved.
// sndbuf, if not 0, is that connection's send buffer.
func joinedServer(t *testing.T, app net.Listener, sndbuf int) (*testServer, <-chan [2]int64) {
	moved := make(chan [2]int64, 256) // room for every Join of a test
	ts := startServer(t, func(ctx context.Context, r *Request, s *Stream) {
		up, err := net.Dial("tcp", app.Addr().String())
		if err != nil {
			s.RespondError(503, err.Error())
			return
		}
		defer up.Close()
		if sndbuf > 0 {
			up.(*net.TCPConn).SetWriteBuffer(sndbuf)
		}
		s.Respond(200)
		sent, recv, _ := Join(s, up)
		moved <- [2]int64{sent, recv}
	}, bob, nil)
	return ts, moved
}

// listenApp serves each connection to a loopback port with serve, in a
// goroutine of its own, and closes it after; the port closes with the test.
func listenApp(t testing.TB, serve func(net.Conn)) net.Listener {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); serve(c) }()
		}
	}()
	return ln
}

// countDirect records the read loop's direct deliveries for the test.
func countDirect(t *testing.T) (direct, left *atomic.Int64) {
	direct, left = new(atomic.Int64), new(atomic.Int64)
	testHookDirect = func(d, l int) { direct.Add(int64(d)); left.Add(int64(l)) }
	t.Cleanup(func() { testHookDirect = nil })
	return direct, left
}

// Request/response through a joined stream: the read loop writes each
// request straight into the app's socket, and Join still counts it.
func TestJoinDeliversDirectly(t *testing.T) {
	direct, _ := countDirect(t)
	app := listenApp(t, func(c net.Conn) { io.Copy(c, c) })
	ts, moved := joinedServer(t, app, 0)
	st := openStream(t, ts.addr)
	msg, buf := bytes.Repeat([]byte("0123456789abcdef"), 64), make([]byte, 1024)
	const rounds = 200
	for range rounds {
		if _, err := st.Write(msg); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(st, buf); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(buf, msg) {
			t.Fatal("echo differs")
		}
	}
	st.CloseWrite()
	if rest, err := readAllTimeout(t, st, 5*time.Second); err != nil || len(rest) != 0 {
		t.Fatalf("after END_STREAM: %d bytes, %v", len(rest), err)
	}
	m := <-moved
	if m[0] != rounds*1024 || m[1] != rounds*1024 {
		t.Fatalf("Join moved %d to the app and %d back, want %d each", m[0], m[1], rounds*1024)
	}
	// Server side only: the client reads its stream itself.
	if d := direct.Load(); d < rounds*1024/2 {
		t.Fatalf("%d of %d bytes went straight to the app's socket, want most", d, rounds*1024)
	}
}

// An app that reads slowly behind a small send buffer makes direct writes
// fall short: the rest queues behind them, and nothing is lost, duplicated or
// reordered.
func TestJoinKeepsOrderWhenTheAppIsSlow(t *testing.T) {
	direct, left := countDirect(t)
	const size = 8 << 20
	app := listenApp(t, func(c net.Conn) {
		h := sha256.New()
		r := rand.New(rand.NewPCG(1, 2))
		buf := make([]byte, 16<<10)
		var n int64
		for {
			k, err := c.Read(buf[:1+r.IntN(len(buf))])
			h.Write(buf[:k])
			n += int64(k)
			if err != nil {
				break
			}
			if r.IntN(16) == 0 {
				time.Sleep(time.Millisecond)
			}
		}
		var out [8]byte
		binary.BigEndian.PutUint64(out[:], uint64(n))
		c.Write(append(out[:], h.Sum(nil)...))
	})
	ts, moved := joinedServer(t, app, 16<<10)
	st := openStream(t, ts.addr)

	data, want := randomData(3, size)
	go writeInPieces(st, data, 3, 100<<10)
	got, err := readAllTimeout(t, st, 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 8+sha256.Size || binary.BigEndian.Uint64(got) != size || !bytes.Equal(got[8:], want[:]) {
		t.Fatalf("the app got something else than was sent (%d bytes of answer)", len(got))
	}
	if m := <-moved; m[0] != size {
		t.Fatalf("Join counted %d bytes to the app, want %d", m[0], size)
	}
	if direct.Load() == 0 || left.Load() == 0 {
		t.Fatalf("direct %d bytes, left to the buffer %d: want both paths taken", direct.Load(), left.Load())
	}
}

// Idle tunnels hold no copy buffers: with many joined streams open and
// quiet, the heap grows by far less than one buffer per tunnel.
func TestIdleJoinsHoldNoBuffers(t *testing.T) {
	const tunnels = 200
	arrived := make(chan struct{}, tunnels)
	app := listenApp(t, func(c net.Conn) {
		b := make([]byte, 1)
		if _, err := io.ReadFull(c, b); err == nil {
			arrived <- struct{}{}
		}
		io.Copy(io.Discard, c)
	})
	ts, _ := joinedServer(t, app, 0)
	cc, err := dialClient(t, ts.addr, alice, bob)
	if err != nil {
		t.Fatal(err)
	}
	heap := func() uint64 {
		// Twice: the first only moves pooled buffers to the pools'
		// victim caches.
		runtime.GC()
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		return ms.HeapAlloc
	}
	// Warm the pools and the connection first.
	st, err := cc.Connect(context.Background(), target("10.0.0.1:80"))
	if err != nil {
		t.Fatal(err)
	}
	st.Write([]byte{1})
	<-arrived
	before, mark := heap(), markGoroutines()
	for range tunnels {
		st, err := cc.Connect(context.Background(), target("10.0.0.1:80"))
		if err != nil {
			t.Fatal(err)
		}
		defer st.Close()
		if _, err := st.Write([]byte{1}); err != nil {
			t.Fatal(err)
		}
	}
	for range tunnels {
		select {
		case <-arrived:
		case <-time.After(10 * time.Second):
			t.Fatal("not every tunnel reached the app")
		}
	}
	perTunnel := (int64(heap()) - int64(before)) / tunnels
	t.Logf("heap per idle tunnel (both ends and the app's socket): %d bytes", perTunnel)
	if perTunnel > 16<<10 {
		t.Errorf("an idle tunnel holds %d bytes of heap, want well under one 64 KiB copy buffer", perTunnel)
	}
	// Per tunnel: the test app's handler, and the server's stream
	// handler in Join, reading the app. The stream's direction has no
	// goroutine while idle (a copying one would make it three).
	if extra := len(mark.since()); extra > 2*tunnels+tunnels/10 {
		t.Errorf("%d idle tunnels added %d goroutines, want 2 each", tunnels, extra)
	}
}

// drainRunning reports whether any stream has a drain goroutine.
func drainRunning() bool {
	buf := make([]byte, 1<<20)
	return bytes.Contains(buf[:runtime.Stack(buf, true)], []byte("hbone.(*Stream).drain"))
}

// A drain goroutine lives only while the app's socket is full: once the
// backlog is out it exits, and later data still arrives. A reset
// of an idle joined stream closes the app's socket with no goroutine
// waiting for it.
func TestJoinDrainsOnlyWhileTheSocketIsFull(t *testing.T) {
	release := make(chan struct{})
	backlog, got := make(chan struct{}), make(chan int64, 1)
	closed := make(chan error, 1)
	app := listenApp(t, func(c net.Conn) {
		<-release
		buf := make([]byte, 64<<10)
		var n int64
		for n < 1<<20+3 {
			k, err := c.Read(buf[:min(len(buf), 1<<20+3-int(n))])
			if n < 1<<20 && n+int64(k) >= 1<<20 {
				close(backlog) // all of it out of the socket
			}
			n += int64(k)
			if err != nil {
				closed <- err
				return
			}
		}
		got <- n
		_, err := c.Read(buf) // the tunnel is idle now; its reset must end this
		closed <- err
	})
	ts, moved := joinedServer(t, app, 16<<10)
	// Registered after the servers' cleanups, so run before them: a
	// failure before the release would leave the drain, and with it
	// the server's Shutdown, waiting for the app for ever.
	var releaseOnce sync.Once
	free := func() { releaseOnce.Do(func() { close(release) }) }
	t.Cleanup(free)
	st := openStream(t, ts.addr)

	if _, err := st.Write(make([]byte, 1<<20)); err != nil {
		t.Fatal(err)
	}
	// Wait for a drain for what the full socket did not take: left by
	// the read loop's direct write, or, when the bytes came before the
	// handler joined the stream to the socket, by the join's.
	waitUntil(t, drainRunning)
	free()
	select {
	case <-backlog:
	case err := <-closed:
		t.Fatalf("app's socket failed: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("the app did not get the first MiB")
	}
	// Wait for the drain to exit once the backlog is out.
	waitUntil(t, func() bool { return !drainRunning() })
	// More data after the drain exited still arrives (directly, or by a
	// new drain if the socket still holds unacknowledged bytes).
	if _, err := st.Write([]byte("abc")); err != nil {
		t.Fatal(err)
	}
	select {
	case n := <-got:
		if n != 1<<20+3 {
			t.Fatalf("app got %d bytes", n)
		}
	case err := <-closed:
		t.Fatalf("app's socket failed before all data came: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("the app did not get every byte")
	}
	// No drain is left once the stream is idle again.
	waitUntil(t, func() bool { return !drainRunning() })

	st.Close() // RST_STREAM(CANCEL)
	select {
	case err := <-closed:
		if err == nil {
			t.Fatal("app read data after the reset")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the reset did not reach the app's socket")
	}
	if m := <-moved; m[0] != 1<<20+3 {
		t.Errorf("Join counted %d bytes to the app, want %d", m[0], 1<<20+3)
	}
}

// The peer's END_STREAM on a joined stream whose data all reached the app
// is carried to the app's socket (its FIN) without a drain goroutine: a
// goroutine per stream and direction that ends cleanly was the common
// case of every short connection.
func TestCleanEndStartsNoDrain(t *testing.T) {
	var drains atomic.Int64
	testHookDrain = func() { drains.Add(1) }
	t.Cleanup(func() { testHookDrain = nil })
	app := listenApp(t, func(c net.Conn) { io.Copy(c, c) })
	ts, moved := joinedServer(t, app, 0)
	msg := bytes.Repeat([]byte("0123456789abcdef"), 64)
	var atEnd int64
	for range 20 {
		st := openStream(t, ts.addr)
		if _, err := st.Write(msg); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(st, make([]byte, len(msg))); err != nil {
			t.Fatal(err)
		}
		// The request reached the app and its buffer is empty: what
		// follows is only the end. (Data that came before the sink was
		// attached may have started a drain above; it is not counted.)
		before := drains.Load()
		if err := st.CloseWrite(); err != nil {
			t.Fatal(err)
		}
		// The app sees EOF only if the FIN was carried over; its echo
		// loop then ends and so does the stream.
		rest, err := readAllTimeout(t, st, 5*time.Second)
		if err != nil || len(rest) != 0 {
			t.Fatalf("after the echo: %q, %v; want EOF", rest, err)
		}
		select {
		case m := <-moved:
			if m != [2]int64{int64(len(msg)), int64(len(msg))} {
				t.Fatalf("Join moved %v, want %d each way", m, len(msg))
			}
		case <-time.After(5 * time.Second):
			t.Fatal("Join did not return after both ends")
		}
		atEnd += drains.Load() - before
		st.Close()
	}
	if atEnd != 0 {
		t.Errorf("%d drain goroutines started for clean ends of 20 streams, want 0", atEnd)
	}
}

// Bytes that arrive before the handler joins the stream to the app (a
// client that sends without waiting for the 200) are written to the fresh
// socket by the joining goroutine when it takes them at once, not by a
// drain goroutine; and the app still gets everything once and in order.
func TestEarlyDataStartsNoDrain(t *testing.T) {
	var drains atomic.Int64
	testHookDrain = func() { drains.Add(1) }
	t.Cleanup(func() { testHookDrain = nil })
	app := listenApp(t, func(c net.Conn) { io.Copy(c, c) })
	moved := make(chan [2]int64, 1)
	ts := startServer(t, func(ctx context.Context, r *Request, s *Stream) {
		up, err := net.Dial("tcp", app.Addr().String())
		if err != nil {
			s.RespondError(503, err.Error())
			return
		}
		defer up.Close()
		s.Respond(200)
		// Join only once the first request is buffered.
		deadline := time.Now().Add(5 * time.Second)
		for {
			s.c.mu.Lock()
			n := s.rbuf.len()
			s.c.mu.Unlock()
			if n >= 1024 || time.Now().After(deadline) {
				break
			}
			time.Sleep(time.Millisecond)
		}
		sent, recv, _ := Join(s, up)
		moved <- [2]int64{sent, recv}
	}, bob, nil)
	st := openStream(t, ts.addr)
	msg := bytes.Repeat([]byte("early-data-0123456789abcdef-"), 40)[:1024]
	if _, err := st.Write(msg); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(st, got); err != nil || !bytes.Equal(got, msg) {
		t.Fatalf("echo of the early request: %v (equal %v)", err, bytes.Equal(got, msg))
	}
	if n := drains.Load(); n != 0 {
		t.Errorf("%d drain goroutines started for a request buffered before the join, want 0", n)
	}
	// The stream goes on as usual after it.
	if got := exchange(t, st, "after"); got != "after" {
		t.Fatalf("second exchange: %q", got)
	}
	select {
	case m := <-moved:
		if m != [2]int64{int64(len(msg) + 5), int64(len(msg) + 5)} {
			t.Fatalf("Join moved %v, want %d each way", m, len(msg)+5)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Join did not return")
	}
}
