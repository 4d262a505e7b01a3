package podapp

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"time"

	"golang.org/x/net/http2"
	"google.golang.org/grpc"
	"google.golang.org/grpc/reflection"

	"github.com/zmesh/zmesh/e2e/podapp/istioecho"
	grpcecho "sigs.k8s.io/gateway-api/conformance/echo-basic/grpcechoserver"
)

// App serves one pod's ports.
type App struct {
	pod  Pod
	h2   *http2.Server
	grpc *grpc.Server
}

// New returns the app playing pod.
func New(pod Pod) *App {
	a := &App{pod: pod, h2: &http2.Server{}, grpc: grpc.NewServer()}
	grpcecho.RegisterGrpcEchoServer(a.grpc, &grpcEcho{pod: pod})
	istioecho.RegisterEchoTestServiceServer(a.grpc, &istioEcho{a: a})
	// As echo-basic: grpcurl and friends can list the service.
	reflection.Register(a.grpc)
	return a
}

// sniffTimeout bounds how long an HTTP port waits for a client's first
// bytes; a client silent that long gets the TCP echo's greeting, so a
// server-first client works there too, only late.
const sniffTimeout = 30 * time.Second

// Serve serves ln as port p until ctx is done, then closes ln and every
// connection it accepted and returns.
func (a *App) Serve(ctx context.Context, ln net.Listener, p Port) error {
	conns := &connSet{m: map[net.Conn]struct{}{}}
	h1ln := newConnListener(ln.Addr())
	h1 := &http.Server{
		Handler:           a.handler(ctx, conns),
		ReadHeaderTimeout: 10 * time.Second,
		// Requests end with the app: a ?delay= handler returns on shutdown.
		BaseContext: func(net.Listener) context.Context { return ctx },
	}
	var wg sync.WaitGroup
	wg.Go(func() { h1.Serve(h1ln) })
	stop := context.AfterFunc(ctx, func() {
		ln.Close()
		h1.Close()
		conns.closeAll()
	})
	defer stop()
	for {
		c, err := ln.Accept()
		if err != nil {
			// Unblock the HTTP/1 server when the listener failed on its own.
			h1.Close()
			conns.closeAll()
			wg.Wait()
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("accept on port %d: %w", p.Port, err)
		}
		if !conns.add(c) {
			continue
		}
		wg.Go(func() { a.serveConn(ctx, c, p, h1ln, conns) })
	}
}

// serveConn runs one accepted connection: the greeting echo, or a sniff
// that hands HTTP/1 to the HTTP server (which then owns the connection),
// HTTP/2 to the HTTP/2 server, and anything else to the echo.
func (a *App) serveConn(ctx context.Context, c net.Conn, p Port, h1 *connListener, conns *connSet) {
	if p.Greets() {
		defer conns.remove(c)
		echo(c, bufio.NewReader(c), a.pod.ID())
		return
	}
	r := bufio.NewReader(c)
	c.SetReadDeadline(time.Now().Add(sniffTimeout))
	proto := sniff(r)
	c.SetReadDeadline(time.Time{})
	pc := &peekedConn{Conn: c, r: r}
	switch proto {
	case protoHTTP1:
		conns.remove(c) // the HTTP/1 server closes it on Close
		h1.put(pc)
	case protoHTTP2:
		defer conns.remove(c)
		a.h2.ServeConn(pc, &http2.ServeConnOpts{Context: ctx, Handler: a.handler(ctx, conns)})
	default:
		defer conns.remove(c)
		echo(c, r, a.pod.ID())
	}
}

// echo greets, then sends back everything it reads.
func echo(c net.Conn, r io.Reader, pod string) {
	defer c.Close()
	if _, err := fmt.Fprintln(c, Greeting(pod, c.RemoteAddr())); err != nil {
		return
	}
	io.Copy(c, r)
}

type protocol int

const (
	protoRaw protocol = iota
	protoHTTP1
	protoHTTP2
)

const h2Preface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

// maxMethod is the longest request method sniff accepts (Envoy's and
// Istio's sniffers look no further either).
const maxMethod = 16

// sniff reads as little as it needs to tell an HTTP/1.x request line (an
// upper-case method and a space) or the HTTP/2 preface from other bytes.
func sniff(r *bufio.Reader) protocol {
	for n := 1; n <= maxMethod+1; n++ {
		b, err := r.Peek(n)
		if err != nil {
			return protoRaw
		}
		switch ch := b[n-1]; {
		case ch == ' ' && n > 1:
			if string(b) != "PRI " {
				return protoHTTP1
			}
			if pre, err := r.Peek(len(h2Preface)); err == nil && string(pre) == h2Preface {
				return protoHTTP2
			}
			return protoRaw
		case ch < 'A' || ch > 'Z':
			return protoRaw
		}
	}
	return protoRaw
}

// peekedConn is a connection whose first bytes were read into r.
type peekedConn struct {
	net.Conn
	r io.Reader
}

func (c *peekedConn) Read(b []byte) (int, error) { return c.r.Read(b) }

// connListener hands sniffed connections to an http.Server.
type connListener struct {
	addr net.Addr
	ch   chan net.Conn
	done chan struct{}
	once sync.Once
}

func newConnListener(addr net.Addr) *connListener {
	return &connListener{addr: addr, ch: make(chan net.Conn), done: make(chan struct{})}
}

func (l *connListener) put(c net.Conn) {
	select {
	case l.ch <- c:
	case <-l.done:
		c.Close()
	}
}

func (l *connListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.ch:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *connListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return nil
}

func (l *connListener) Addr() net.Addr { return l.addr }

// connSet is the connections a port serves outside the HTTP/1 server, to
// close on shutdown.
type connSet struct {
	mu     sync.Mutex
	m      map[net.Conn]struct{}
	closed bool
}

// add tracks c, or closes it and reports false after closeAll.
func (s *connSet) add(c net.Conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		c.Close()
		return false
	}
	s.m[c] = struct{}{}
	return true
}

func (s *connSet) remove(c net.Conn) {
	s.mu.Lock()
	delete(s.m, c)
	s.mu.Unlock()
}

func (s *connSet) closeAll() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	for c := range s.m {
		c.Close()
	}
	clear(s.m)
}

var errNoHijack = errors.New("connection cannot be taken over")
