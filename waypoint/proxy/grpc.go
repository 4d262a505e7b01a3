package proxy

import (
	"net/http"
	"strconv"
	"strings"

	"github.com/zmesh/zmesh/waypoint/upstream"
)

// isGRPC says whether a response is gRPC (Envoy's test: the content type).
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
