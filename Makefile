# zmesh — see README.md. Every target installs what it needs (.ci/deps.sh).
SHELL := /bin/bash
GO ?= go
export GOTOOLCHAIN := local

# Packages that create network namespaces run one at a time.
NETNS_PKGS := ./bpf/... ./cni/... ./ztunnel/... ./e2e/...
BENCH_PKGS := ./ztunnel/hbone/ ./ztunnel/inpod/ ./ztunnel/proxy/ ./cni/plugin/
BENCH_COUNT ?= 3
BENCH_TIME ?= 1s

.PHONY: all build test demo bench bench-quick generate lint deps clean

all: build

deps:
	@.ci/deps.sh

build: deps
	$(GO) build ./...
	$(GO) build -o bin/ ./e2e/demo ./e2e/bench/benchratio

# The README's test command: lint, then every test (netns tests need root).
test: deps lint
	$(GO) test -count=1 -timeout 10m $$($(GO) list ./... | grep -v -E '^github.com/zmesh/zmesh/(bpf|cni|ztunnel|e2e)(/|$$)')
	$(GO) test -count=1 -p 1 -timeout 15m $(NETNS_PKGS)
	$(GO) test -count=1 -race -timeout 15m ./identity/... ./ztunnel/... ./api/... ./cni/agent/...

# The main job: a local mesh with no cluster (root: network namespaces).
demo: deps
	$(GO) run ./e2e/demo

bench: deps
	$(GO) test -run '^$$' -bench . -benchmem -count $(BENCH_COUNT) -benchtime $(BENCH_TIME) $(BENCH_PKGS) | $(GO) run ./e2e/bench/benchratio -baseline tcp,tls,direct,without

bench-quick:
	$(MAKE) bench BENCH_COUNT=1 BENCH_TIME=300ms

# Regenerates committed generated code: the eBPF objects and their Go
# bindings (bpf/, clang + libbpf headers, no kernel BTF needed) and the wire
# protobufs (api/, protoc + protoc-gen-go pinned to go.mod's runtime).
generate:
	@ZMESH_GENERATE=1 .ci/deps.sh
	PATH="$$($(GO) env GOPATH)/bin:$$PATH" $(GO) generate ./...

# The Istio and Gateway API CRDs in deploy/crds/, copied from the modules
# pinned in go.mod (Decision 11).
.PHONY: generate-crds
generate: generate-crds
generate-crds:
	GO=$(GO) deploy/gen-crds.sh

lint: deps
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(GO) test -count=1 -run 'TestDependencyDirection|TestRulesCatchForbiddenImports' ./e2e/

clean:
	rm -rf bin
