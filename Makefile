# zmesh — see README.md. Every target installs what it needs (.ci/deps.sh).
SHELL := /bin/bash
GO ?= go
export GOTOOLCHAIN := local

# Packages that create network namespaces run one at a time. The e2e
# suites (e2e/l4, e2e/l7) run last, verbosely: their logs are the evidence
# of what the mesh did in each scenario.
NETNS_PKGS := ./bpf/... ./cni/... ./ztunnel/... ./internal/hbone/ ./deploy/privileges/ $$($(GO) list ./e2e/... | grep -v -E '/e2e/l[47]$$')
BENCH_PKGS := ./internal/hbone/ ./ztunnel/inpod/ ./ztunnel/proxy/ ./cni/plugin/ ./waypoint/proxy/
BENCH_COUNT ?= 3
BENCH_TIME ?= 1s

.PHONY: all build test test-unit demo bench bench-quick bench-micro bench-compare generate lint deps clean images kube-testenv conformance

all: build

deps:
	@.ci/deps.sh

build: deps
	$(GO) build ./...
	$(GO) build -o bin/ ./e2e/demo ./e2e/bench/benchratio

# The real Kubernetes control plane of the integration and e2e tests
# (internal/kubetest): etcd and kube-apiserver/-controller-manager/
# -scheduler built from their pinned Go modules into
# $${XDG_CACHE_HOME:-~/.cache}/kube-testenv/bin once per machine (~14 min
# cold on 2 cores). Tests build it on demand; this builds it ahead.
# `go run ./hack/kube-testenv run` runs one for a shell.
kube-testenv: deps
	$(GO) run ./hack/kube-testenv build

# The README's test command: lint, then every test (netns tests need root).
test: deps lint
	$(GO) test -count=1 -timeout 30m $$($(GO) list ./... | grep -v -E '^github.com/zmesh/zmesh/(bpf|cni|ztunnel|e2e|internal/hbone|deploy/privileges|conformance)(/|$$)')
	$(GO) test -count=1 -p 1 -timeout 25m $(NETNS_PKGS)
	$(GO) test -count=1 -race -timeout 15m ./identity/... ./ztunnel/... ./internal/hbone/ ./internal/xdsclient/ ./internal/meshclient/ ./api/... ./cni/agent/ ./controlplane/model/... ./controlplane/translate/ ./controlplane/xds/ ./controlplane/push/ ./controlplane/status/ ./controlplane/source/dir/ ./controlplane/l7/ ./waypoint/... ./cmd/waypoint/
	$(GO) test -count=1 -p 1 -v -timeout 35m ./e2e/l4/ ./e2e/l7/ ./conformance/

# The Gateway API conformance suite's mesh profiles (MESH-HTTP, MESH-GRPC) on
# the e2e cluster (conformance/, needs root), regenerating the report that is
# committed under conformance/reports/ in the Gateway API project's layout.
# `make test` runs the same suite without writing the report.
GATEWAY_API_VERSION := v1.6.3
CONFORMANCE_REPORT := conformance/reports/$(GATEWAY_API_VERSION)/zmesh/standard-main-default-report.yaml
conformance: deps
	$(GO) test -count=1 -v -timeout 30m ./conformance/ -run TestMeshConformance -args \
		-conformance-profiles MESH-HTTP,MESH-GRPC -report-output $(CURDIR)/$(CONFORMANCE_REPORT)

# The quick loop: tests that need neither root nor an API server.
UNIT_PKGS := ./api/... ./identity/... ./controlplane/model/... ./controlplane/translate/ ./controlplane/xds/ \
	./controlplane/push/ ./controlplane/status/ ./controlplane/source/dir/ ./ztunnel/authz/ ./ztunnel/state/ \
	./internal/xdsclient/ ./internal/meshclient/ ./controlplane/l7/ ./waypoint/... ./ztunnel/telemetry/ ./ztunnel/admin/ ./cmd/zmeshctl/ ./cmd/ztunnel/ ./cmd/waypoint/ ./e2e/bench/report/ ./e2e/bench/benchratio/
test-unit:
	$(GO) test -count=1 $(UNIT_PKGS)

# Every fuzz target of the repository (each `func Fuzz…` in a _test.go),
# one after another, FUZZTIME each (go test's -fuzztime: a duration or
# e.g. 10000x), then how many executions each reached. Not part of
# `make test`. A crasher is written to the package's testdata/fuzz/ and
# fails the target.
FUZZTIME ?= 60s
.PHONY: fuzz
fuzz: deps
	@log=$$(mktemp); sum=$$(mktemp); trap 'rm -f $$log $$sum' EXIT; failed=0; \
	for file in $$(git ls-files '*_test.go' | xargs grep -l '^func Fuzz' | sort); do \
		for fn in $$(sed -n 's/^func \(Fuzz[A-Za-z0-9_]*\)(.*/\1/p' $$file); do \
			pkg=./$$(dirname $$file)/; echo "== $$pkg $$fn ($(FUZZTIME))"; \
			if $(GO) test -run '^$$' -fuzz "^$$fn\$$" -fuzztime $(FUZZTIME) $$pkg > $$log 2>&1; then r=ok; else r=FAIL; failed=1; cat $$log; fi; \
			execs=$$(grep -o 'execs: [0-9]*' $$log | tail -1 | cut -d' ' -f2); \
			printf '%-28s %-22s %4s %s executions\n' "$$pkg" "$$fn" "$$r" "$${execs:-?}" | tee -a $$sum; \
		done; \
	done; echo; echo "fuzz summary ($(FUZZTIME) each):"; cat $$sum; exit $$failed

