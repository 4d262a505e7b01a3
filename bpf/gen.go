package bpf

// The compiled program and its Go bindings are committed; `make generate`
// rebuilds them with clang and libbpf's headers (no kernel BTF needed).
// Little-endian only: the nodes zmesh targets (amd64, arm64).
//go:generate go run github.com/cilium/ebpf/cmd/bpf2go -target bpfel -cc clang -cflags "-O2 -g -Wall -Werror -I/usr/include/x86_64-linux-gnu" -type pod_config -type addr_key -type tuple_key capture capture.c
