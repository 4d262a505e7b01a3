package proxy

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptrace"
	"net/textproto"
	"strconv"
	"strings"
	"testing"
	"time"
)

// serveForwardCase answers the app paths under /app/fwd/ the forwarding tests
// use; false for any other path.
func serveForwardCase(m *mesh, w http.ResponseWriter, r *http.Request) bool {
	switch r.URL.Path {
	case "/app/fwd/hop":
		// Reports the request's hop-by-hop headers and sends its own.
		for _, k := range []string{"X-Named-By-Connection", "Keep-Alive", "Te", "Proxy-Authorization"} {
			w.Header().Set("X-Seen-"+k, strconv.Quote(r.Header.Get(k)))
		}
		w.Header().Set("Connection", "X-Resp-Named")
		w.Header().Set("X-Resp-Named", "1")
		w.Header().Set("Keep-Alive", "timeout=5")
		w.Header().Set("X-Resp-Kept", "1")
		io.WriteString(w, "hop")
	case "/app/fwd/stream":
		// A chunked response whose first chunk is flushed and whose
		// end waits for m.release.
		io.WriteString(w, "first\n")
		w.(http.Flusher).Flush()
		select {
		case <-m.release:
		case <-r.Context().Done():
			return true
		}
		io.WriteString(w, "last\n")
	case "/app/fwd/hints":
		w.Header().Set("Link", "</style.css>; rel=preload")
		w.WriteHeader(http.StatusEarlyHints)
		w.Header().Del("Link")
		io.WriteString(w, "hinted")
	case "/app/fwd/trailer":
		w.Header().Set("Trailer", "X-Checksum")
		io.WriteString(w, "body")
		w.Header().Set("X-Checksum", "abc")
	case "/app/fwd/gather":
		m.gather.Load().arrive(r.Context())
		io.WriteString(w, "gathered")
	case "/app/fwd/cut":
		// Promises 100 bytes, sends 10, and ends the connection.
		w.Header().Set("Content-Length", "100")
		io.WriteString(w, "0123456789")
		w.(http.Flusher).Flush()
		panic(http.ErrAbortHandler)
	default:
		return false
	}
	return true
}

// fwdGet sends req through the waypoint with a fresh HTTP/1.1 client.
func fwdGet(t *testing.T, m *mesh, req *http.Request) *http.Response {
	t.Helper()
	res, err := m.h1Client(vipHTTP).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { res.Body.Close() })
	return res
}

func fwdRequest(t *testing.T, ctx context.Context, path string) *http.Request {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://reviews"+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	return req
}

// TestForwardHopByHop: hop-by-hop headers, and those the Connection
// header names, are not forwarded either way; "Te: trailers" is.
func TestForwardHopByHop(t *testing.T) {
	m := newMesh(t, bounds{})
	req := fwdRequest(t, context.Background(), "/app/fwd/hop")
	req.Header.Set("Connection", "X-Named-By-Connection")
	req.Header.Set("X-Named-By-Connection", "1")
	req.Header.Set("Keep-Alive", "timeout=5")
	req.Header.Set("Proxy-Authorization", "Basic eDp5")
	req.Header.Set("Te", "trailers")
	res := fwdGet(t, m, req)
	want := map[string]string{
		"X-Seen-X-Named-By-Connection": `""`,
		"X-Seen-Keep-Alive":            `""`,
		"X-Seen-Proxy-Authorization":   `""`,
		"X-Seen-Te":                    `"trailers"`,
		"X-Resp-Kept":                  "1",
		"X-Resp-Named":                 "",
		"Keep-Alive":                   "",
	}
	for k, v := range want {
		if got := res.Header.Get(k); got != v {
			t.Errorf("response header %s = %q, want %q", k, got, v)
		}
	}
}

// TestForwardStreamsChunkedResponse: a response of unknown length reaches
// the client as the app flushes it, not when it ends.
func TestForwardStreamsChunkedResponse(t *testing.T) {
	m := newMesh(t, bounds{})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	res := fwdGet(t, m, fwdRequest(t, ctx, "/app/fwd/stream"))
	br := bufio.NewReader(res.Body)
	line, err := br.ReadString('\n')
	if err != nil || line != "first\n" {
		t.Fatalf("first chunk %q, %v; want it before the response ends", line, err)
	}
	close(m.release)
	rest, err := io.ReadAll(br)
	if err != nil || string(rest) != "last\n" {
		t.Errorf("rest %q, %v", rest, err)
	}
}

// TestForwardEarlyHints: a 1xx response before the final one is passed on.
func TestForwardEarlyHints(t *testing.T) {
	m := newMesh(t, bounds{})
	var hints []string
	ctx := httptrace.WithClientTrace(context.Background(), &httptrace.ClientTrace{
		Got1xxResponse: func(code int, h textproto.MIMEHeader) error {
			hints = append(hints, strconv.Itoa(code)+" "+h.Get("Link"))
			return nil
		},
	})
	res := fwdGet(t, m, fwdRequest(t, ctx, "/app/fwd/hints"))
	body, _ := io.ReadAll(res.Body)
	if res.StatusCode != 200 || string(body) != "hinted" {
		t.Fatalf("final response %d %q", res.StatusCode, body)
	}
	if len(hints) != 1 || hints[0] != "103 </style.css>; rel=preload" {
		t.Errorf("1xx responses seen by the client: %q, want the app's 103 with its Link", hints)
	}
	if res.Header.Get("Link") != "" {
		t.Errorf("the 103's Link header leaked into the final response")
	}
}

// TestForwardTrailers: HTTP/1.1 trailers the app announces reach the
// client.
func TestForwardTrailers(t *testing.T) {
	m := newMesh(t, bounds{})
	res := fwdGet(t, m, fwdRequest(t, context.Background(), "/app/fwd/trailer"))
	body, err := io.ReadAll(res.Body)
	if err != nil || string(body) != "body" {
		t.Fatalf("body %q, %v", body, err)
	}
	if got := res.Trailer.Get("X-Checksum"); got != "abc" {
		t.Errorf("trailer X-Checksum %q, want abc", got)
	}
}

// TestForwardCutResponse: a response the app cuts short is cut short for
// the client too: its body ends in an error, never a clean end.
func TestForwardCutResponse(t *testing.T) {
	m := newMesh(t, bounds{})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	res := fwdGet(t, m, fwdRequest(t, ctx, "/app/fwd/cut"))
	body, err := io.ReadAll(res.Body)
	if err == nil {
		t.Fatalf("body %q read to a clean end; want an error", body)
	}
	if errors.Is(err, context.DeadlineExceeded) || !strings.HasPrefix(string(body), "0123456789") {
		t.Errorf("body %q, %v: want the 10 bytes sent, then the connection's end", body, err)
	}
}
