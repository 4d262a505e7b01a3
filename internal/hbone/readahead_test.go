package hbone

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"testing"
	"time"
)

// tcpPair returns both ends of a loopback TCP connection.
func tcpPair(t *testing.T) (a, b net.Conn) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		accepted <- c
	}()
	a, err = net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	b = <-accepted
	if b == nil {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { a.Close(); b.Close() })
	return a, b
}

// An armed connection takes what the socket holds, up to readAhead, with
// one read however little TLS asks for (its 5-byte record header): the
// rest is served from memory, so a read deadline already passed does not
// stop it. Then a read waits on the socket again, with its deadline and
// end of stream as a plain read has them.
func TestReadAheadTakesQueuedBytesInOneRead(t *testing.T) {
	peer, c := tcpPair(t)
	bc := BatchWrites(c).(*batchConn)
	bc.arm()
	sent := bytes.Repeat([]byte("0123456789abcdef"), 3<<10) // 48 KiB
	if _, err := peer.Write(sent); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 0, len(sent))
	hdr := make([]byte, 5)
	// Loopback may hand the bytes over in more than one piece: read until
	// the first read that takes everything still queued.
	deadline := time.Now().Add(10 * time.Second)
	for len(got) < len(sent) && time.Now().Before(deadline) {
		n, err := bc.Read(hdr)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, hdr[:n]...)
		bc.SetReadDeadline(time.Now().Add(-time.Second))
		buf := make([]byte, 16<<10)
		for {
			n, err := bc.Read(buf)
			got = append(got, buf[:n]...)
			if err != nil {
				if !errors.Is(err, os.ErrDeadlineExceeded) {
					t.Fatalf("read from memory: %v", err)
				}
				break
			}
		}
		bc.SetReadDeadline(time.Time{})
		if len(got) < len(sent) {
			time.Sleep(10 * time.Millisecond)
		}
	}
	if !bytes.Equal(got, sent) {
		t.Fatalf("read %d bytes, want the %d sent, in order", len(got), len(sent))
	}
	if len(got) <= len(hdr) {
		t.Fatal("nothing was read ahead")
	}

	bc.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	if _, err := bc.Read(hdr); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read of an empty socket past its deadline: %v, want os.ErrDeadlineExceeded", err)
	}
	bc.SetReadDeadline(time.Time{})
	peer.Write([]byte("end"))
	peer.Close()
	rest, err := io.ReadAll(bc)
	if err != nil || string(rest) != "end" {
		t.Fatalf("after the peer closed: %q, %v; want \"end\" and io.EOF", rest, err)
	}
	if bc.ahead != nil {
		t.Error("a buffer is held with nothing left to read")
	}
}
