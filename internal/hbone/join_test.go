package hbone

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/net/http2"
)

// heldServer answers each stream only when the test sends a status on
// answer (200 echoes the tunnel back); it reports each stream's start.
func heldServer(t *testing.T, opts ServerOptions) (addr string, started <-chan struct{}, answer chan<- int) {
	st := make(chan struct{}, 16)
	ans := make(chan int, 16)
	addr = earlyServer(t, opts, func(ctx context.Context, r *Request, s *Stream) {
		st <- struct{}{}
		var status int
		select {
		case status = <-ans:
		case <-ctx.Done():
			return
		}
		if status != 200 {
			s.RespondError(status, "denied for the test")
			return
		}
		echoHandler(ctx, r, s)
	})
	return addr, st, ans
}

func joinRequest(early string) *ConnectRequest {
	r := target("10.0.0.1:80")
	r.EarlyData = []byte(early)
	r.Join = true
	return r
}

func connectJoined(t *testing.T, addr string, r *ConnectRequest) *Stream {
	t.Helper()
	cc, err := dialClient(t, addr, alice, bob)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := cc.Connect(ctx, r)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

func waitStarted(t *testing.T, started <-chan struct{}) {
	t.Helper()
	select {
	case <-started:
	case <-time.After(10 * time.Second):
		t.Fatal("the server never saw the stream")
	}
}

// A joined Connect returns while the server still holds its answer, and
// what the client writes before the answer arrives after a 200, behind
// the early data and in order.
func TestJoinReturnsBeforeTheAnswer(t *testing.T) {
	addr, started, answer := heldServer(t, ServerOptions{})
	st := connectJoined(t, addr, joinRequest("early,"))
	waitStarted(t, started) // the handler runs, and has not answered
	if st.Answered() {
		t.Fatal("Answered before the server answered")
	}
	for _, part := range []string{"second,", "third"} {
		if _, err := st.Write([]byte(part)); err != nil {
			t.Fatalf("write before the answer: %v", err)
		}
	}
	st.CloseWrite()
	answer <- 200
	b, err := readAllTimeout(t, st, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if string(b) != "early,second,third" {
		t.Fatalf("echo %q, want %q", b, "early,second,third")
	}
	if !st.Answered() {
		t.Fatal("not Answered after the 200")
	}
}

// A refusal after the join fails Read, and the next Write, with the
// server's status and reason.
func TestJoinRefusalFailsReadAndWrite(t *testing.T) {
	addr, started, answer := heldServer(t, ServerOptions{})
	st := connectJoined(t, addr, joinRequest("hello"))
	waitStarted(t, started)
	answer <- 403
	st.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, err := st.Read(make([]byte, 10))
	var se *StatusError
	if !errors.As(err, &se) || se.Status != 403 || se.Reason != "denied for the test" {
		t.Fatalf("Read after a 403: %v, want the *StatusError 403 with its reason", err)
	}
	if _, err := st.Write([]byte("more")); !errors.As(err, &se) {
		t.Fatalf("Write after a 403: %v, want the *StatusError", err)
	}
	if st.Answered() {
		t.Fatal("Answered after a 403")
	}
}

// Before the answer, the peer's stream window bounds what a joined stream
// sends: a write beyond it waits for credit the server does not give.
func TestJoinBoundedByTheWindow(t *testing.T) {
	const window = 64 << 10
	addr, started, _ := heldServer(t, ServerOptions{StreamWindow: window})
	st := connectJoined(t, addr, joinRequest(""))
	waitStarted(t, started)
	st.SetWriteDeadline(time.Now().Add(time.Second))
	n, err := st.Write(make([]byte, 4*window))
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("write of 4 windows before the answer: %d bytes, %v; want a deadline error", n, err)
	}
	if n > window {
		t.Fatalf("%d bytes sent before the answer, want at most the window (%d)", n, window)
	}
}

// A joined stream and a TCP socket: a refusal resets the socket (its app
// reads ECONNRESET, not an end of stream), and Join reports the refusal.
func TestJoinRefusalResetsTheSocket(t *testing.T) {
	addr, started, answer := heldServer(t, ServerOptions{})
	st := connectJoined(t, addr, joinRequest("GET / HTTP/1.0\r\n\r\n"))
	app, proxy := tcpPair(t)
	joined := make(chan error, 1)
	go func() {
		_, _, err := Join(proxy, st)
		joined <- err
	}()
	waitStarted(t, started)
	answer <- 401
	app.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, err := app.Read(make([]byte, 10))
	if !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("the app read %v after a refusal, want ECONNRESET", err)
	}
	select {
	case err := <-joined:
		var se *StatusError
		if !errors.As(err, &se) || se.Status != 401 {
			t.Fatalf("Join: %v, want the *StatusError 401", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Join did not return after the refusal")
	}
}

// An allowed joined tunnel carries the app's bytes both ways as before.
func TestJoinAnsweredCarriesTheApp(t *testing.T) {
	addr, started, answer := heldServer(t, ServerOptions{})
	st := connectJoined(t, addr, joinRequest("ping,"))
	app, proxy := tcpPair(t)
	done := make(chan struct{})
	go func() {
		defer close(done)
		Join(proxy, st)
	}()
	waitStarted(t, started)
	app.Write([]byte("pong"))
	answer <- 200
	app.(*net.TCPConn).CloseWrite()
	b, err := readAllTimeout(t, app, 10*time.Second)
	if err != nil || string(b) != "ping,pong" {
		t.Fatalf("the app read %q, %v; want %q", b, err, "ping,pong")
	}
	<-done
}

// refusingServer serves one connection the way a server going away does:
// it reads the first stream's HEADERS and early data, waits for more (if
// wantMore is not empty) until it has read wantMore too, then refuses the
// stream unprocessed with RST_STREAM(REFUSED_STREAM) and GOAWAY(0).
func refusingServer(t *testing.T, wantMore string) string {
	addr, _ := hostileServer(t, listenLoopback(t), func(a *attacker) ending {
		a.tc.SetReadDeadline(time.Now().Add(20 * time.Second))
		var id uint32
		var data strings.Builder
		for {
			f, err := a.fr.ReadFrame()
			if err != nil {
				return ending{readErr: err}
			}
			switch f := f.(type) {
			case *http2.MetaHeadersFrame:
				if id == 0 {
					id = f.StreamID
				}
			case *http2.DataFrame:
				if f.StreamID == id {
					data.Write(f.Data())
				}
			}
			if id != 0 && strings.HasSuffix(data.String(), wantMore) && data.Len() > 0 {
				break
			}
		}
		a.fr.WriteRSTStream(id, http2.ErrCodeRefusedStream)
		a.fr.WriteGoAway(0, http2.ErrCodeNo, nil)
		a.bw.Flush()
		return readToEnd(a.tc, a.fr, 20*time.Second)
	})
	return addr
}

// twoServerPool dials first, then second for every later connection.
func twoServerPool(t *testing.T, first, second string) (*Pool, Key) {
	var dials atomic.Int32
	return newTestPool(t, second, PoolConfig{Dial: func(ctx context.Context, k Key) (net.Conn, error) {
		addr := second
		if dials.Add(1) == 1 {
			addr = first
		}
		var d net.Dialer
		return d.DialContext(ctx, "tcp", addr)
	}})
}

// A joined stream refused unprocessed while its early data is all it sent
// is opened again on another connection with that early data: the app
// sees nothing of the refusal.
func TestJoinRetriesWhileOnlyEarlyDataWasSent(t *testing.T) {
	served := make(chan []byte, 4)
	good := earlyServer(t, ServerOptions{}, func(ctx context.Context, r *Request, s *Stream) {
		s.Respond(200)
		b, _ := io.ReadAll(s)
		served <- b
		s.Write(append([]byte("echo:"), b...))
		s.CloseWrite()
	})
	pool, k := twoServerPool(t, refusingServer(t, ""), good)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := pool.Connect(ctx, k, joinRequest("request"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	app, proxy := tcpPair(t)
	app.(*net.TCPConn).CloseWrite() // all the app had to say was early
	joined := make(chan error, 1)
	go func() {
		_, _, err := Join(proxy, st)
		joined <- err
	}()
	b, err := readAllTimeout(t, app, 10*time.Second)
	if err != nil || string(b) != "echo:request" {
		t.Fatalf("the app read %q, %v; want %q", b, err, "echo:request")
	}
	if err := <-joined; err != nil {
		t.Fatalf("Join: %v", err)
	}
	if got := <-served; string(got) != "request" {
		t.Fatalf("the second server got %q, want the early data once", got)
	}
	if !st.Answered() {
		t.Fatal("the retried stream is not Answered")
	}
}

// Once bytes beyond the early data left before the answer, a refusal is
// final: they cannot be sent again, so the app's socket is reset and no
// other server sees a part of the tunnel.
func TestJoinRefusalAfterMoreBytesIsFinal(t *testing.T) {
	var served atomic.Int32
	good := earlyServer(t, ServerOptions{}, func(ctx context.Context, r *Request, s *Stream) {
		served.Add(1)
		echoHandler(ctx, r, s)
	})
	pool, k := twoServerPool(t, refusingServer(t, "more"), good)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := pool.Connect(ctx, k, joinRequest("request,"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	app, proxy := tcpPair(t)
	joined := make(chan error, 1)
	go func() {
		_, _, err := Join(proxy, st)
		joined <- err
	}()
	app.Write([]byte("more"))
	app.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, err = app.Read(make([]byte, 10))
	if !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("the app read %v, want ECONNRESET", err)
	}
	err = <-joined
	var na *NotAnsweredError
	var re *ResetError
	if !errors.As(err, &na) || !errors.As(err, &re) || re.Code != http2.ErrCodeRefusedStream {
		t.Fatalf("Join: %v, want a *NotAnsweredError wrapping REFUSED_STREAM", err)
	}
	if n := served.Load(); n != 0 {
		t.Fatalf("%d streams reached the second server, want none", n)
	}
}

// A joined stream the server never answers ends at the deadline of its
// Connect's context, as a Connect waiting for the answer would.
func TestJoinAnswerDeadline(t *testing.T) {
	addr, started, _ := heldServer(t, ServerOptions{})
	cc, err := dialClient(t, addr, alice, bob)
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	st, err := cc.Connect(ctx, joinRequest("hello"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	waitStarted(t, started)
	st.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, err = st.Read(make([]byte, 10))
	var na *NotAnsweredError
	if !errors.As(err, &na) || !errors.Is(err, errAnswerTimeout) {
		t.Fatalf("Read of a stream never answered: %v, want a *NotAnsweredError for the deadline", err)
	}
}

// DATA before the response's HEADERS is a protocol error (RFC 9113 §8.1):
// none of it reaches the socket joined to the stream, which is reset.
func TestJoinDataBeforeTheAnswerIsRefused(t *testing.T) {
	addr, _ := hostileServer(t, listenLoopback(t), func(a *attacker) ending {
		a.tc.SetReadDeadline(time.Now().Add(20 * time.Second))
		for {
			f, err := a.fr.ReadFrame()
			if err != nil {
				return ending{readErr: err}
			}
			if h, ok := f.(*http2.MetaHeadersFrame); ok {
				a.fr.WriteData(h.StreamID, false, []byte("sneaky"))
				a.bw.Flush()
				return readToEnd(a.tc, a.fr, 20*time.Second)
			}
		}
	})
	st := connectJoined(t, addr, joinRequest("hello"))
	app, proxy := tcpPair(t)
	joined := make(chan error, 1)
	go func() {
		_, _, err := Join(proxy, st)
		joined <- err
	}()
	app.SetReadDeadline(time.Now().Add(10 * time.Second))
	n, err := app.Read(make([]byte, 10))
	if n > 0 || !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("the app read %d bytes, %v; want nothing and ECONNRESET", n, err)
	}
	if err := <-joined; !strings.Contains(fmt.Sprint(err), "DATA before the response") {
		t.Fatalf("Join: %v, want the protocol error", err)
	}
}
