# sluice: build, generate, test, demo, bench, lint.
# `sudo make demo` and `sudo make test` are the two commands the README opens with.

SHELL := /usr/bin/env bash
.SHELLFLAGS := -euo pipefail -c

# Go >= 1.26: the one on PATH, else /usr/local/go/bin/go (never downloaded).
GO := $(or $(shell command -v go 2>/dev/null),/usr/local/go/bin/go)
# `go generate` runs `go tool bpf2go`, which needs go on PATH.
export PATH := $(dir $(GO)):$(PATH)

VERSION := $(shell git describe --always --dirty 2>/dev/null || echo unknown)
LDFLAGS := -X main.version=$(VERSION)

.PHONY: all build testbins generate check-generated deps test unit unit-race fuzz dashboard-check e2e e2e-race demo demo-cluster bench lint clean install uninstall

all: build

build:
	$(GO) build -ldflags "$(LDFLAGS)" -o bin/sluice ./cmd/sluice

# Helpers of the lab and the e2e suite.
testbins:
	$(GO) build -o bin/sluice-testbackend ./e2e/backend
	$(GO) build -o bin/sluice-loadgen ./e2e/loadgen
	$(GO) build -o bin/sluice-dnsserver ./e2e/dnsserver

deps:
	scripts/deps.sh

# Regenerate the bpf2go bindings and objects from bpf/*.c (needs clang).
# Built in a temporary directory and moved into bpf/ only on success.
generate:
	GO=$(GO) scripts/generate.sh

# CI: committed bpf2go output must match the C sources.
check-generated: generate
	@if ! git diff --exit-code --stat -- bpf/; then \
		echo "bpf/: generated files differ from the committed ones: run 'make generate' and commit" >&2; \
		exit 1; \
	fi
	@untracked=$$(git ls-files --others --exclude-standard -- bpf/); \
	if [[ -n $$untracked ]]; then \
		echo "bpf/: generated files not committed: $$untracked" >&2; \
		exit 1; \
	fi

# Unit tests: everything but e2e (BPF prog.Run tests need root, and skip without it).
unit:
	$(GO) vet ./...
	SLUICE_REQUIRE_H2SPEC=1 $(GO) test -count=1 $$($(GO) list ./... | grep -v '/e2e')
	# The proxy's tests again with every connection on event loops (l7/evloop).
	SLUICE_TEST_EVENTLOOPS=1 $(GO) test -count=1 ./l7/proxy/

# The unit tests with the race detector (slower; not part of test): the
# event loops, pools and proxy are where goroutines share state.
unit-race:
	$(GO) test -race -count=1 $$($(GO) list ./... | grep -v '/e2e')
	SLUICE_TEST_EVENTLOOPS=1 $(GO) test -race -count=1 ./l7/proxy/

# Go native fuzz targets, each for a bounded time (FUZZTIME): scripts/fuzz.sh.
# A crash fails the run and leaves its input under the package's
# testdata/fuzz/, where it becomes a regression case once committed; a
# Fuzz function missing from the list fails it too. pkg:Target, one fuzz
# run each (go test -fuzz takes one target at a time).
FUZZTIME ?= 10s
FUZZ_TARGETS := \
	./userspace/datapath:FuzzXDP \
	./userspace/config:FuzzParse \
	./userspace/discovery:FuzzParseAnswer \
	./userspace/addrfilter:FuzzCheck \
	./l7/proxy:FuzzTranslateH1 \
	./l7/proxy:FuzzTranslateH2 \
	./l7/proxy:FuzzForwardHeaders \
	./l7/proxy:FuzzFrameGuard \
	./l7/proxy:FuzzH1Translation \
	./l7/proxy:FuzzHeaderForwarding \
	./l7/proxy:FuzzH2Translation \
	./l7/proxy:FuzzForwardedClient \
	./l7/proxy:FuzzFastResponse \
	./l7/route:FuzzMatch \
	./userspace/datapath:FuzzDSR \
	./userspace/decap:FuzzDecap
fuzz:
	GO=$(GO) scripts/fuzz.sh $(FUZZTIME) $(FUZZ_TARGETS)

# End-to-end tests in the netns lab (root). Tests that call parallel(t)
# run E2E_PARALLEL at a time, each in its own lab (the same on every
# machine, so their timings are what CI saw); E2E_SERIAL=1 runs each alone.
E2E_PARALLEL ?= 2
e2e:
	$(GO) test ./e2e/... -count=1 -v -timeout 15m -parallel $(E2E_PARALLEL)

# The same with the agent built with the race detector (slower).
e2e-race:
	E2E_RACE=1 $(GO) test ./e2e/ -count=1 -v -timeout 20m -parallel $(E2E_PARALLEL)

# The Grafana dashboard names only metrics the agent exports and documents.
dashboard-check:
	scripts/dashboard.sh check

test: deps check-generated unit fuzz dashboard-check e2e

# make test fuzzes each target for 5 s (a smoke run that keeps the suite
# within CI's 20 minutes; `make fuzz` runs FUZZTIME, 10 s, and
# `make test FUZZTIME=30s` more). The targets' seed corpora run in unit.
test: FUZZTIME = 5s

demo: deps build testbins
	scripts/demo.sh

# Three nodes behind an ECMP router (BIRD), mode dsr: a node dies, flows go on.
demo-cluster: deps build testbins
	scripts/demo_cluster.sh

bench: build
	scripts/deps.sh --bench
	scripts/bench.sh

PREFIX ?= /usr/local
DESTDIR ?=
# bin/sluice, the systemd unit, /etc/sluice/sluice.yaml (an existing one is kept)
install: build
	DESTDIR='$(DESTDIR)' PREFIX='$(PREFIX)' deploy/install.sh

uninstall:
	DESTDIR='$(DESTDIR)' PREFIX='$(PREFIX)' deploy/install.sh uninstall

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); \
	if [[ -n $$out ]]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

clean:
	rm -rf bin/
