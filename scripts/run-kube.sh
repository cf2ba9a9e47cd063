#!/usr/bin/env bash
# The Kubernetes stack on one machine, in the foreground: a throw-away cluster (etcd,
# kube-apiserver, kube-controller-manager) with the node simulator running every sandbox pod as
# a real agent-runtime process, the CRDs, sandbox-controller, sandbox-xds watching Sandbox CRs,
# Envoy 1.40 with the module (ADS only), and MANAGER_REPLICAS sandbox-managers (kube backend)
# sharing nothing but the apiserver. A SandboxSet `base` (POOL_SIZE warm sandboxes) in
# namespace `default` is the template. Prints the E2B environment variables once the pool is
# warm; Ctrl-C (or SIGTERM) stops everything.
#
# Ports and paths come from the environment:
#   API_PORT (3100; replica i listens on API_PORT_<i>, default API_PORT+i) GATEWAY_PORT (10100) XDS_PORT (18100)
#   XDS_HTTP_PORT (18101) ENVOY_ADMIN_PORT (9911) RUN_DIR (.run/kube) POOL_SIZE (2)
#   MANAGER_REPLICAS (1) IP_RANGE (127.3.0.0/16) MANAGER_ARGS (extra sandbox-manager flags)
#   STORAGE_CLI_BIN (default: sandbox-runtime-storage beside AGENT_RUNTIME_BIN)
# Binaries (set by make): SANDBOX_MANAGER_BIN SANDBOX_CONTROLLER_BIN SANDBOX_XDS_BIN
#   AGENT_RUNTIME_BIN SANDBOX_GATEWAY_MODULE ENVOY_BIN KUBE_CLUSTER_BIN KUBECTL_BIN and the
#   cluster's (KUBE_APISERVER_BIN, ETCD_BIN, ...; make kube-bins).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
need() { [ -n "${!1:-}" ] || { echo "$1 is not set (run through make run-kube)" >&2; exit 2; }; }
for v in SANDBOX_MANAGER_BIN SANDBOX_CONTROLLER_BIN SANDBOX_XDS_BIN AGENT_RUNTIME_BIN \
    SANDBOX_GATEWAY_MODULE ENVOY_BIN KUBE_CLUSTER_BIN KUBECTL_BIN; do need "$v"; done
api_port=${API_PORT:-3100}
gw_port=${GATEWAY_PORT:-10100}
xds_port=${XDS_PORT:-18100}
xds_http_port=${XDS_HTTP_PORT:-18101}
admin_port=${ENVOY_ADMIN_PORT:-9911}
replicas=${MANAGER_REPLICAS:-1}
pool_size=${POOL_SIZE:-2}
run_dir=${RUN_DIR:-$root/.run/kube}
mkdir -p "$run_dir"
run_dir=$(cd "$run_dir" && pwd)
rm -f "$run_dir/env" "$run_dir/cluster.env"

log() { printf '%s\n' "$*" >&2; }

