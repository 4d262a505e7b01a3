// Package hbone implements HBONE, the tunnel between ztunnels and waypoints:
// HTTP/2 CONNECT streams over mutual TLS 1.3 with SPIFFE identities.
//
// It carries its own small HTTP/2 connection layer, built on the frame codec
// and HPACK of golang.org/x/net/http2, instead of net/http's client and
// server, because a tunnel needs what those cannot give: each direction of a
// stream ends on its own (TCP half-close becomes END_STREAM, both ways), a
// stream is a net.Conn handed to a copier, and flow-control windows and frame
// sizes are set for bulk transfer. Anything HTTP/2 allows that a tunnel does
// not use (server push, priorities, trailers, request bodies on non-CONNECT
// methods) is refused or ignored as the RFC permits.
//
// The hot path keeps hand-offs few: a client may send a tunnel's first bytes
// with its CONNECT (early data, held by the server until it answers 200);
// writers queued on a connection share one flush; and a stream joined to a
// TCP socket gets its data written there by the read loop itself, with no
// goroutine of its own unless the socket is full.
//
// Both sides bound what the peer can make them hold, since holding a mesh
// identity makes no peer trustworthy: control frames queued unread, a
// header block's bytes and CONTINUATION frames, and, on a server, the time
// to finish the handshake, to send a first stream and to stay idle, and
// the handlers, connections and handshakes running per connection, per
// peer identity and in all (Limits). A handler keeps its stream's slot
// until it returns, also after the peer reset the stream (which cancels
// the handler's context). A peer that floods is cut off with
// GOAWAY(ENHANCE_YOUR_CALM); one that runs into a cap is refused.
//
// The package knows nothing of workloads, policy or the control plane: the
// server hands its handler the verified peer identity and the request
// metadata, and the client takes the TLS configuration and the dialer from
// its caller. It is shared by ztunnel and the waypoint.
package hbone
