# Gateway data plane (issue 2): libsandbox_gateway.so, its Envoy bootstrap, tests and benchmark.
export SANDBOX_GATEWAY_MODULE := $(CARGO_TARGET_DIR)/debug/libsandbox_gateway.so
PREPARE_TARGETS += build-filter
HELP_LINES += "make test-gateway   filter unit tests + Envoy integration tests only"

.PHONY: build-filter test-gateway
build-filter:
	$(CARGO) build --locked -p sandbox-gateway-filter

test-gateway: venv build-filter
	$(CARGO) test --locked -p sandbox-gateway-filter -p gateway-tests
