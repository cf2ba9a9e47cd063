# controller area (issue 5): sandbox-api CRDs, sandbox-controller, its Helm chart, integration
# tests against a real apiserver (tests/controller) and the pool/claim benchmark.
export SANDBOX_CONTROLLER_BIN := $(CARGO_TARGET_DIR)/debug/sandbox-controller
PREPARE_TARGETS += build-controller
HELP_LINES += "make test-controller  sandbox-core + sandbox-api + sandbox-controller unit tests and apiserver integration tests"
HELP_LINES += "make crdgen           regenerate the CRD YAML in the controller chart from the Rust types"
HELP_LINES += "make bench-controller pool refill (0 to 500 Ready) and 500-claim throughput, printed as a table (see docs/benchmarks.md)"

.PHONY: build-controller test-controller crdgen bench-controller
build-controller:
	$(CARGO) build --locked -p sandbox-controller

crdgen:
	$(CARGO) run --locked -q -p sandbox-api --bin crdgen

test-controller: kube-bins build-controller build-runtime
	$(CARGO) test --locked -p sandbox-core -p sandbox-api -p sandbox-controller -p controller-tests

bench-controller: kube-bins
	$(CARGO) build --locked --release -p sandbox-controller -p controller-bench
	SANDBOX_CONTROLLER_BIN=$(CARGO_TARGET_DIR)/release/sandbox-controller $(CARGO_TARGET_DIR)/release/controller-bench 500
