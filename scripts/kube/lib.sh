# Shared settings of the scripts in scripts/kube (sourced, not run).
# Everything the Go toolchain downloads or compiles lives under $SANDBOX_CACHE_DIR/kube, outside
# the repository, so a fresh clone on the same machine reuses it.

KUBE_SCRIPTS_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=versions.env
source "$KUBE_SCRIPTS_DIR/versions.env"

: "${SANDBOX_CACHE_DIR:=${XDG_CACHE_HOME:-$HOME/.cache}/kruise-agents-rs}"
KUBE_CACHE_DIR="$SANDBOX_CACHE_DIR/kube"
KUBE_BIN_DIR="$KUBE_CACHE_DIR/$KUBE_VERSION/bin"

export GOPATH="$KUBE_CACHE_DIR/go"
export GOMODCACHE="$KUBE_CACHE_DIR/go/pkg/mod"
export GOCACHE="$KUBE_CACHE_DIR/go-build"
export GOTOOLCHAIN=local
export GOFLAGS="-buildvcs=false -mod=readonly"
export CGO_ENABLED=0

kube_log() { printf '[kube] %s\n' "$*" >&2; }

kube_require_go() {
    if ! command -v go >/dev/null 2>&1; then
        kube_log "the Go toolchain (go >= 1.25) is needed to build kube-apiserver, etcd, kubectl and helm"
        exit 1
    fi
}
