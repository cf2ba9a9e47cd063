# Gateway data plane (issue 2): libsandbox_gateway.so, its Envoy bootstrap, tests and benchmark.
export SANDBOX_GATEWAY_MODULE := $(CARGO_TARGET_DIR)/debug/libsandbox_gateway.so
PREPARE_TARGETS += build-filter
HELP_LINES += "make test-gateway   filter unit tests + Envoy integration tests only"
HELP_LINES += "make run-gateway    run Envoy + the module on :10000 with ROUTES=<json> (default envoy/examples/routes.json)"
HELP_LINES += "make bench-gateway  plain Envoy vs. the module with 100k routes vs. an ext_proc router (release build)"

.PHONY: build-filter test-gateway run-gateway bench-gateway
build-filter:
	$(CARGO) build --locked -p sandbox-gateway-filter

test-gateway: venv build-filter
	$(CARGO) test --locked -p sandbox-gateway-filter -p gateway-tests

ROUTES ?= envoy/examples/routes.json
run-gateway: venv build-filter
	scripts/run-gateway.sh $(ROUTES)

# Options for the benchmark binary, e.g. BENCH_GATEWAY_ARGS="--seconds 5 --rounds 5".
BENCH_GATEWAY_ARGS ?=
bench-gateway: venv
	$(CARGO) build --locked --release -p sandbox-gateway-filter -p bench-gateway
	@command -v wrk >/dev/null || { echo "bench-gateway needs wrk (Debian: apt-get install wrk)"; exit 1; }
	SANDBOX_GATEWAY_MODULE=$(CARGO_TARGET_DIR)/release/libsandbox_gateway.so \
		$(CARGO_TARGET_DIR)/release/bench-gateway $(BENCH_GATEWAY_ARGS)
