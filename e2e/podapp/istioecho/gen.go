// Package istioecho is the echo service of Istio's test app
// (proto.EchoTestService), generated from echo.proto, for the test app's
// Istio-compatible mode and its client.
package istioecho

// Generated with Debian's protoc, protoc-gen-go pinned to the module's
// google.golang.org/protobuf version and protoc-gen-go-grpc (see the
// Makefile's generate target).
//go:generate protoc --go_out=. --go_opt=paths=source_relative --go-grpc_out=. --go-grpc_opt=paths=source_relative echo.proto
