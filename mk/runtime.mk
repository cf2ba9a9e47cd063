# agent-runtime area (issue 4): the envd-compatible daemon, its E2B SDK suite (tests/runtime) and
# its benchmark (benches/runtime). Other areas start the binary through $(AGENT_RUNTIME_BIN).
export AGENT_RUNTIME_BIN := $(CARGO_TARGET_DIR)/debug/agent-runtime
PREPARE_TARGETS += build-runtime
EXTRA_TEST_TARGETS += test-runtime-sdk
HELP_LINES += "make test-runtime     agent-runtime unit + protocol tests and the E2B SDK suite (uses localhost:49983)"
HELP_LINES += "make bench-runtime    SDK command round trips and 100 MB file transfers against agent-runtime"

.PHONY: build-runtime test-runtime test-runtime-sdk bench-runtime
build-runtime:
	$(CARGO) build --locked -p agent-runtime

# The real e2b SDK in E2B_DEBUG mode against the real daemon; the suite starts and stops its own
# daemons and owns port 49983 on localhost while it runs.
test-runtime-sdk: venv build-runtime
	$(VENV)/bin/python -m pytest -q tests/runtime

test-runtime: build-runtime
	$(CARGO) test --locked -p agent-runtime
	$(MAKE) test-runtime-sdk

bench-runtime: venv
	$(CARGO) build --locked --release -p agent-runtime
	AGENT_RUNTIME_BIN=$(CARGO_TARGET_DIR)/release/agent-runtime $(VENV)/bin/python benches/runtime/bench.py
