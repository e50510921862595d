# callscope — run `make help` for the targets.

GO       ?= $(shell command -v go 2>/dev/null || echo /usr/local/go/bin/go)
VERSION  ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
BIN      := bin/callscope
FLOOR    := bin/floor
APISERVER := bin/kube-apiserver
# Kernel tests need root: as another user, test binaries run under sudo.
SUDO     := $(if $(filter 0,$(shell id -u)),,sudo)
GOTEST   := $(GO) test $(if $(SUDO),-exec sudo)
FUZZTIME ?= 20s

.DEFAULT_GOAL := help

.PHONY: help
help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-13s %s\n", $$1, $$2}'

.PHONY: build
build: ## build the static agent binary into bin/callscope
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags "-s -w -X main.version=$(VERSION)" -o $(BIN) ./cmd/callscope

.PHONY: run
run: build ## build, then run the agent with events on stdout (as root)
	$(SUDO) $(BIN) run

.PHONY: test
test: ## run every test; kernel tests load the real programs (as root)
	$(GOTEST) -count=1 ./...

# The race detector slows the kernel tests' busy loops and grows memory:
# it runs over the packages below the binary, whose tests use the real
# kernel and control plane too. cmd/callscope's tests run the built agent,
# which -race would not instrument.
RACE_PKGS := ./collector/... ./enrich/... ./scope/... ./exporter/... ./internal/...
.PHONY: test-race
test-race: ## run the tests of the packages under the race detector (as root)
	$(GOTEST) -race -count=1 $(RACE_PKGS)

.PHONY: test-vm
test-vm: ## run the collector's tests and the agent's smoke test on another kernel in qemu: KERNEL=debian-6.1 (default) or ubuntu-5.15
	internal/vmtest/run.sh $(or $(KERNEL),debian-6.1)

# The tests' control plane (internal/kubetest) runs this binary, built from
# a module of its own so that Kubernetes' server code stays out of go.mod.
# Keep these flags those of internal/kubetest/binary.go, which builds it
# when it is missing: the Go build cache then serves both.
KUBE_MOD := internal/kubetest/apiserver
.PHONY: kube-apiserver
kube-apiserver: $(APISERVER) ## build the kube-apiserver the tests run into bin/kube-apiserver (6-8 minutes the first time)

$(APISERVER): $(KUBE_MOD)/go.mod $(KUBE_MOD)/go.sum $(KUBE_MOD)/main.go
	cd $(KUBE_MOD) && CGO_ENABLED=0 $(GO) build -trimpath \
	  -ldflags "-s -w -X k8s.io/component-base/version.gitVersion=v1.34.4 -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=34" \
	  -o $(abspath $@) .

.PHONY: fuzz
fuzz: ## run each fuzz test for FUZZTIME: a duration (default 20s) or a count of runs (20000x)
	@set -e; for pkg in $$($(GO) list ./...); do \
	  for f in $$($(GO) test -list '^Fuzz' $$pkg | grep '^Fuzz' || true); do \
	    echo "fuzz $$pkg $$f"; $(GOTEST) -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZTIME) $$pkg; \
	  done; \
	done

.PHONY: bench
bench: ## run the Go benchmarks (benchstat-friendly, COUNT runs), then bench-system
	$(GOTEST) -run '^$$' -bench . -benchmem -count=$(or $(COUNT),6) ./...
	$(MAKE) --no-print-directory bench-system

# ROUNDS alternated rounds of SECS seconds each; see bench/overhead.sh.
.PHONY: bench-system
bench-system: build $(FLOOR) ## measure the agent's cost to a connect loop, to bulk TCP throughput and to a syscall-heavy dd, then run bench-paired's pairs (as root)
	$(SUDO) bench/overhead.sh connect $(BIN) $(or $(ROUNDS),8) $(or $(SECS),3)
	$(SUDO) bench/overhead.sh bulk $(BIN) $(or $(ROUNDS),8) $(or $(SECS),3)
	$(SUDO) bench/overhead.sh syscalls $(BIN) $(or $(ROUNDS),8) $(or $(SECS),3)
	$(SUDO) env FLOOR=$(FLOOR) bench/paired.sh $(BIN) $(or $(PAIRS),40) 1

# PAIRS rounds of 1 s runs: with the agent's programs, without, and with
# bench/floor's programs that do nothing (the hooks' own cost); BPF_STATS=1
# adds each side's program run time per connect. See bench/paired.sh.
.PHONY: bench-paired
bench-paired: build $(FLOOR) ## measure the kernel programs' cost to a connect loop in interleaved runs, beside the hooks' own cost (as root)
	$(SUDO) env FLOOR=$(FLOOR) BPF_STATS=$(or $(BPF_STATS),0) bench/paired.sh $(BIN) $(or $(PAIRS),40) 1

$(FLOOR): FORCE
	CGO_ENABLED=0 $(GO) build -trimpath -o $@ ./bench/floor

.PHONY: FORCE
FORCE:

.PHONY: bench-connect
bench-connect: build ## measure the agent's cost to a connect loop: bare, with the agent, with bpftrace (as root)
	$(SUDO) bench/overhead.sh connect $(BIN) $(or $(ROUNDS),8) $(or $(SECS),3)

# DURATION of load (default 2m; docs/benchmarks.md reports a 30m run); see
# bench/soak for what is run and checked.
.PHONY: soak
soak: build ## run the agent under a steady mixed load with policy reloads and a Kafka outage for DURATION, and check it stays flat and loses nothing (as root)
	CGO_ENABLED=0 $(GO) build -trimpath -o bin/soak ./bench/soak
	$(SUDO) bin/soak -agent $(BIN) -duration $(or $(DURATION),2m) $(if $(KEEP),-keep $(KEEP))

.PHONY: generate
generate: ## rebuild the BPF object and its Go bindings (needs Debian's clang-14 and llvm-14; the headers are vendored)
	$(GO) generate ./collector/

.PHONY: lint
lint: ## gofmt, go vet, staticcheck, clang-format of bpf/, and shellcheck and ruby -c (of the Vagrantfile) where installed
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); echo "gofmt: files above need formatting"; exit 1; }
	$(GO) vet ./...
	$(GO) tool staticcheck ./...
	@if command -v clang-format >/dev/null; then clang-format --dry-run --Werror bpf/*.c bpf/*.h bpf/headers/kernel.h bpf/headers/linux/types.h; fi
	@if command -v shellcheck >/dev/null; then shellcheck .ci/run bench/*.sh deploy/vagrant/*.sh internal/vmtest/run.sh internal/vmtest/init; fi
	@if command -v ruby >/dev/null; then ruby -c Vagrantfile >/dev/null; fi

.PHONY: clean
clean: ## remove build output
	rm -rf bin
