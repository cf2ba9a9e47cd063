#!/usr/bin/env bash
# The embedded stack, in the foreground: sandbox-manager (local backend, sandbox-xds in process)
# and Envoy 1.40 with the module, bootstrapped over ADS. Prints the E2B environment variables to
# use once the warm pool is ready and the gateway has synced; Ctrl-C (or SIGTERM) stops
# everything and leaves no process behind.
#
# Everything binds 127.0.0.1; sandboxes get their own loopback addresses (127.1.0.0/16), and the
# gateway refuses 127.0.0.1 as an upstream. Ports and paths come from the environment:
#   API_PORT (3000) GATEWAY_PORT (10000) XDS_PORT (18000) XDS_HTTP_PORT (18001)
#   ENVOY_ADMIN_PORT (9901) GATEWAY_METRICS_PORT (9902, 0 = none) RUN_DIR (.run/local)
#   DATA_DIR ($RUN_DIR/data) POOL_SIZE (2) TEMPLATES (config/local-templates.yaml, which adds
#   code-interpreter-v1, when its binary and kernels exist) ADDRESS_RANGE (127.1.0.0/16)
#   MANAGER_ARGS (extra sandbox-manager flags) CODE_INTERPRETER_POOL_SIZE (1)
# Binaries: SANDBOX_MANAGER_BIN, AGENT_RUNTIME_BIN, SANDBOX_GATEWAY_MODULE, ENVOY_BIN (set by make);
# CODE_INTERPRETER_BIN (default: code-interpreter next to the manager) and
# CODE_INTERPRETER_KERNELS_VENV (default: $SANDBOX_CACHE_DIR/kernels-venv; make kernels).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
manager=${SANDBOX_MANAGER_BIN:?SANDBOX_MANAGER_BIN is not set (run through make run)}
runtime=${AGENT_RUNTIME_BIN:?AGENT_RUNTIME_BIN is not set (run through make run)}
module=${SANDBOX_GATEWAY_MODULE:?SANDBOX_GATEWAY_MODULE is not set (run through make run)}
envoy=${ENVOY_BIN:?ENVOY_BIN is not set (run through make run)}
api_port=${API_PORT:-3000}
gw_port=${GATEWAY_PORT:-10000}
xds_port=${XDS_PORT:-18000}
xds_http_port=${XDS_HTTP_PORT:-18001}
admin_port=${ENVOY_ADMIN_PORT:-9901}
metrics_port=${GATEWAY_METRICS_PORT:-9902}
run_dir=${RUN_DIR:-$root/.run/local}
data_dir=${DATA_DIR:-$run_dir/data}
mkdir -p "$run_dir" "$data_dir"
run_dir=$(cd "$run_dir" && pwd)
rm -f "$run_dir/env"

log() { printf '%s\n' "$*" >&2; }

