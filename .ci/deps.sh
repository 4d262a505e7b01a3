#!/usr/bin/env bash
# Installs what zmesh's build, tests and demo need, idempotently: a fresh
# machine has only Go and the Debian base. Go modules come through the
# module proxy on first build.
set -euo pipefail

need=()
command -v ip >/dev/null || need+=(iproute2)
command -v make >/dev/null || need+=(make)
command -v git >/dev/null || need+=(git)
command -v gcc >/dev/null || need+=(gcc libc6-dev) # -race needs cgo
# The tests' kube test env (internal/kubetest) needs nothing but go; curl
# and openssl are for people poking at it by hand.
command -v curl >/dev/null || need+=(curl ca-certificates)
# make images puts the system's CA bundle in zmeshd's image.
[[ -f /etc/ssl/certs/ca-certificates.crt ]] || need+=(ca-certificates)
command -v openssl >/dev/null || need+=(openssl)
# The CNI chain tests run Debian's reference plugins (bridge, host-local).
[[ -x /usr/lib/cni/bridge && -x /usr/lib/cni/host-local ]] || need+=(containernetworking-plugins)
if [[ ${ZMESH_GENERATE:-} == 1 ]]; then
	# bpf2go: clang for the BPF target, libbpf's helper headers, kernel uapi.
	command -v clang >/dev/null || need+=(clang llvm)
	[[ -f /usr/include/bpf/bpf_helpers.h ]] || need+=(libbpf-dev)
	[[ -f /usr/include/linux/bpf.h ]] || need+=(linux-libc-dev)
	command -v protoc >/dev/null || need+=(protobuf-compiler)
fi

if [[ ${ZMESH_BENCH:-} == 1 ]]; then
	# make bench: the peers the mesh is measured against, and iperf3.
	command -v stunnel4 >/dev/null || need+=(stunnel4)
	command -v haproxy >/dev/null || need+=(haproxy)
	command -v iperf3 >/dev/null || need+=(iperf3)
	# nginx: the waypoint's HTTP reverse-proxy baseline (mutual TLS and plain).
	command -v nginx >/dev/null || need+=(nginx-light)
fi

if ((${#need[@]})); then
	if [[ $(id -u) -ne 0 ]]; then
		echo "deps: missing ${need[*]}; run as root or install them" >&2
		exit 1
	fi
	echo "deps: installing ${need[*]}"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

if [[ ${ZMESH_GENERATE:-} == 1 ]]; then
	# protoc-gen-go pinned to the protobuf runtime in go.mod.
	pgv=$(go list -m -f '{{.Version}}' google.golang.org/protobuf)
	gobin=$(go env GOPATH)/bin
	if [[ "$("$gobin/protoc-gen-go" --version 2>/dev/null)" != "protoc-gen-go $pgv" ]]; then
		GOBIN=$gobin go install "google.golang.org/protobuf/cmd/protoc-gen-go@$pgv"
	fi
	# protoc-gen-go-grpc (e2e/podapp/grpcecho): its own module, pinned here.
	pggv=v1.6.1
	if [[ "$("$gobin/protoc-gen-go-grpc" --version 2>/dev/null)" != "protoc-gen-go-grpc ${pggv#v}" ]]; then
		GOBIN=$gobin go install "google.golang.org/grpc/cmd/protoc-gen-go-grpc@$pggv"
	fi
fi

# CNI spec 1.1.0 needs the reference plugins newer than Debian's (which stop
# at 1.0.0): bridge and host-local built from their pinned module.
cni_ref=v1.9.1
cni_ref_dir=${XDG_CACHE_HOME:-$HOME/.cache}/zmesh/cni-plugins-$cni_ref
if [[ ! -x $cni_ref_dir/bridge || ! -x $cni_ref_dir/host-local ]]; then
	echo "deps: building CNI reference plugins $cni_ref"
	GOFLAGS= GOBIN=$cni_ref_dir go install \
		"github.com/containernetworking/plugins/plugins/main/bridge@$cni_ref" \
		"github.com/containernetworking/plugins/plugins/ipam/host-local@$cni_ref"
fi

if [[ ${ZMESH_BENCH:-} == 1 ]]; then
	# fortio for make bench, outside go.mod, in a cache directory. 1.68.2
	# is the newest release whose dependencies all resolve here (1.69 and
	# later need a module the proxy refuses).
	fortio_ver=v1.68.2
	bench_tools=${XDG_CACHE_HOME:-$HOME/.cache}/zmesh/bench-tools
	if [[ "$("$bench_tools/fortio" version 2>/dev/null)" != "${fortio_ver#v}" ]]; then
		echo "deps: building fortio $fortio_ver"
		GOFLAGS= GOBIN=$bench_tools go install "fortio.org/fortio@$fortio_ver"
	fi
	# benchstat for make bench-compare, pinned the same way.
	perf_ver=v0.0.0-20260908200009-22c9c6c9d4da
	if ! go version -m "$bench_tools/benchstat" 2>/dev/null | grep -q "golang.org/x/perf[[:space:]]*$perf_ver"; then
		echo "deps: building benchstat (golang.org/x/perf $perf_ver)"
		GOFLAGS= GOBIN=$bench_tools go install "golang.org/x/perf/cmd/benchstat@$perf_ver"
	fi
fi

if [[ $(id -u) -ne 0 ]]; then
	echo "deps: note: tests and the demo create network namespaces and need root" >&2
fi
