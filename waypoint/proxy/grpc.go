package proxy

import (
	"net/http"
	"strconv"
	"strings"

	"github.com/zmesh/zmesh/waypoint/upstream"
)

// isGRPC says whether a request or response is gRPC (Envoy's test: the
// content type).
func isGRPC(h http.Header) bool {
	ct := h.Get("Content-Type")
	return ct == "application/grpc" || strings.HasPrefix(ct, "application/grpc+") || strings.HasPrefix(ct, "application/grpc;")
}

// grpcOutcome is the outlier outcome of a grpc-status value.
func grpcOutcome(v string) upstream.Outcome {
	n, err := strconv.Atoi(v)
	if err != nil || n < 0 {
		return upstream.GRPCStatus(2) // UNKNOWN
	}
	return upstream.GRPCStatus(n)
}

// trailersOnly moves the status of a trailers-only gRPC response (one
// HEADERS frame that ends the stream, grpc-status in it) to the trailers.
// The reverse proxy cannot end a stream with its headers: it sends them,
// then ends the stream, and a gRPC client takes headers that do not end
// the stream as the response's headers, waiting for trailers that never
// come. Headers then trailers is the same response in gRPC's terms.
func trailersOnly(res *http.Response) {
	if res.ProtoMajor != 2 || !isGRPC(res.Header) || res.Header.Get("Grpc-Status") == "" {
		return
	}
	if res.Trailer == nil {
		res.Trailer = http.Header{}
	}
	for _, k := range []string{"Grpc-Status", "Grpc-Message", "Grpc-Status-Details-Bin"} {
		if v, ok := res.Header[k]; ok {
			res.Trailer[k] = v
			delete(res.Header, k)
		}
	}
}

// grpcStatusFor is the grpc-status of a local reply with HTTP status code:
// gRPC's mapping of HTTP statuses, as Envoy applies it to its own replies.
func grpcStatusFor(code int) int {
	switch code {
	case http.StatusBadRequest:
		return 13 // INTERNAL
	case http.StatusUnauthorized:
		return 16 // UNAUTHENTICATED
	case http.StatusForbidden:
		return 7 // PERMISSION_DENIED
	case http.StatusNotFound:
		return 12 // UNIMPLEMENTED
	case http.StatusTooManyRequests, http.StatusBadGateway, http.StatusServiceUnavailable, http.StatusGatewayTimeout:
		return 14 // UNAVAILABLE
	}
	return 2 // UNKNOWN
}

// grpcMessage percent-encodes s as a grpc-message value must be: every
// byte outside space to '~', and '%' itself, as %XX (gRPC over HTTP/2's
// Percent-Encoded). A client decodes it back to s, UTF-8 included.
func grpcMessage(s string) string {
	n := 0
	for i := 0; i < len(s); i++ {
		if grpcEscaped(s[i]) {
			n++
		}
	}
	if n == 0 {
		return s
	}
	const hex = "0123456789ABCDEF"
	b := make([]byte, 0, len(s)+2*n)
	for i := 0; i < len(s); i++ {
		c := s[i]
		if grpcEscaped(c) {
			b = append(b, '%', hex[c>>4], hex[c&15])
		} else {
			b = append(b, c)
		}
	}
	return string(b)
}

func grpcEscaped(c byte) bool { return c < ' ' || c > '~' || c == '%' }
