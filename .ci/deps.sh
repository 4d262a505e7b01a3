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
# ../shared/tools/kube-testenv.sh (the e2e API server) needs curl and openssl.
command -v curl >/dev/null || need+=(curl ca-certificates)
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

if [[ $(id -u) -ne 0 ]]; then
	echo "deps: note: tests and the demo create network namespaces and need root" >&2
fi
