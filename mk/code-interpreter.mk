# Code interpreter (issue 12): the E2B Code Interpreter API on port 49999 (runtime/code-interpreter),
# the kernels' virtualenv it runs (outside the repository, in the cache), its end-to-end suite
# with the real e2b-code-interpreter SDK through the stack `make run` starts, and its benchmark.
export CODE_INTERPRETER_BIN := $(CARGO_TARGET_DIR)/debug/code-interpreter
export CODE_INTERPRETER_KERNELS_VENV ?= $(CACHE_DIR)/kernels-venv
# The venv is rebuilt when its pins or its script change (a stamp named by their digest, so a
# fresh clone reuses the cached venv).
KERNELS_DIGEST := $(shell cat runtime/code-interpreter/kernel/requirements.txt scripts/setup-kernels.sh | sha256sum | cut -c1-16)
KERNELS_STAMP := $(CODE_INTERPRETER_KERNELS_VENV)/.installed-$(KERNELS_DIGEST)
PREPARE_TARGETS += build-code-interpreter kernels
EXTRA_TEST_TARGETS += test-code-interpreter-e2e
HELP_LINES += "make kernels          the code interpreter's kernels (ipykernel, bash_kernel, pandas, matplotlib, e2b-charts) in the cache"
HELP_LINES += "make test-code-interpreter  its unit tests + the e2b-code-interpreter SDK suite through the stack"
HELP_LINES += "make bench-code-interpreter run_code round trip and create-to-first-result, against a bare kernel"

.PHONY: build-code-interpreter kernels test-code-interpreter test-code-interpreter-e2e bench-code-interpreter
build-code-interpreter:
	$(CARGO) build --locked -p code-interpreter

kernels: $(KERNELS_STAMP)
$(KERNELS_STAMP):
	scripts/setup-kernels.sh "$(CODE_INTERPRETER_KERNELS_VENV)" "$@"

# make run offers code-interpreter-v1 with these.
run-local: kernels build-code-interpreter

# tests/code-interpreter: the real e2b-code-interpreter SDK (2.11.5) against code-interpreter-v1
# sandboxes of a private stack (run-local.sh, as make run starts it).
test-code-interpreter-e2e: venv kernels build-local-stack build-code-interpreter
	$(VENV)/bin/python -m pytest -q tests/code-interpreter

test-code-interpreter: kernels
	$(CARGO) test --locked -p code-interpreter
	$(MAKE) test-code-interpreter-e2e

# Release binaries, the stack as make run starts it, the real SDK (benches/code-interpreter;
# results in docs/benchmarks.md). BENCH_CODE_INTERPRETER_ARGS="--rounds 500" for more samples.
BENCH_CODE_INTERPRETER_ARGS ?=
bench-code-interpreter: venv kernels
	$(CARGO) build --locked --release -p sandbox-manager -p agent-runtime -p sandbox-gateway-filter -p code-interpreter
	SANDBOX_MANAGER_BIN=$(CARGO_TARGET_DIR)/release/sandbox-manager \
	AGENT_RUNTIME_BIN=$(CARGO_TARGET_DIR)/release/agent-runtime \
	SANDBOX_GATEWAY_MODULE=$(CARGO_TARGET_DIR)/release/libsandbox_gateway.so \
	CODE_INTERPRETER_BIN=$(CARGO_TARGET_DIR)/release/code-interpreter \
		$(VENV)/bin/python benches/code-interpreter/bench.py $(BENCH_CODE_INTERPRETER_ARGS)
