#!/usr/bin/env bash
# Runs the sandbox gateway in the foreground: Envoy 1.40 with libsandbox_gateway.so, from the
# shipped envoy/gateway.yaml, with static routes from a JSON file (default
# envoy/examples/routes.json). Sandbox traffic on :10000, admin on 127.0.0.1:9901, Prometheus
# on :9902/metrics.
#
# This runs the platform on loopback, so the listeners bind 127.0.0.1 (GATEWAY_LISTEN_ADDRESS to
# change it): a listener on 0.0.0.0 would also listen on every 127.x address a sandbox can get.
# The shipped filter config denies 127.0.0.1 (and ::1, link-local) as an upstream, so a route to
# 127.0.0.1 never reaches Envoy's admin or another platform service; give sandboxes loopback
# addresses of their own (the example routes use 127.0.1.1).
#   usage: scripts/run-gateway.sh [ROUTES_JSON]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
routes=$(realpath "${1:-$root/envoy/examples/routes.json}")
envoy=${ENVOY_BIN:?ENVOY_BIN is not set (run through make)}
module=${SANDBOX_GATEWAY_MODULE:?SANDBOX_GATEWAY_MODULE is not set (run through make)}
listen=${GATEWAY_LISTEN_ADDRESS:-127.0.0.1}
run_dir=$root/.run
mkdir -p "$run_dir"
config=$run_dir/gateway.yaml
# The shipped filter config has no route source: add the routes file next to sandbox_cluster.
sed -e "s|^\( *\)sandbox_cluster: sandboxes$|&\n\1routes_file: \"$routes\"|" \
    -e "s|socket_address: {address: 0\.0\.0\.0,|socket_address: {address: $listen,|" \
    "$root/envoy/gateway.yaml" > "$config"
grep -q "routes_file: " "$config" || { echo "could not set routes_file in $config" >&2; exit 1; }
grep -q 'denied_upstream_ips: \[.*"127\.0\.0\.1"' "$config" \
    || { echo "$config does not deny 127.0.0.1 as an upstream" >&2; exit 1; }
if grep -q "address: 0\.0\.0\.0" "$config" && [ "$listen" != 0.0.0.0 ]; then
    echo "could not bind the listeners of $config to $listen" >&2; exit 1
fi
echo "sandbox gateway: http://$listen:10000 (routes from $routes)" >&2
echo "try: python3 -m http.server 8000 --bind 127.0.1.1 &" >&2
echo "     curl -i -H 'e2b-sandbox-id: demo' -H 'e2b-sandbox-port: 8000' http://$listen:10000/" >&2
export ENVOY_DYNAMIC_MODULES_SEARCH_PATH=$(dirname "$module")
exec "$envoy" -c "$config" --disable-hot-restart --concurrency "${GATEWAY_CONCURRENCY:-2}" -l "${GATEWAY_LOG_LEVEL:-info}"