pids=()
stop() {
    trap - INT TERM EXIT
    if [ ${#pids[@]} -gt 0 ]; then
        log "stopping (sandbox processes are stopped by the manager; claimed sandboxes stay on disk as paused)"
        kill -TERM "${pids[@]}" 2>/dev/null || true
        for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    fi
    # A manager that crashed took its runtimes with it, but not what they started: kill that.
    "$manager" --data-dir "$data_dir" --reap >>"$run_dir/manager.log" 2>&1 || true
}
trap stop EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# The gateways' listener and cluster settings, served by the embedded sandbox-xds.
cat > "$run_dir/gateway.yaml" <<EOF
listen_address: 127.0.0.1
listen_port: $gw_port
metrics_port: $metrics_port
admin_port: $admin_port
xds_address: http://127.0.0.1:$xds_port
EOF
# Templates: ${CODE_INTERPRETER_*} in the file are this run's code interpreter and kernels.
code_interpreter=${CODE_INTERPRETER_BIN:-$(dirname "$manager")/code-interpreter}
kernels_venv=${CODE_INTERPRETER_KERNELS_VENV:-${SANDBOX_CACHE_DIR:-$HOME/.cache/kruise-agents-rs}/kernels-venv}
templates=${TEMPLATES:-}
if [ -z "$templates" ]; then
    if [ -x "$code_interpreter" ] && [ -d "$kernels_venv/share/jupyter/kernels" ]; then
        templates=$root/config/local-templates.yaml
    else
        log "code-interpreter-v1 is not offered: $code_interpreter or the kernels in $kernels_venv are missing (make run builds both)"
    fi
fi
if [ -n "$templates" ]; then
    sed -e "s|\${CODE_INTERPRETER_BIN}|$code_interpreter|g" \
        -e "s|\${CODE_INTERPRETER_KERNELS_VENV}|$kernels_venv|g" \
        -e "s|\${CODE_INTERPRETER_POOL_SIZE}|${CODE_INTERPRETER_POOL_SIZE:-1}|g" \
        "$templates" > "$run_dir/templates.yaml"
    templates=$run_dir/templates.yaml
fi

# Envoy's bootstrap: admin and the ADS cluster, pointed at this run's ports.
sed -e "s|port_value: 18000|port_value: $xds_port|" \
    -e "s|port_value: 9901|port_value: $admin_port|" \
    "$root/envoy/gateway-ads.yaml" > "$run_dir/envoy.yaml"

# shellcheck disable=SC2086
"$manager" --backend local --listen "127.0.0.1:$api_port" --data-dir "$data_dir" \
    --runtime-bin "$runtime" --base-pool-size "${POOL_SIZE:-2}" \
    ${templates:+--templates "$templates"} --address-range "${ADDRESS_RANGE:-127.1.0.0/16}" \
    --xds-grpc-listen "127.0.0.1:$xds_port" --xds-http-listen "127.0.0.1:$xds_http_port" \
    --gateway-config "$run_dir/gateway.yaml" --min-gateways 1 \
    ${MANAGER_ARGS:-} >"$run_dir/manager.log" 2>&1 &
pids+=($!)
manager_pid=$!

export ENVOY_DYNAMIC_MODULES_SEARCH_PATH
ENVOY_DYNAMIC_MODULES_SEARCH_PATH=$(dirname "$module")
"$envoy" -c "$run_dir/envoy.yaml" --service-node local-gateway --disable-hot-restart \
    --concurrency "${GATEWAY_CONCURRENCY:-2}" -l "${GATEWAY_LOG_LEVEL:-warning}" \
    --base-id "$api_port" >"$run_dir/envoy.log" 2>&1 &
pids+=($!)
envoy_pid=$!

log "sandbox-manager (log: $run_dir/manager.log), gateway (log: $run_dir/envoy.log): warming up"
last=""
for _ in $(seq 1 1200); do
    for p in "$manager_pid" "$envoy_pid"; do
        if ! kill -0 "$p" 2>/dev/null; then
            log "a component exited during start-up; last lines of its log:"
            tail -n 20 "$run_dir/manager.log" "$run_dir/envoy.log" >&2 || true
            exit 1
        fi
    done
    body=$(curl -s --max-time 2 "http://127.0.0.1:$api_port/readyz" || true)
    if [ "$body" = "ready" ]; then break; fi
    msg=$(printf '%s' "$body" | sed -n 's/.*"message":"\([^"]*\)".*/\1/p')
    if [ -n "$msg" ] && [ "$msg" != "$last" ]; then log "  $msg"; last=$msg; fi
    sleep 0.25
done
[ "$body" = "ready" ] || { log "not ready after 5 minutes"; exit 1; }

key=$(cat "$data_dir/admin-api-key")
cat > "$run_dir/env" <<EOF
export E2B_API_KEY=$key
export E2B_API_URL=http://127.0.0.1:$api_port
export E2B_SANDBOX_URL=http://127.0.0.1:$gw_port
export E2B_DOMAIN=localhost
EOF
log ""
log "ready. Paste these lines into another shell (also in $run_dir/env), then run"
log "python examples/quickstart.py (or examples/code_interpreter.py):"
log ""
cat "$run_dir/env"
log ""
log "Ctrl-C stops everything."
wait -n "${pids[@]}" || true
log "a component exited; stopping"
