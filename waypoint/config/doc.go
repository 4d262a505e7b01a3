// Package config turns the Envoy v3 resources zmeshd sends a waypoint into
// the waypoint's immutable compiled form, or refuses them (an xDS NACK) with
// an error naming the field path of the first problem.
//
// The waypoint implements the subset of Envoy that Istio's and Gateway API's
// translations use. Every set field is checked against an allow-list of
// message types and their supported fields, so a field this code does not
// know — a new Envoy field, or one it chose not to implement — is refused
// rather than silently ignored. Unknown protobuf fields are refused too.
//
// It is pure: no I/O, no goroutines. It must not import controlplane/ or
// ztunnel/.
package config
