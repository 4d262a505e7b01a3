// Package proxy is the waypoint's data plane: it terminates HBONE from
// client ztunnels, serves each tunnel as HTTP or TCP according to the
// current configuration snapshot, and sends each request to an endpoint
// over HBONE.
//
// # Pipeline
//
// A connection on the HBONE port completes TLS 1.3 with the waypoint's
// certificate, requiring a client certificate that chains to the mesh's
// roots. Each CONNECT stream's :authority (a service VIP:port) selects a
// config.Chain of the snapshot; a destination without one is refused
// with 400, as ztunnel refuses an authority that is not its pod's: the
// client asked for something this waypoint does not serve. Before the
// first snapshot every CONNECT is refused with 503 (not ready).
//
//   - ChainTCP: the chain's TCPFilters (network RBAC) decide the tunnel
//     once, on the peer's identity, its address and the destination, with
//     no HTTP attributes; denied, the CONNECT is refused with 403 and
//     nothing is dialled (flag RBAC and the deciding policy recorded; an
//     AUDIT match is logged). Then an endpoint of the TCP cluster is
//     dialled before the CONNECT is answered (no endpoint, or no
//     connection: 503), and the bytes are joined both ways with
//     half-closes.
//   - ChainHTTP: the first bytes tell HTTP/2 (the preface) from HTTP/1.
//     HTTP/2 is served by golang.org/x/net/http2's server on the stream;
//     HTTP/1 by one net/http server the tunnel is handed to (keep-alive,
//     header timeouts and Upgrade hijacking are net/http's).
//   - ChainSniff: at most SniffBytes, for at most SniffTimeout; an HTTP/1.x
//     request line or the HTTP/2 preface is HTTP, anything else (also
//     silence: a server-first protocol) is TCP, decided by the TCPFilters
//     as above (denied: the answered tunnel is closed without a byte
//     forwarded) and, when allowed, forwarded.
//
// Each HTTP request then runs, in order:
//
//  1. The upgrade check: only WebSocket upgrades pass. An h2c upgrade
//     would turn the connection into a raw tunnel to the app whose later
//     requests are never routed or authorized here, so any other upgrade
//     is refused with 403, as Envoy refuses one it is not configured for.
//  2. Path normalization (Istio's default, Envoy's normalize_path):
//     encoded unreserved characters are decoded and dot segments removed,
//     so that RBAC and routes see the path the app will resolve; slashes
//     are not merged and %2F is kept. The upstream gets the result.
//  3. x-request-id: a UUIDv4 when absent, kept when present; trace
//     headers (traceparent, tracestate, b3, baggage) pass untouched.
//  4. The chain's filters: RBAC (403 "RBAC: access denied", flag RBAC),
//     fault (delay DI, abort "fault filter abort" FI, at most
//     max_active_faults at once).
//  5. route.Decide (no route: 404, flag NR), then CORS (a preflight from
//     an allowed origin is answered here).
//  6. The route's action: redirect, direct response, or forward.
//     Forwarding picks the cluster's endpoint with its upstream.Balancer
//     (built once per snapshot; each request is balanced on its own, also
//     on a shared HTTP/2 connection; a route's hash policies feed ring
//     hash and Maglev), mirrors the request if the route says so, and
//     sends it through net/http/httputil.ReverseProxy, which strips
//     hop-by-hop headers, streams bodies (flushing at once, for gRPC),
//     passes trailers and joins Upgrades.
//
// Local replies are Envoy's, word for word: 503 "no healthy upstream"
// (UH), 503 "upstream connect error or disconnect/reset before headers.
// reset reason: connection failure" (UF), 504 "upstream request timeout"
// (UT, the upstream request cancelled). A gRPC request (HTTP/2 with gRPC's
// content type) gets each local reply as Envoy sends it: a trailers-only
// HTTP 200 whose grpc-status is mapped from the reply's HTTP status and
// whose grpc-message is its text. One telemetry.Record per request,
// or per TCP tunnel, goes to the Observer.
//
// Upstream, each HTTP connection is an HBONE stream to the endpoint's pod
// IP on UpstreamHBONEPort, CONNECT to the endpoint's address, with
// Forwarded: for=<client IP>. The HBONE connections beneath are pooled per
// endpoint by hbone.Pool; the HTTP connections inside the streams are
// pooled per (cluster, endpoint, identity, client IP, protocol), since
// the Forwarded header belongs to the stream and each connection counts
// against one cluster's circuit breakers: HTTP/2 multiplexed
// (x/net/http2's transport), HTTP/1.1 kept alive (net/http's). The
// protocol is the cluster's (use_downstream_protocol_config: the
// request's); an Upgrade always goes as HTTP/1.1.
//
// # Trust
//
// The peer's SPIFFE ID, proven by its certificate, is the request's
// source principal. The client's address is the tunnel's TCP peer: the
// client's ztunnel dials the waypoint from the client pod's network
// namespace. A Forwarded header from the peer is not believed: any
// holder of a mesh identity could put any address in it, and source IPs
// decide RBAC rules. X-Forwarded-For is passed on as the client sent it
// and never added to (Envoy without use_remote_address).
//
// Upstream, the endpoint must prove the identity zmeshd gave it: the
// TLS handshake fails otherwise, before a byte of the request is sent
// (503 UF). An endpoint whose identity does not parse is never dialled.
//
// # Bounds
//
// What a peer can make the waypoint hold is bounded, beyond the HBONE
// server's Limits (handshakes, connections and streams per peer and in
// all, idle and first-stream timeouts):
//
//   - HTTP/1: ReadHeaderTimeout (10 s) for a request's headers, also
//     for the first bytes of a tunnel on an HTTP port, so a slowloris
//     peer is cut off however steadily it trickles; IdleTimeout (5 min)
//     between requests; MaxHeaderBytes (60 KiB, Envoy's default) or 431.
//   - HTTP/2: MaxConcurrentStreams (250) per connection, the same header
//     list size, idle and ping timeouts; x/net/http2 bounds its own
//     buffers and resets floods.
//   - Sniffing: SniffBytes (4 KiB) and SniffTimeout (5 s).
//   - Mirrors: at most MaxMirrors (128) in flight, more are dropped;
//     only bodies of known length up to MaxMirrorBody (64 KiB) are
//     copied, other requests are not mirrored.
//   - Upstream: at most MaxUpstreamPools (4096) connection pools, the
//     least recently used idle one closed to make room (when all are busy
//     the request overflows: 503 "... reset reason: overflow", UO);
//     MaxIdleConnsPerPool (256) idle HTTP/1.1 connections per pool, all of
//     them counted against their cluster's max_connections; pools
//     unused for IdleTimeout closed; response headers bounded like
//     request headers.
//   - Circuit breakers, per cluster: max_requests attempts in flight,
//     max_connections upstream connections (over it a request is
//     pending, at most max_pending_requests of them, each for at most the
//     cluster's connect_timeout), max_retries retries in flight; a refusal
//     is 503 "... reset reason: overflow" (UO), never retried.
//
// # Lifecycle
//
// Update swaps the snapshot atomically: a request keeps the snapshot it
// started with, the next request on the same connection takes the new
// one, and balancers carry their live state (requests in flight,
// ejections) to the endpoints that remain. Shutdown closes the
// listeners, sends GOAWAY to HBONE and HTTP/2 peers, closes idle
// HTTP/1.1 connections, and returns once requests in flight finished.
//
// Retries follow the route's RetryPolicy: retry_on conditions (HTTP and
// gRPC), num_retries, per-try timeout (504 UT when it ends the last
// attempt), Envoy's jittered exponential back-off, a fresh endpoint per
// attempt (avoiding those tried with previous_hosts), URX when they run
// out, each retry within the cluster's max_retries. A request body
// streams to the first attempt while up to 64 KiB of it is kept for
// replay; a longer body is not retried.
//
// Every attempt's outcome (status, grpc-status, connect failure, reset,
// timeout) goes to the cluster's outlier detector, whose ejections the
// balancer honours; with every endpoint ejected the reply is 503 "no
// healthy upstream" (UH).
//
// Not implemented: per-route fault configuration (the route table does
// not carry it yet), gRPC timeouts (grpc-timeout), mirroring of streamed bodies, and
// WebSocket over HTTP/2 (extended CONNECT).
package proxy
