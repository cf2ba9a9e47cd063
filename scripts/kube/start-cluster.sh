#!/usr/bin/env bash
# Starts a throw-away Kubernetes control plane on loopback (etcd, kube-apiserver,
# kube-controller-manager: the same setup the tests use) plus, with --node-sim, the node
# simulator, and prints KUBECONFIG=... and friends. Runs in the foreground until Ctrl-C, which
# stops everything and removes the cluster's directory.
#
# Usage: scripts/kube/start-cluster.sh [--node-sim] [--command "TEMPLATE"] [--env-file PATH] ...
#   (all flags: scripts/kube/start-cluster.sh --help)
# Then, in another shell:  export KUBECONFIG=<printed path>; "$KUBECTL_BIN" get nodes
set -euo pipefail
cd "$(dirname "$0")/../.."
eval "$(scripts/kube/build-bins.sh --print-env | sed 's/^/export /')"
: "${CARGO_TARGET_DIR:=${SANDBOX_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/kruise-agents-rs}/target}"
export CARGO_TARGET_DIR
cargo build --locked -q -p kube-harness --bin kube-cluster --bin node-sim
echo "KUBECTL_BIN=$KUBECTL_BIN" >&2
exec "$CARGO_TARGET_DIR/debug/kube-cluster" "$@"
