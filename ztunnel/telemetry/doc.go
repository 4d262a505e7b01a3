// Package telemetry records what ztunnel does with each proxied TCP
// connection: Istio's L4 Prometheus metrics (istio_tcp_*) and one access-log
// line per connection.
//
// Names, labels and label values follow Istio's ztunnel so that existing
// dashboards and alerts keep working: reporter is "source" on the outbound
// side and "destination" on the inbound side, missing values read
// "unknown", connection_security_policy is "mutual_tls" or "unknown", and
// response_flags carries the short failure code ("-", "DENY", "CONNECT", …).
//
// The proxy calls Open when it has decided where a connection goes and Close
// when it is over; everything between is a few atomic adds. The caller
// resolves workloads: this package takes plain values (Peer) and imports
// nothing of zmesh, so the proxy, the admin server and tests can all use it
// without pulling in the state store or the xDS client.
package telemetry
