// Package grpcecho is the Gateway API conformance suite's gRPC echo service
// (gateway_api_conformance.echo_basic.grpcecho.GrpcEcho), generated from
// grpcecho.proto, for the test app and the tests that call it.
package grpcecho

// Generated with Debian's protoc, protoc-gen-go pinned to the module's
// google.golang.org/protobuf version and protoc-gen-go-grpc (see the
// Makefile's generate target).
//go:generate protoc --go_out=. --go_opt=paths=source_relative --go-grpc_out=. --go-grpc_opt=paths=source_relative grpcecho.proto
