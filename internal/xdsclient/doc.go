// Package xdsclient is the data planes' delta xDS client: one gRPC ADS stream
// (DeltaAggregatedResources) to the control plane, wildcard subscriptions to
// the workload discovery types, ACK/NACK per response, a reconnect that
// resumes from the versions already held (also those a restarted data plane
// loaded from disk), and named on-demand requests beside the wildcard.
//
// It is generic: it deals in type URLs and Any payloads and hands them to a
// Handler, which decodes and indexes them (ztunnel's state package). It must
// not import the control plane or the state package; the caller dials the
// connection, so TLS and credentials are not its business either.
package xdsclient