# The main job: a local mesh with no cluster (root: network namespaces).
# MESH=DIR runs your own Kubernetes/Istio/Gateway API YAML on it instead of
# the tour, until Ctrl-C (what zmeshctl local up -f DIR does).
MESH ?=
demo: deps
	$(GO) run ./e2e/demo $(if $(MESH),-mesh $(abspath $(MESH)))

# The mesh measured end to end (e2e/bench: three nodes in network namespaces,
# L4 paths (direct, mesh, stunnel, haproxy) and L7 ones (waypoint, nginx with
# mTLS, nginx, haproxy HTTP) interleaved, fortio and iperf3;
# needs root), then the Go micro-benchmarks as ratios. Results go to
# e2e/bench/results/. BENCH_FLAGS passes flags to the e2e bench (e.g.
# -workloads maxrps -profile maxrps).
BENCH_FLAGS ?=
bench: deps
	@ZMESH_BENCH=1 .ci/deps.sh
	$(GO) build -o bin/ ./cmd/zmeshd ./cmd/ztunnel ./cmd/waypoint ./cmd/zmesh-cni-agent ./cmd/zmesh-cni ./e2e/bench
	bin/bench -bin bin -fortio "$${XDG_CACHE_HOME:-$$HOME/.cache}/zmesh/bench-tools/fortio" -out e2e/bench/results $(BENCH_FLAGS)
	$(MAKE) bench-micro

bench-micro:
	$(GO) test -run '^$$' -bench . -benchmem -count $(BENCH_COUNT) -benchtime $(BENCH_TIME) $(BENCH_PKGS) | $(GO) run ./e2e/bench/benchratio -baseline tcp,tls,direct,without,reverseproxy

# The micro-benchmarks of BASE (a revision) against the working tree,
# alternated round by round and compared with benchstat (e2e/bench/compare.sh;
# COUNT rounds, BENCH_TIME each): make bench-compare BASE=<rev>.
BASE ?= HEAD
bench-compare: deps
	@ZMESH_BENCH=1 .ci/deps.sh
	e2e/bench/compare.sh $(BASE) $(BENCH_PKGS)

# About 5 minutes: the e2e bench with 2 short repetitions; the
# micro-benchmarks run with `make bench-micro`.
bench-quick: deps
	@ZMESH_BENCH=1 .ci/deps.sh
	$(GO) build -o bin/ ./cmd/zmeshd ./cmd/ztunnel ./cmd/waypoint ./cmd/zmesh-cni-agent ./cmd/zmesh-cni ./e2e/bench
	bin/bench -bin bin -fortio "$${XDG_CACHE_HOME:-$$HOME/.cache}/zmesh/bench-tools/fortio" -out e2e/bench/results -quick $(BENCH_FLAGS)

# Regenerates committed generated code: the eBPF objects and their Go
# bindings (bpf/, clang + libbpf headers, no kernel BTF needed) and the wire
# protobufs (api/, protoc + protoc-gen-go pinned to go.mod's runtime).
generate:
	@ZMESH_GENERATE=1 .ci/deps.sh
	PATH="$$($(GO) env GOPATH)/bin:$$PATH" $(GO) generate ./...

# Container images of every binary (deploy/images), built with no container
# daemon: static binaries on an empty base, written to bin/images/oci (an OCI
# image layout), bin/images/<image>.tar (for docker load) and
# bin/images/digests.txt, tagged from git describe. PUSH=registry/prefix
# also pushes them there as <prefix>/<image>:<tag>, with docker login's
# credentials (PUSH_INSECURE=1: the registry speaks plain HTTP).
PUSH ?=
PUSH_INSECURE ?=
images: deps
	GO=$(GO) $(GO) run ./deploy/images/build -out bin/images $(if $(PUSH),-push $(PUSH)) $(if $(PUSH_INSECURE),-insecure)

# The Istio and Gateway API CRDs in deploy/crds/, copied from the modules
# pinned in go.mod, so they match the Go types the code decodes.
.PHONY: generate-crds
generate: generate-crds
generate-crds:
	GO=$(GO) deploy/gen-crds.sh

# deploy/manifests/zmesh.yaml: the Helm chart (deploy/charts/zmesh, whose
# CRDs are deploy/crds) rendered with Helm's Go SDK, for kubectl apply.
.PHONY: generate-manifests
generate: generate-manifests
generate-manifests: generate-crds
	@mkdir -p deploy/manifests
	$(GO) run ./deploy/render/cmd -static -o deploy/manifests/zmesh.yaml

lint: deps
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(GO) test -count=1 -run 'TestDependencyDirection|TestRulesCatchForbiddenImports' ./e2e/

clean:
	rm -rf bin
