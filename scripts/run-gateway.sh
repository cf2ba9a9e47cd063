#!/usr/bin/env bash
# Runs the sandbox gateway in the foreground: Envoy 1.40 with libsandbox_gateway.so, from the
# shipped envoy/gateway.yaml, with static routes from a JSON file (default
# envoy/examples/routes.json). Sandbox traffic on :10000, admin on 127.0.0.1:9901, Prometheus
# on :9902/metrics.
#   usage: scripts/run-gateway.sh [ROUTES_JSON]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
routes=$(realpath "${1:-$root/envoy/examples/routes.json}")
envoy=${ENVOY_BIN:?ENVOY_BIN is not set (run through make)}
module=${SANDBOX_GATEWAY_MODULE:?SANDBOX_GATEWAY_MODULE is not set (run through make)}
run_dir=$root/.run
mkdir -p "$run_dir"
config=$run_dir/gateway.yaml
# The shipped filter config has no route source; point it at the routes file.
sed "s|value: {sandbox_cluster: sandboxes}|value: {sandbox_cluster: sandboxes, routes_file: \"$routes\"}|" \
    "$root/envoy/gateway.yaml" > "$config"
grep -q "routes_file" "$config" || { echo "could not set routes_file in $config" >&2; exit 1; }
echo "sandbox gateway: http://127.0.0.1:10000 (routes from $routes)" >&2
echo "try: curl -i -H 'e2b-sandbox-id: demo' -H 'e2b-sandbox-port: 49983' http://127.0.0.1:10000/health" >&2
export ENVOY_DYNAMIC_MODULES_SEARCH_PATH=$(dirname "$module")
exec "$envoy" -c "$config" --disable-hot-restart --concurrency "${GATEWAY_CONCURRENCY:-2}" -l "${GATEWAY_LOG_LEVEL:-info}"
