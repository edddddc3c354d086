#!/usr/bin/env bash
# Builds the real Kubernetes control plane percale's tests and labs run (kube-apiserver,
# kube-controller-manager, kube-scheduler, kubectl) from the Go module proxy, once per release,
# into a cache outside the clone, and prints the directory that holds them.
#
#   bash scripts/k8s-binaries.sh            -> ~/.cache/percale/k8s/v1.37.2
#
# The release is the one tools/k8s/go.mod requires. The first build downloads about 800 MB of
# modules and compiles for about 5 minutes on 2 cores (longer on a slow link); later calls find the
# cache and return at once.
set -euo pipefail
cd "$(dirname "$0")/../tools/k8s"

VERSION=$(awk '$1 == "k8s.io/kubernetes" && $2 ~ /^v/ {print $2; exit}' go.mod)
[[ -n "$VERSION" ]] || { echo "k8s-binaries: tools/k8s/go.mod requires no k8s.io/kubernetes" >&2; exit 1; }
CACHE="${PERCALE_CACHE:-$HOME/.cache/percale}/k8s/$VERSION"
BINARIES=(kube-apiserver kube-controller-manager kube-scheduler kubectl)

have_all() {
    local b
    for b in "${BINARIES[@]}"; do [[ -x "$CACHE/$b" ]] || return 1; done
}

if ! have_all; then
    # One build at a time per cache (say the demo and the tests started together on a fresh
    # machine): both would build into the same staging directory, and one would replace the
    # binaries under the other. The second waits for the first, then finds the cache filled.
    mkdir -p "$(dirname "$CACHE")"
    exec 9>"$CACHE.lock"
    if ! flock -n 9; then
        echo "==> another build of Kubernetes $VERSION is under way; waiting for it" >&2
        flock 9
    fi
fi

if ! have_all; then
    command -v go >/dev/null || { echo "k8s-binaries: Go is needed to build Kubernetes $VERSION" >&2; exit 1; }
    echo "==> building Kubernetes $VERSION (${BINARIES[*]}) into $CACHE; the first build takes about 5 minutes on 2 cores" >&2
    staging="$CACHE.partial"
    rm -rf "$staging"
    mkdir -p "$staging"
    packages=()
    for b in "${BINARIES[@]}"; do packages+=("k8s.io/kubernetes/cmd/$b"); done
    start=$SECONDS
    # -trimpath and -s -w: reproducible paths and no symbol tables (about a third smaller); -X
    # stamps the release into /version and `kubectl version`, as the release build does.
    minor=${VERSION#v1.}; minor=${minor%%.*}
    stamp=""
    for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
        stamp+=" -X $pkg.gitVersion=$VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
        stamp+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
    done
    CGO_ENABLED=0 go build -trimpath -ldflags "-s -w$stamp" -o "$staging/" "${packages[@]}" >&2
    rm -rf "$CACHE"
    mv "$staging" "$CACHE"
    echo "==> built in $((SECONDS - start)) s" >&2
fi
echo "$CACHE"
