# sandbox-manager (issue 8): the E2B API with the local backend, `make run`, its end-to-end suite
# (tests/manager, real E2B SDKs through Envoy + module + sandbox-xds + agent-runtime) and its
# benchmark. Other areas start the binary through $(SANDBOX_MANAGER_BIN).
export SANDBOX_MANAGER_BIN := $(CARGO_TARGET_DIR)/debug/sandbox-manager
PREPARE_TARGETS += build-manager
HELP_LINES += "make test-manager     manager unit tests + the E2B SDK end-to-end suite (2.63.0 and 2.37.1)"
HELP_LINES += "make bench-manager    Sandbox.create() and create-to-first-command latency, warm and cold pools"

.PHONY: build-manager build-local-stack run-local test-manager test-manager-e2e bench-manager
build-manager:
	$(CARGO) build --locked -p sandbox-manager

# Everything the embedded stack runs: manager, agent-runtime, the module.
build-local-stack:
	$(CARGO) build --locked -p sandbox-manager -p agent-runtime -p sandbox-gateway-filter

run-local: venv build-local-stack
	scripts/run-local.sh
