// Package security holds the L4 authorization wire types (istio.security),
// field-compatible with Istio's ambient API.
package security

// Generated like ../workload.pb.go (see the Makefile's generate target).
//go:generate protoc --go_out=. --go_opt=paths=source_relative authorization.proto
