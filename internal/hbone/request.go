package hbone

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"golang.org/x/net/http2/hpack"
)

// Request is a CONNECT request as the server's handler sees it.
type Request struct {
	// Target is the :authority: the destination ip:port the client wants.
	Target netip.AddrPort
	// Source is the original client address from Forwarded's for=, if the
	// client sent one.
	Source netip.AddrPort
	// Host is Forwarded's host= (the service hostname the client
	// addressed), if any.
	Host string
	// Baggage and TraceParent are propagated as received.
	Baggage     string
	TraceParent string
	// Peer is the verified SPIFFE ID of the client's certificate.
	Peer spiffeid.ID
	// RemoteAddr is the TCP peer of the tunnel (the client's ztunnel).
	RemoteAddr net.Addr
}

// ConnectRequest is what a client asks for.
type ConnectRequest struct {
	// Target becomes :authority.
	Target netip.AddrPort
	// Source, when valid, becomes Forwarded: for="ip:port".
	Source netip.AddrPort
	// Host, when set, is added to Forwarded as host=.
	Host        string
	Baggage     string
	TraceParent string
	// EarlyData, if any, is the tunnel's first bytes: written with the
	// request, before the answer, so the server has them when it opens the
	// tunnel instead of one round trip later. The server delivers them only
	// if it answers 200. Connect has sent all of it when it returns the
	// stream (the caller counts them as sent).
	EarlyData []byte
	// Join makes Connect return the stream as soon as the request and its
	// early data are written, without waiting for the answer: the caller
	// joins it to its connection at once and saves the wait between the
	// answer and the join. Writes go out as flow control allows (the
	// peer's stream window bounds what it holds before it answers); reads
	// wait for the answer. A refusal fails Read and Write with the
	// *StatusError, and an end before any answer (a reset, GOAWAY, the
	// connection's failure, the context's deadline) with a
	// *NotAnsweredError. Join resets a TCP socket joined to a stream that
	// was never answered 200, so its app cannot take the refusal for an
	// empty response. See the package documentation for retries.
	Join bool
}

// RequestError is a request the server refuses with a status code before any
// handler sees it.
type RequestError struct {
	Status int
	Reason string
}

func (e *RequestError) Error() string {
	return fmt.Sprintf("bad HBONE request (%d): %s", e.Status, e.Reason)
}

func badRequest(format string, args ...any) *RequestError {
	return &RequestError{Status: 400, Reason: fmt.Sprintf(format, args...)}
}

// parseRequest validates a decoded request header block. It is the parser of
// untrusted input on the server side: it accepts the minimal request
// (:method CONNECT and :authority only, as Istio's Go client sends) and
// treats every other header as optional.
func parseRequest(fields []hpack.HeaderField) (*Request, error) {
	var method, authority, protocol string
	var seenMethod, seenAuthority bool
	r := &Request{}
	for _, f := range fields {
		switch f.Name {
		case ":method":
			method, seenMethod = f.Value, true
		case ":authority":
			authority, seenAuthority = f.Value, true
		case ":protocol":
			protocol = f.Value
		case ":scheme", ":path":
			// Not allowed on plain CONNECT (RFC 9113 §8.5), but harmless:
			// some clients send them, so they are ignored rather than
			// refused.
		case "forwarded":
			src, host, err := parseForwarded(f.Value)
			if err != nil {
				return nil, badRequest("header forwarded: %v", err)
			}
			if !r.Source.IsValid() {
				r.Source, r.Host = src, host
			}
		case "baggage":
			r.Baggage = f.Value
		case "traceparent":
			r.TraceParent = f.Value
		default:
			if strings.HasPrefix(f.Name, ":") {
				return nil, badRequest("unknown pseudo-header %q", f.Name)
			}
		}
	}
	if !seenMethod {
		return nil, badRequest("missing :method")
	}
	if method != "CONNECT" {
		return nil, badRequest(":method is %q, want CONNECT", method)
	}
	if protocol != "" {
		return nil, badRequest("extended CONNECT (:protocol %q) is not supported", protocol)
	}
	if !seenAuthority || authority == "" {
		return nil, badRequest("missing :authority")
	}
	target, err := netip.ParseAddrPort(authority)
	if err != nil {
		return nil, badRequest(":authority %q is not ip:port", authority)
	}
	if target.Port() == 0 {
		return nil, badRequest(":authority %q has port 0", authority)
	}
	r.Target = unmap(target)
	return r, nil
}

// requestFields builds the header block of a CONNECT request.
func requestFields(r *ConnectRequest) ([]hpack.HeaderField, error) {
	if !r.Target.IsValid() || r.Target.Port() == 0 {
		return nil, errors.New("hbone: connect request has no target ip:port")
	}
	fields := make([]hpack.HeaderField, 0, 5)
	fields = append(fields,
		hpack.HeaderField{Name: ":method", Value: "CONNECT"},
		hpack.HeaderField{Name: ":authority", Value: r.Target.String()},
	)
	if fwd := formatForwarded(r.Source, r.Host); fwd != "" {
		fields = append(fields, hpack.HeaderField{Name: "forwarded", Value: fwd})
	}
	if r.Baggage != "" {
		fields = append(fields, hpack.HeaderField{Name: "baggage", Value: r.Baggage})
	}
	if r.TraceParent != "" {
		fields = append(fields, hpack.HeaderField{Name: "traceparent", Value: r.TraceParent})
	}
	return fields, nil
}

func unmap(ap netip.AddrPort) netip.AddrPort {
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}
