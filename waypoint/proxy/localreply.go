package proxy

import (
	"io"
	"net/http"
	"strconv"
)

// localReply answers without an upstream, as Envoy's local replies do: a
// text/plain body when there is one; a gRPC request gets the same reply
// in gRPC's terms (grpcReply).
func (x *exchange) localReply(code int, body, flag string) {
	x.reply(code, body, flag, -1)
}

// reply is localReply with the grpc-status a gRPC request gets instead of
// the one code maps to; grpcStatus < 0 maps code. A plain request gets
// code and body whatever grpcStatus says (Envoy's fault filter answers a
// gRPC abort to a plain request with 200 and its body).
func (x *exchange) reply(code int, body, flag string, grpcStatus int) {
	if flag != "" {
		x.flag(flag)
	}
	if x.grpc {
		if grpcStatus < 0 {
			grpcStatus = grpcStatusFor(code)
		}
		x.grpcReply(grpcStatus, body)
		return
	}
	x.plainReply(code, body)
}

// plainReply writes code with body as text/plain, no body to HEAD.
func (x *exchange) plainReply(code int, body string) {
	h := x.w.Header()
	if body != "" {
		h.Set("Content-Type", "text/plain")
	}
	h.Set("Content-Length", strconv.Itoa(len(body)))
	x.w.WriteHeader(code)
	if body != "" && x.r.Method != http.MethodHead {
		io.WriteString(x.w, body)
	}
}

// grpcReply answers a gRPC request as Envoy answers it locally: a
// trailers-only response, HTTP 200 with grpc-status and the reply's text
// as grpc-message in the one HEADERS frame that ends the stream. A gRPC
// client reads an HTTP error status as an "unexpected HTTP status" of
// code Unknown or Unavailable and drops the text; this way it gets the
// status and message a gRPC server would have sent. The access log and
// metrics then see 200 and the grpc-status, as Envoy's do.
func (x *exchange) grpcReply(grpcStatus int, msg string) {
	h := x.w.Header()
	h.Set("Content-Type", "application/grpc")
	h.Set("Grpc-Status", strconv.Itoa(grpcStatus))
	if msg != "" && x.r.Method != http.MethodHead {
		h.Set("Grpc-Message", grpcMessage(msg))
	}
	// Present and empty: the HTTP/2 server adds no "content-length: 0"
	// (Envoy sends none). Nothing is flushed before the handler returns,
	// so the server ends the stream with these headers.
	h["Content-Length"] = nil
	x.w.WriteHeader(http.StatusOK)
}
