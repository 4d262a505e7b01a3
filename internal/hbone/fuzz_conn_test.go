package hbone

import (
	"bytes"
	"context"
	"io"
	"net"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// serveRaw runs the server side of a connection over a pipe (no TLS: the
// HTTP/2 layer is what is under test), feeds it input after the client
// preface, and returns when the server has given up on the connection.
func serveRaw(t testing.TB, input []byte) {
	srvSide, cliSide := net.Pipe()
	srv, err := NewServer(echoHandler, ServerOptions{})
	if err != nil {
		t.Fatal(err)
	}
	c := newConn(srvSide, false, DefaultStreamWindow, DefaultConnWindow)
	go io.Copy(io.Discard, cliSide) // whatever the server answers
	done := make(chan struct{})
	go func() {
		defer close(done)
		if c.writePreface() != nil || c.readPreface() != nil {
			c.Close()
			return
		}
		c.readLoop(func(f *http2.MetaHeadersFrame) error {
			return srv.newStream(context.Background(), c, f, spiffeid.RequireFromString("spiffe://td/ns/a/sa/b"))
		})
	}()
	cliSide.SetWriteDeadline(time.Now().Add(2 * time.Second))
	cliSide.Write(append([]byte(http2.ClientPreface), input...))
	cliSide.Close()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("server did not give up on a closed connection")
	}
	c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(ctx); err != nil {
		t.Fatalf("handlers still running after the connection died: %v", err)
	}
}

// frames builds a valid opening for the corpus: SETTINGS, a CONNECT, data.
func frames(extra func(fr *http2.Framer)) []byte {
	var b bytes.Buffer
	fr := http2.NewFramer(&b, nil)
	fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 1 << 20})
	var hb bytes.Buffer
	enc := hpack.NewEncoder(&hb)
	enc.WriteField(hpack.HeaderField{Name: ":method", Value: "CONNECT"})
	enc.WriteField(hpack.HeaderField{Name: ":authority", Value: "10.0.0.1:80"})
	fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: hb.Bytes(), EndHeaders: true})
	fr.WriteData(1, false, []byte("hello"))
	if extra != nil {
		extra(fr)
	}
	return b.Bytes()
}

// FuzzServerConn throws arbitrary frame sequences at the server: it must
// neither panic nor hang, and must release every handler once the
// connection is gone.
func FuzzServerConn(f *testing.F) {
	f.Add(frames(nil))
	f.Add(frames(func(fr *http2.Framer) { fr.WriteData(1, true, []byte("bye")) }))
	f.Add(frames(func(fr *http2.Framer) { fr.WriteRSTStream(1, http2.ErrCodeCancel) }))
	f.Add(frames(func(fr *http2.Framer) { fr.WriteWindowUpdate(1, 1<<31-1); fr.WriteWindowUpdate(0, 1<<31-1) }))
	f.Add(frames(func(fr *http2.Framer) { fr.WriteGoAway(0, http2.ErrCodeNo, nil); fr.WritePing(false, [8]byte{1}) }))
	f.Add(frames(func(fr *http2.Framer) { fr.WriteData(3, false, []byte("unknown stream")) }))
	f.Add(frames(func(fr *http2.Framer) { fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 0}) }))
	f.Add([]byte{0, 0, 0, 4, 0, 0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, input []byte) {
		serveRaw(t, input)
	})
}
