# sandbox-manager (issue 8): the E2B API with the local backend, `make run`, its end-to-end suite
# (tests/manager, real E2B SDKs through Envoy + module + sandbox-xds + agent-runtime) and its
# benchmark. Other areas start the binary through $(SANDBOX_MANAGER_BIN).
export SANDBOX_MANAGER_BIN := $(CARGO_TARGET_DIR)/debug/sandbox-manager
PREPARE_TARGETS += build-manager
HELP_LINES += "make test-manager     manager unit tests + the E2B SDK end-to-end suite (2.63.0 and 2.37.1)"
HELP_LINES += "make bench-manager    Sandbox.create() and create-to-first-command latency, warm and cold pools"
HELP_LINES += "make run-kube        the Kubernetes stack on this machine (cluster + node simulator, controller, sandbox-xds, gateway, managers)"
HELP_LINES += "make test-manager-kube  the E2B SDK suite against the kube backend (two manager replicas)"
HELP_LINES += "make bench-claim      kube backend creates at 1/20/100 clients from a warm pool of 500, the apiserver floor, 500 SandboxClaims"

.PHONY: build-manager build-local-stack run-local test-manager test-manager-e2e bench-manager build-kube-stack run-kube test-manager-kube bench-claim
build-manager:
	$(CARGO) build --locked -p sandbox-manager

# Everything the embedded stack runs: manager, agent-runtime, the module, the code interpreter.
build-local-stack:
	$(CARGO) build --locked -p sandbox-manager -p agent-runtime -p sandbox-gateway-filter -p code-interpreter

run-local: venv build-local-stack
	scripts/run-local.sh

# The older E2B SDK (2.37.1: v1 API) for tests/manager/legacy, in its own virtualenv.
VENV_LEGACY ?= $(CURDIR)/.venv-legacy
.PHONY: venv-legacy
venv-legacy: $(VENV_LEGACY)/.installed
$(VENV_LEGACY)/.installed: tests/requirements-legacy.txt
	test -x "$(VENV_LEGACY)/bin/python" || $(PYTHON) -m venv "$(VENV_LEGACY)"
	"$(VENV_LEGACY)/bin/python" -m pip install --quiet --disable-pip-version-check -r tests/requirements-legacy.txt
	@touch $@

# The end-to-end suite: the stack as `make run` starts it, driven by e2b 2.63.0 (tests/manager),
# then by e2b 2.37.1 (tests/manager/legacy, same fixtures). Both always run; either failing fails.
test-manager-e2e: venv venv-legacy build-local-stack
	status=0; \
	$(VENV)/bin/python -m pytest -q tests/manager || status=$$?; \
	$(VENV_LEGACY)/bin/python -m pytest -q tests/manager/legacy || status=$$?; \
	exit $$status

test-manager:
	$(CARGO) test --locked -p sandbox-manager
	$(MAKE) test-manager-e2e

EXTRA_TEST_TARGETS += test-manager-e2e

# The Kubernetes stack (scripts/run-kube.sh): everything it starts, built.
build-kube-stack:
	$(CARGO) build --locked -p sandbox-manager -p agent-runtime -p sandbox-gateway-filter \
		-p sandbox-controller -p sandbox-xds -p sandbox-storage
	$(CARGO) build --locked -p kube-harness --bins

run-kube: venv kube-bins build-kube-stack
	scripts/run-kube.sh

# The same E2B SDK suite against the kube backend (MANAGER_STACK=kube: conftest starts
# run-kube.sh with two manager replicas); tests that need the local backend are deselected.
test-manager-kube: venv kube-bins build-kube-stack
	MANAGER_STACK=kube $(VENV)/bin/python -m pytest -q -m "not local_only" tests/manager

EXTRA_TEST_TARGETS += test-manager-kube

# The kube backend's claim path on the real test apiserver (benches/claim/bench.py; results in
# docs/benchmarks.md): release binaries, warm pool BENCH_CLAIM_POOL (500).
BENCH_CLAIM_ARGS ?=
bench-claim: venv kube-bins
	$(CARGO) build --locked --release -p sandbox-manager -p agent-runtime -p sandbox-gateway-filter \
		-p sandbox-controller -p sandbox-xds -p sandbox-storage
	$(CARGO) build --locked --release -p kube-harness --bins
	SANDBOX_MANAGER_BIN=$(CARGO_TARGET_DIR)/release/sandbox-manager \
	AGENT_RUNTIME_BIN=$(CARGO_TARGET_DIR)/release/agent-runtime \
	SANDBOX_GATEWAY_MODULE=$(CARGO_TARGET_DIR)/release/libsandbox_gateway.so \
	SANDBOX_CONTROLLER_BIN=$(CARGO_TARGET_DIR)/release/sandbox-controller \
	SANDBOX_XDS_BIN=$(CARGO_TARGET_DIR)/release/sandbox-xds \
	KUBE_CLUSTER_BIN=$(CARGO_TARGET_DIR)/release/kube-cluster \
		$(VENV)/bin/python benches/claim/bench.py $(BENCH_CLAIM_ARGS)

# Release binaries, the stack as `make run` starts it, the real SDK (benches/manager/bench.py;
# results in docs/benchmarks.md). BENCH_MANAGER_ARGS="--rounds 10" for more samples.
BENCH_MANAGER_ARGS ?=
bench-manager: venv
	$(CARGO) build --locked --release -p sandbox-manager -p agent-runtime -p sandbox-gateway-filter
	SANDBOX_MANAGER_BIN=$(CARGO_TARGET_DIR)/release/sandbox-manager \
	AGENT_RUNTIME_BIN=$(CARGO_TARGET_DIR)/release/agent-runtime \
	SANDBOX_GATEWAY_MODULE=$(CARGO_TARGET_DIR)/release/libsandbox_gateway.so \
		$(VENV)/bin/python benches/manager/bench.py $(BENCH_MANAGER_ARGS)
