#!/usr/bin/env bash
# Builds (once) the real Kubernetes binaries the tests and `make run` use, from their Go modules,
# into the cache outside the repository:
#
#   $SANDBOX_CACHE_DIR/kube/kubernetes-$KUBE_VERSION/bin/{kube-apiserver,kube-controller-manager,kubectl}
#   $SANDBOX_CACHE_DIR/kube/etcd-$ETCD_VERSION/bin/etcd
#   $SANDBOX_CACHE_DIR/kube/helm-$HELM_VERSION/bin/helm
#
# The pinned wrapper modules live in scripts/kube/modules/ (see update-modules.sh for why
# k8s.io/kubernetes needs one). A binary is rebuilt only when its module files, versions.env or
# this script change (a stamp next to it records a hash of those). GOPATH, GOMODCACHE and GOCACHE
# are under $SANDBOX_CACHE_DIR/kube too, so a rebuild after a version bump is incremental.
#
# Usage: build-bins.sh [--print-env]
#   --print-env   also print KUBE_APISERVER_BIN=..., ETCD_BIN=..., KUBECTL_BIN=..., HELM_BIN=...
set -euo pipefail
source "$(dirname "$0")/lib.sh"

print_env=0
for arg in "$@"; do
    case "$arg" in
        --print-env) print_env=1 ;;
        -h|--help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) kube_log "unknown argument: $arg"; exit 2 ;;
    esac
done

MODULES="$KUBE_SCRIPTS_DIR/modules"
KUBE_DIR="$KUBE_CACHE_DIR/kubernetes-$KUBE_VERSION/bin"
ETCD_DIR="$KUBE_CACHE_DIR/etcd-$ETCD_VERSION/bin"
HELM_DIR="$KUBE_CACHE_DIR/helm-$HELM_VERSION/bin"

bin_name() {
    local spec="$1"
    if [[ "$spec" == *=* ]]; then echo "${spec#*=}"; else basename "$spec"; fi
}

# Hash of everything that decides what a module's binaries are.
recipe_hash() {
    local module="$1"
    cat "$KUBE_SCRIPTS_DIR/versions.env" "$0" "$MODULES/$module/go.mod" "$MODULES/$module/go.sum" \
        | sha256sum | cut -d' ' -f1
}

# build_module MODULE OUT_DIR LDFLAGS PKG[=NAME]...: builds the main packages PKG... of the wrapper
# module into OUT_DIR (as NAME, default the last path element) unless the stamp says they are current.
build_module() {
    local module="$1" out="$2" ldflags="$3"
    shift 3
    local hash stamp="$out/.stamp"
    hash="$(recipe_hash "$module")"
    local missing=0 spec pkgs=()
    for spec in "$@"; do
        [[ -x "$out/$(bin_name "$spec")" ]] || missing=1
        pkgs+=("${spec%%=*}")
    done
    if [[ $missing == 0 && -f "$stamp" && "$(cat "$stamp")" == "$hash" ]]; then
        kube_log "$module: up to date in $out"
        return
    fi
    kube_require_go
    kube_log "$module: building ${pkgs[*]} (go $(go env GOVERSION), cache $KUBE_CACHE_DIR); the first build takes several minutes"
    local start=$SECONDS tmp
    mkdir -p "$out"
    tmp="$(mktemp -d "$out/.build.XXXXXX")"
    # -trimpath and -s -w: smaller binaries and no paths of this machine in them.
    # Packages that keep their own name are built in one go command, so compiling and linking
    # of the binaries overlap; renamed ones one at a time.
    local spec plain=()
    for spec in "$@"; do
        if [[ "$spec" == *=* ]]; then
            (cd "$MODULES/$module" && go build -trimpath -ldflags "-s -w $ldflags" -o "$tmp/$(bin_name "$spec")" "${spec%%=*}")
        else
            plain+=("$spec")
        fi
    done
    if [[ ${#plain[@]} -gt 0 ]]; then
        (cd "$MODULES/$module" && go build -trimpath -ldflags "-s -w $ldflags" -o "$tmp/" "${plain[@]}")
    fi
    for spec in "$@"; do mv -f "$tmp/$(bin_name "$spec")" "$out/"; done
    rmdir "$tmp"
    echo "$hash" >"$stamp"
    kube_log "$module: built in $((SECONDS - start)) s"
}

mkdir -p "$KUBE_CACHE_DIR"
# One build at a time per cache (several make runs may start at once).
exec 9>"$KUBE_CACHE_DIR/.build.lock"
flock 9

kminor="${KUBE_VERSION#v1.}"; kminor="${kminor%%.*}"
kube_ldflags=""
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    kube_ldflags+=" -X $pkg.gitVersion=$KUBE_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$kminor"
    kube_ldflags+=" -X $pkg.gitTreeState=clean"
done
build_module kubernetes "$KUBE_DIR" "$kube_ldflags" \
    k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager k8s.io/kubernetes/cmd/kubectl
# The etcd server module's root is its main package.
build_module etcd "$ETCD_DIR" "" go.etcd.io/etcd/server/v3=etcd
helm_ldflags="-X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
helm_ldflags+=" -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=$kminor"
build_module helm "$HELM_DIR" "$helm_ldflags" helm.sh/helm/v3/cmd/helm

if [[ $print_env == 1 ]]; then
    echo "KUBE_APISERVER_BIN=$KUBE_DIR/kube-apiserver"
    echo "KUBE_CONTROLLER_MANAGER_BIN=$KUBE_DIR/kube-controller-manager"
    echo "KUBECTL_BIN=$KUBE_DIR/kubectl"
    echo "ETCD_BIN=$ETCD_DIR/etcd"
    echo "HELM_BIN=$HELM_DIR/helm"
fi
