# Helm charts and images (issue 9): charts/kruise-agents-sandbox-{controller,manager}, the images
# they deploy (images/Dockerfile), rendering tests against the installation guide's parameter
# tables and an install / upgrade / uninstall on the real test apiserver (tests/charts).
HELP_LINES += "make test-charts     helm lint/template checks of both charts and install/upgrade/uninstall on the test apiserver"
HELP_LINES += "make chart-check     helm lint + helm template of both charts (quick)"
HELP_LINES += "make images          build the images with docker or podman (where one exists)"
HELP_LINES += "make chart-docs      rewrite the values tables of the charts' README.md from values.yaml"

CHARTS := charts/kruise-agents-sandbox-controller charts/kruise-agents-sandbox-manager
# Rendering the manager chart needs its two required values.
CHART_REQUIRED := --set e2b.adminApiKey=e2b_0123456789abcdef0123456789abcdef01234567 --set ingress.className=nginx
IMAGE_TAG ?= v0.2.0
IMAGE_PREFIX ?= kruise-agents-rs
IMAGES := sandbox-controller sandbox-manager sandbox-xds sandbox-gateway agent-runtime

.PHONY: chart-check chart-docs test-charts images
chart-docs: venv
	for c in $(CHARTS); do $(VENV)/bin/python scripts/chart-values-table.py $$c; done

chart-check: kube-bins
	$(HELM_BIN) lint --strict charts/kruise-agents-sandbox-controller
	$(HELM_BIN) lint --strict charts/kruise-agents-sandbox-manager $(CHART_REQUIRED)
	$(HELM_BIN) template sandbox-controller charts/kruise-agents-sandbox-controller --namespace sandbox-system --include-crds > /dev/null
	$(HELM_BIN) template sandbox-manager charts/kruise-agents-sandbox-manager --namespace sandbox-system $(CHART_REQUIRED) > /dev/null

test-charts: venv kube-bins kube-harness-bins build-kube-stack
	$(VENV)/bin/python -m pytest -q tests/charts

EXTRA_TEST_TARGETS += test-charts

images:
	@engine=$$(command -v docker || command -v podman || true); \
	if [ -z "$$engine" ]; then \
		echo "make images: no docker or podman on this machine; the charts' tests run the project binaries instead"; \
		exit 0; \
	fi; \
	for img in $(IMAGES); do \
		tag=$(IMAGE_TAG); [ $$img = sandbox-gateway ] && tag=v0.2.1; \
		$$engine build -f images/Dockerfile --target $$img -t $(IMAGE_PREFIX)/$$img:$$tag . || exit 1; \
	done; \
	$$engine build -f images/code-interpreter/Dockerfile -t $(IMAGE_PREFIX)/code-interpreter:$(IMAGE_TAG) .
