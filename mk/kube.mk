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
PREPARE_TARGETS += kube-bins
HELP_LINES += "make kube-bins     build kube-apiserver/etcd/kube-controller-manager/kubectl/helm into the cache (once)"
HELP_LINES += "make test-kube     kube-harness tests (real apiserver + node simulator)"
HELP_LINES += "make kube-cluster  start a throw-away cluster + node simulator and print its KUBECONFIG"

.PHONY: kube-bins test-kube kube-cluster
# The script checks its own stamps, so this is cheap when everything is built.
kube-bins:
	scripts/kube/build-bins.sh

test-kube: kube-bins
	$(CARGO) test --locked -p kube-harness

kube-cluster: kube-bins
	scripts/kube/start-cluster.sh
