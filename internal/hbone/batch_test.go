package hbone

import (
	"bytes"
	"context"
	"io"
	"net"
	"sync"
	"testing"
	"time"
)

// countingConn records every write that reaches the "socket".
type countingConn struct {
	net.Conn
	mu     sync.Mutex
	writes [][]byte
}

func (c *countingConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	c.writes = append(c.writes, bytes.Clone(p))
	c.mu.Unlock()
	return c.Conn.Write(p)
}

func (c *countingConn) count() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.writes)
}

func TestBatchConnHoldsWritesUntilFlush(t *testing.T) {
	a, b := net.Pipe()
	defer b.Close()
	cc := &countingConn{Conn: a}
	bc := BatchWrites(cc).(*batchConn)
	got := make(chan []byte, 1)
	go func() { d, _ := io.ReadAll(b); got <- d }()

	// Before arm (the handshake) every write goes out at once.
	bc.Write([]byte("hello "))
	if cc.count() != 1 {
		t.Fatalf("unarmed write held back: %d writes", cc.count())
	}
	bc.arm()
	for _, rec := range []string{"one ", "two ", "three "} {
		bc.Write([]byte(rec))
	}
	if cc.count() != 1 {
		t.Fatalf("armed writes reached the socket before flush: %d writes", cc.count())
	}
	if err := bc.flush(); err != nil {
		t.Fatal(err)
	}
	if cc.count() != 2 || string(cc.writes[1]) != "one two three " {
		t.Fatalf("flush: %d writes, last %q; want one write of the three records", cc.count(), cc.writes[len(cc.writes)-1])
	}
	if err := bc.flush(); err != nil || cc.count() != 2 {
		t.Fatalf("an empty flush wrote: %d writes, %v", cc.count(), err)
	}
	// What TLS writes on its own (close_notify) goes out at Close.
	bc.Write([]byte("bye"))
	bc.Close()
	if d := <-got; string(d) != "hello one two three bye" {
		t.Fatalf("peer read %q", d)
	}
}

func TestBatchConnFlushesAFullBatch(t *testing.T) {
	a, b := net.Pipe()
	defer b.Close()
	cc := &countingConn{Conn: a}
	bc := BatchWrites(cc).(*batchConn)
	bc.arm()
	go io.Copy(io.Discard, b)
	rec := make([]byte, 16<<10)
	for range maxBatch/len(rec) + 1 {
		if _, err := bc.Write(rec); err != nil {
			t.Fatal(err)
		}
	}
	if cc.count() != 1 {
		t.Fatalf("a batch past maxBatch made %d writes before flush, want 1", cc.count())
	}
	bc.Close()
}

// One 64 KiB write on a stream is five TLS records; on the socket it is
// one write (plus nothing else once the tunnel is up).
func TestStreamWriteIsOneSocketWrite(t *testing.T) {
	got := make(chan int, 1)
	ts := startServer(t, func(ctx context.Context, r *Request, s *Stream) {
		s.Respond(200)
		n, _ := io.Copy(io.Discard, s)
		got <- int(n)
	}, bob, nil)
	c, cc := countedClient(t, ts.addr)
	st, err := c.Connect(context.Background(), target("10.0.0.1:80"))
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(50 * time.Millisecond) // let SETTINGS ACKs and window updates settle
	before := cc.count()
	if _, err := st.Write(make([]byte, 64<<10)); err != nil {
		t.Fatal(err)
	}
	if n := cc.count() - before; n != 1 {
		t.Errorf("a 64 KiB stream write took %d socket writes, want 1", n)
	}
	st.CloseWrite()
	if n := <-got; n != 64<<10 {
		t.Fatalf("server read %d bytes", n)
	}
}

// Writers that queue behind each other on a connection leave the flush to
// the last of them: their frames reach the socket in one write.
func TestQueuedWritersShareOneFlush(t *testing.T) {
	const writers = 8
	got := make(chan string, writers)
	ts := startServer(t, func(ctx context.Context, r *Request, s *Stream) {
		s.Respond(200)
		b, _ := io.ReadAll(s)
		got <- string(b)
	}, bob, nil)
	c, cc := countedClient(t, ts.addr)
	var err error
	streams := make([]*Stream, writers)
	for i := range streams {
		if streams[i], err = c.Connect(context.Background(), target("10.0.0.1:80")); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(50 * time.Millisecond) // let SETTINGS ACKs and window updates settle

	// Hold the write lock while every writer queues behind it.
	c.c.lockWrite()
	before := cc.count()
	var wg sync.WaitGroup
	for i, st := range streams {
		wg.Go(func() {
			if _, err := st.Write([]byte{'a' + byte(i)}); err != nil {
				t.Error(err)
			}
		})
	}
	for c.c.wwait.Load() != writers {
		time.Sleep(time.Millisecond)
	}
	if err := c.c.unlockWrite(); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	if n := cc.count() - before; n != 1 {
		t.Errorf("%d queued writers took %d socket writes, want 1", writers, n)
	}
	for _, st := range streams {
		st.CloseWrite()
	}
	seen := map[string]bool{}
	for range writers {
		seen[<-got] = true
	}
	for i := range writers {
		if s := string([]byte{'a' + byte(i)}); !seen[s] {
			t.Errorf("stream %d's byte %q did not arrive (got %v)", i, s, seen)
		}
	}
}
