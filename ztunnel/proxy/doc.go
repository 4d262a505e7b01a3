// Package proxy is ztunnel's L4 data path for the pods of its node: per
// pod, listeners opened inside the pod's network namespace (15001 outbound
// capture, 15006 inbound plaintext, 15008 inbound HBONE, 127.0.0.1:15080
// SOCKS5), the outbound decision and HBONE client pool, inbound policy, and
// draining. Decisions (PlanOutbound, AuthorizeInbound) are pure functions
// of a state snapshot; the rest executes them.
package proxy
