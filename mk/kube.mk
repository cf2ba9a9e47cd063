# Kubernetes test infrastructure (issue 5): real kube-apiserver, etcd, kube-controller-manager,
# kubectl and helm built from their Go modules into $(CACHE_DIR)/kube (scripts/kube), the
# kube-harness crate (tests/kube-harness) and its node simulator.
include scripts/kube/versions.env
KUBE_CACHE := $(CACHE_DIR)/kube
export KUBE_APISERVER_BIN := $(KUBE_CACHE)/kubernetes-$(KUBE_VERSION)/bin/kube-apiserver
export KUBE_CONTROLLER_MANAGER_BIN := $(KUBE_CACHE)/kubernetes-$(KUBE_VERSION)/bin/kube-controller-manager
export KUBECTL_BIN := $(KUBE_CACHE)/kubernetes-$(KUBE_VERSION)/bin/kubectl
export ETCD_BIN := $(KUBE_CACHE)/etcd-$(ETCD_VERSION)/bin/etcd
export HELM_BIN := $(KUBE_CACHE)/helm-$(HELM_VERSION)/bin/helm
# The harness's own binaries, for tests of other crates and `make run`-style setups.
export NODE_SIM_BIN := $(CARGO_TARGET_DIR)/debug/node-sim
export SIM_POD_BIN := $(CARGO_TARGET_DIR)/debug/sim-pod
export KUBE_CLUSTER_BIN := $(CARGO_TARGET_DIR)/debug/kube-cluster
PREPARE_TARGETS += kube-bins kube-harness-bins
HELP_LINES += "make kube-bins     build kube-apiserver/etcd/kube-controller-manager/kubectl/helm into the cache (once)"
HELP_LINES += "make test-kube     kube-harness tests (real apiserver + node simulator)"
HELP_LINES += "make kube-cluster  start a throw-away cluster + node simulator and print its KUBECONFIG"

.PHONY: kube-bins kube-harness-bins test-kube kube-cluster
# The script checks its own stamps, so this is cheap when everything is built.
kube-bins:
	scripts/kube/build-bins.sh

kube-harness-bins:
	$(CARGO) build --locked -p kube-harness --bins

test-kube: kube-bins kube-harness-bins
	$(CARGO) test --locked -p kube-harness

KUBE_CLUSTER_ARGS ?=
kube-cluster: kube-bins
	scripts/kube/start-cluster.sh $(KUBE_CLUSTER_ARGS)
