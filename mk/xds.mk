# sandbox-xds (issue 3): the xDS control plane, its wire crate, tests and benchmark.
export SANDBOX_XDS_BIN := $(CARGO_TARGET_DIR)/debug/sandbox-xds
PREPARE_TARGETS += build-xds
HELP_LINES += "make test-xds       sandbox-xds unit tests + gateways fed over xDS (real Envoy, real apiserver)"
HELP_LINES += "make bench-xds      route propagation latency (10k / 100k routes) and full resync time"

.PHONY: build-xds test-xds bench-xds
build-xds:
	$(CARGO) build --locked -p sandbox-xds

test-xds: venv build-filter build-xds kube-bins
	$(CARGO) test --locked -p sandbox-xds -p sandbox-xds-wire -p xds-tests

BENCH_XDS_ARGS ?=
bench-xds: venv
	$(CARGO) build --locked --release -p sandbox-gateway-filter -p bench-xds
	SANDBOX_GATEWAY_MODULE=$(CARGO_TARGET_DIR)/release/libsandbox_gateway.so \
		$(CARGO_TARGET_DIR)/release/bench-xds $(BENCH_XDS_ARGS)
