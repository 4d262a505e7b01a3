// Package proxy is ztunnel's L4 data path for the pods of its node: per
// pod, listeners opened inside the pod's network namespace (15001 outbound
// capture, 15006 inbound plaintext, 15008 inbound HBONE, 127.0.0.1:15080
// SOCKS5), the outbound decision and HBONE client pool, inbound policy, and
// draining. Decisions (PlanOutbound, AuthorizeInbound, InboundSource) are
// pure functions of a state snapshot; the rest executes them. What a peer
// can make it do is bounded: a client address is the tunnel's own unless
// the destination's waypoint vouches for another, ztunnel's own ports are
// never a destination, and the log lines of refusals are rate-limited.
package proxy
