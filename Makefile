# DaemonEye. `make help` lists the targets. Every target installs what it needs
# (as root, with apt-get) and skips what is already there.

SHELL       := /bin/bash
GO          ?= $(shell command -v go 2>/dev/null || echo /usr/local/go/bin/go)
BIN         := bin
VERSION     ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
COMMIT      ?= $(shell git rev-parse --short HEAD 2>/dev/null || echo unknown)
DATE        ?= $(shell date -u +%Y-%m-%dT%H:%M:%SZ)
LDFLAGS     := -s -w -X main.version=$(VERSION) -X main.commit=$(COMMIT) -X main.date=$(DATE)
FUZZTIME    ?= 4s
BENCHTIME   ?= 1x
export CGO_ENABLED := 0

.PHONY: help build test vet fuzz-smoke generate bench demo demo-standalone demo-clean deps-generate deps-test

help: ## List the targets.
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

build: ## Build the static binary bin/daemoneye and the daemoneye-agent symlink.
	@mkdir -p $(BIN)
	$(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/daemoneye .
	@ln -sf daemoneye $(BIN)/daemoneye-agent

vet:
	$(GO) vet ./...

test: build vet deps-test ## Run every test (as root: the capture tests use the real kernel), then each fuzz target briefly.
	DAEMONEYE_BIN=$(CURDIR)/$(BIN)/daemoneye $(GO) test -count=1 -timeout 12m ./...
	@$(MAKE) --no-print-directory fuzz-smoke

fuzz-smoke: ## Run each fuzz target for FUZZTIME.
	@set -e; for pkg in $$($(GO) list ./...); do \
	  for f in $$($(GO) test -list '^Fuzz' $$pkg 2>/dev/null | grep '^Fuzz' || true); do \
	    echo "fuzz $$pkg $$f ($(FUZZTIME))"; \
	    if ! $(GO) test -run '^$$' -fuzz "^$$f\$$" -fuzztime $(FUZZTIME) $$pkg >/tmp/daemoneye-fuzz.log 2>&1; then \
	      if grep -q 'context deadline exceeded' /tmp/daemoneye-fuzz.log && ! grep -q 'Failing input written' /tmp/daemoneye-fuzz.log; then \
	        echo "  retry: the fuzz coordinator's deadline race (golang/go#75804), no failing input was written"; \
	        $(GO) test -run '^$$' -fuzz "^$$f\$$" -fuzztime $(FUZZTIME) $$pkg >/tmp/daemoneye-fuzz.log 2>&1 || { cat /tmp/daemoneye-fuzz.log; exit 1; }; \
	      else cat /tmp/daemoneye-fuzz.log; exit 1; fi; \
	    fi; \
	  done; \
	done

deps-test: ## Install the peers the sink tests talk to (Debian's kcat and rsyslog), strace (the egress test) and the browser test's chromium and NSS tools, once.
	@if [ "$$(id -u)" = 0 ] && ! { command -v kcat >/dev/null && command -v rsyslogd >/dev/null && [ -e /usr/lib/x86_64-linux-gnu/rsyslog/lmnsd_gtls.so ] && command -v strace >/dev/null && command -v chromium >/dev/null && command -v certutil >/dev/null && command -v pk12util >/dev/null; }; then \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends kcat rsyslog rsyslog-gnutls strace chromium libnss3-tools; } >/tmp/daemoneye-apt.log 2>&1 \
	    || { echo "deps-test: apt-get install kcat rsyslog rsyslog-gnutls strace chromium libnss3-tools failed:"; tail -20 /tmp/daemoneye-apt.log; exit 1; }; \
	fi

deps-generate:
	@command -v clang >/dev/null && command -v bpftool >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq clang llvm libbpf-dev bpftool; }

generate: deps-generate ## Rebuild the generated eBPF objects (needs clang; installs it) and the web UI's ui/dist (needs node and npm).
	bash bpf/generate.sh
	bash ui/build.sh

bench: build ## As root, ~25 min: run every benchmark and write bench-report.md (each figure beside its target and its same-run reference; raw output in .bench/).
	bash testdata/bench/run.sh

DEMO_DIR    ?= $(CURDIR)/.demo

demo: build ## As root: the web-1 -> db-1 attack end to end (alert, trace across hosts, signed package verified offline); installs what it needs.
	$(BIN)/daemoneye demo --dir $(DEMO_DIR)

demo-standalone: build ## Run the agent standalone and show the live process tree and a lineage.
	bash testdata/demo/standalone.sh

demo-clean: build ## Remove what the demos made (DEMO_DIR, and the hosts of demos that were killed).
	$(BIN)/daemoneye demo --clean --dir $(DEMO_DIR)