pids=()
stop() {
    trap - INT TERM EXIT
    if [ ${#pids[@]} -gt 0 ]; then
        log "stopping"
        # Managers, gateway, xds and controller first; the cluster (and the simulator's pods)
        # last, so nothing is left reconciling against a vanished apiserver.
        for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
            kill -TERM "${pids[$i]}" 2>/dev/null || true
            wait "${pids[$i]}" 2>/dev/null || true
        done
    fi
}
trap stop EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

alive() {
    local p
    for p in "${pids[@]}"; do
        if ! kill -0 "$p" 2>/dev/null; then
            log "a component exited during start-up; last lines of the logs:"
            tail -n 15 "$run_dir"/*.log >&2 || true
            exit 1
        fi
    done
}

# 1. The cluster and the node simulator (pods: agent-runtime on their own loopback address, its
# work directory standing in for the container's home, as in the image).
# The node also serves a CSI driver (a directory plugin: PersistentVolumes of it name a
# directory of this machine in volumeAttributes.path) for dynamic mounts.
csi_driver=hostdir.csi.kruise-agents.test
storage_cli_bin=${STORAGE_CLI_BIN:-$(dirname "$AGENT_RUNTIME_BIN")/sandbox-runtime-storage}
"$KUBE_CLUSTER_BIN" --node-sim --checkpoints --csi-driver "$csi_driver" --ip-range "${IP_RANGE:-127.3.0.0/16}" \
    --command "env HOME={workdir} $AGENT_RUNTIME_BIN --listen {ip}:{port} --default-workdir {workdir}" \
    --env-file "$run_dir/cluster.env" >"$run_dir/cluster.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 600); do
    alive
    [ -s "$run_dir/cluster.env" ] && grep -q NODE_SIM_NODE "$run_dir/cluster.env" && break
    sleep 0.2
done
[ -s "$run_dir/cluster.env" ] || { log "the cluster did not start within 2 minutes"; exit 1; }
KUBECONFIG=$(sed -n 's/^KUBECONFIG=//p' "$run_dir/cluster.env")
export KUBECONFIG
# The mount CLI as the managers run it in a sandbox: pointed at the simulated node's CSI sockets
# and mount root (a real sandbox image has the default layout; the runtime starts commands with
# a clean environment, so the wrapper sets them).
storage_cli="$run_dir/sandbox-runtime-storage"
{
    echo '#!/bin/sh'
    echo "SANDBOX_STORAGE_SOCKET_DIR='$(sed -n 's/^NODE_SIM_CSI_SOCKET_DIR=//p' "$run_dir/cluster.env")' \\"
    echo "SANDBOX_STORAGE_MOUNT_ROOT='$(sed -n 's/^NODE_SIM_CSI_MOUNT_ROOT=//p' "$run_dir/cluster.env")' \\"
    echo "    exec '$storage_cli_bin' \"\$@\""
} >"$storage_cli"
chmod +x "$storage_cli"
kubectl() { "$KUBECTL_BIN" --kubeconfig "$KUBECONFIG" "$@"; }

# 2. CRDs, the system namespace and the template.
kubectl apply --server-side -f "$root/charts/kruise-agents-sandbox-controller/crds/" >/dev/null
kubectl wait --for condition=established --timeout=60s crd --all >/dev/null
kubectl create namespace sandbox-system >/dev/null
kubectl apply -f - >/dev/null <<EOF
apiVersion: agents.kruise.io/v1alpha1
kind: SandboxSet
metadata:
  name: base
  namespace: default
spec:
  replicas: $pool_size
  template:
    spec:
      containers:
        - name: main
          image: agent-runtime
          resources:
            requests: {cpu: "1", memory: 512Mi}
            limits: {cpu: "2", memory: 512Mi}
EOF

# 3. The controller (no webhooks: nothing here can reach them over TLS).
free() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
"$SANDBOX_CONTROLLER_BIN" --metrics-bind-address "127.0.0.1:$(free)" \
    --health-probe-bind-address "127.0.0.1:$(free)" --enable-webhooks false \
    --system-namespace sandbox-system --leader-elect-namespace sandbox-system \
    --storage-drivers "$csi_driver" --storage-cli "$storage_cli" \
    >"$run_dir/controller.log" 2>&1 &
pids+=($!)

# 4. sandbox-xds watching Sandbox CRs, serving the gateway's listener on 127.0.0.1.
cat > "$run_dir/gateway.yaml" <<EOF
listen_address: 127.0.0.1
listen_port: $gw_port
metrics_port: 0
admin_port: $admin_port
xds_address: http://127.0.0.1:$xds_port
EOF
"$SANDBOX_XDS_BIN" --source kube --grpc-listen "127.0.0.1:$xds_port" \
    --http-listen "127.0.0.1:$xds_http_port" --gateway-config "$run_dir/gateway.yaml" \
    >"$run_dir/xds.log" 2>&1 &
pids+=($!)

# 5. Envoy with the module, bootstrapped with ADS only.
sed -e "s|port_value: 18000|port_value: $xds_port|" \
    -e "s|port_value: 9901|port_value: $admin_port|" \
    "$root/envoy/gateway-ads.yaml" > "$run_dir/envoy.yaml"
ENVOY_DYNAMIC_MODULES_SEARCH_PATH=$(dirname "$SANDBOX_GATEWAY_MODULE") \
    "$ENVOY_BIN" -c "$run_dir/envoy.yaml" --service-node kube-gateway --disable-hot-restart \
    --concurrency "${GATEWAY_CONCURRENCY:-2}" -l "${GATEWAY_LOG_LEVEL:-warning}" \
    --base-id "$gw_port" >"$run_dir/envoy.log" 2>&1 &
pids+=($!)

# 6. The managers: one admin key; API keys in Secret sandbox-system/e2b-key-store, shared.
rm -f "$run_dir"/manager-*.log
key=e2b_$(head -c 20 /dev/urandom | od -An -tx1 | tr -d ' \n')
port_of() { local v=API_PORT_$1; echo "${!v:-$((api_port + $1))}"; }
# Each replica is restarted when it exits, as its Deployment would (tests kill one mid-claim).
# A replica that keeps exiting within 2 s gives up (so start-up failures surface).
supervise() {
    local child= quick=0 started
    trap '[ -n "$child" ] && kill -TERM "$child" 2>/dev/null; wait "$child" 2>/dev/null; exit 0' TERM INT
    while :; do
        started=$SECONDS
        "$@" &
        child=$!
        wait "$child" || true
        if ((SECONDS - started < 2)); then quick=$((quick + 1)); else quick=0; fi
        ((quick < 5)) || exit 1
        echo "supervise: restarting $1" >&2
        sleep 0.5
    done
}
for ((i = 0; i < replicas; i++)); do
    mkdir -p "$run_dir/manager-$i"
    # shellcheck disable=SC2086
    supervise "$SANDBOX_MANAGER_BIN" --backend kube --listen "127.0.0.1:$(port_of "$i")" \
        --data-dir "$run_dir/manager-$i" --admin-api-key "$key" \
        --xds-address "http://127.0.0.1:$xds_port" --min-gateways 1 \
        --storage-drivers "$csi_driver" --storage-cli "$storage_cli" ${MANAGER_ARGS:-} \
        >>"$run_dir/manager-$i.log" 2>&1 &
    pids+=($!)
done

log "cluster, controller, sandbox-xds, gateway and $replicas manager(s) starting (logs in $run_dir)"
for _ in $(seq 1 1200); do
    alive
    ready=1
    for ((i = 0; i < replicas; i++)); do
        [ "$(curl -s --max-time 2 "http://127.0.0.1:$(port_of "$i")/readyz" || true)" = ready ] || ready=0
    done
    avail=$(kubectl get sandboxset base -n default -o jsonpath='{.status.availableReplicas}' 2>/dev/null || true)
    [ "$ready" = 1 ] && [ "${avail:-0}" -ge "$pool_size" ] && break
    sleep 0.25
done
[ "$ready" = 1 ] && [ "${avail:-0}" -ge "$pool_size" ] || { log "not ready after 5 minutes"; exit 1; }

cat > "$run_dir/env" <<EOF
export E2B_API_KEY=$key
export E2B_API_URL=http://127.0.0.1:$api_port
export E2B_SANDBOX_URL=http://127.0.0.1:$gw_port
export E2B_DOMAIN=localhost
export KUBECONFIG=$KUBECONFIG
EOF
log ""
log "ready ($pool_size warm sandboxes in SandboxSet default/base). Paste these lines into another"
log "shell (also in $run_dir/env), then run python examples/quickstart.py:"
log ""
cat "$run_dir/env"
log ""
log "Ctrl-C stops everything."
wait -n "${pids[@]}" || true
log "a component exited; stopping"
