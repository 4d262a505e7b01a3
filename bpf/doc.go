// Package bpf is zmesh's traffic capture: an sk_lookup program attached to
// each ambient pod's network namespace that steers new TCP connections to
// ztunnel's in-pod listeners (outbound → 15001, inbound → 15006), with its
// maps (listener SOCKMAP, config, probe sources, bypass 4-tuples, per-CPU
// counters), and a small typed API to load, attach, configure, pin and read
// it. The C source is capture.c; the compiled objects and bindings are
// committed and rebuilt by `make generate`.
//
// It imports nothing of zmesh's own.
package bpf
