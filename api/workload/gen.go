package workload

// Generated with Debian's protoc and protoc-gen-go pinned to the module's
// google.golang.org/protobuf version (see the Makefile's generate target).
//go:generate protoc --go_out=. --go_opt=paths=source_relative workload.proto
