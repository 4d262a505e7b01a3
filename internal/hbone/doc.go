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
// Bulk transfer costs syscalls and copies more than protocol work, and a
// syscall costs microseconds on a virtual machine, so each step moves up
// to 256 KiB at once: one read of the app's socket (copyFromTCP), one
// DATA frame whose TLS records leave in one socket write (batchConn), one
// read under TLS on the far side (read-ahead), one write to the app's
// socket. Through two ztunnels that is about 20 read and write syscalls
// per MB where 64 KiB steps made 70. A DATA frame is written around the
// framer, which would copy it whole into a buffer it keeps for the
// connection's life (writeDataLocked); reading, the framer does keep one
// as large as the largest frame received, maxReadFrameSize at most.
//
// None of it lets a peer make us hold more: the app's socket is read for
// no more than the stream's send credit, and not at all while there is
// none, so a peer that stops granting credit leaves the bytes in the
// socket (TCP pushes back on the app) and costs no buffer; received
// bytes are credited back only once the app's socket took them, so a
// stream holds at most its window, and a connection one read-ahead and
// one write batch besides.
//
// A client may also join a tunnel before its answer (ConnectRequest.Join):
// Connect returns once the request and early data are written, and the
// caller's bytes follow as the server's stream window allows, the window
// bounding what the server holds before it answers. Reads wait for the
// answer. A refusal fails the stream's Read and Write with the
// *StatusError (status and reason); an end before any answer (a reset,
// GOAWAY, the connection's failure, the Connect context's deadline) with a
// *NotAnsweredError. Join resets a TCP socket joined to a stream never
// answered 200 (SO_LINGER 0): its app reads ECONNRESET, never an orderly
// end it could take for an empty response.
//
// Retries: a Pool opens a tunnel again on another connection, up to three
// times, when the server refused it without processing it (REFUSED_STREAM,
// a GOAWAY whose last stream id is below it) or its connection was full or
// going away; the connection's own failure is never retried, since the
// server may have acted on the request. A stream Connect waits for is
// retried before Connect returns. A joined stream is retried after it too,
// inside Join, but only while its early data is all it sent: the early
// data is held (at most one 16 KiB buffer) until the answer and sent
// again; once the caller's bytes beyond it went out before the answer,
// they are spent, and a refusal fails the stream and resets its socket.
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
