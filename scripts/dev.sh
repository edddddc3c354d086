#!/usr/bin/env bash
# Sets up everything percale needs on a Debian machine (run as root) and then runs the demo or
# the whole test suite:  bash scripts/dev.sh demo [k8s] | bash scripts/dev.sh test [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages: Python with venv, a real etcd (server and etcdctl) for the datastore and its
# tests, iproute2 and iputils-ping for the network namespaces of the CNI tests, the reference CNI
# plugins (bridge, host-local, ptp, portmap) to chain with and measure against, docker-compose to
# validate docker-compose.yml, GoBGP and BIRD as real BGP peers for the interop tests, nftables
# for natOutgoing, a C compiler for the compiled CNI shim.
APT_PACKAGES=(python3 python3-venv python3-pip etcd-server etcd-client iproute2 iputils-ping nftables ca-certificates docker-compose containernetworking-plugins gobgpd bird2 gcc libc6-dev)
VENV=.venv
PYTHON=/usr/bin/python3

install_debian_packages() {
    local missing=()
    for pkg in "${APT_PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
    done
    if ((${#missing[@]})); then
        echo "==> apt-get install ${missing[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
}

install_python_environment() {
    # Re-install only when pyproject.toml changed since the last install.
    local stamp="$VENV/.percale-installed" want
    want=$(sha256sum pyproject.toml | cut -d' ' -f1)
    if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
        return
    fi
    echo "==> creating $VENV from pyproject.toml"
    [[ -x "$VENV/bin/python" ]] || "$PYTHON" -m venv "$VENV"
    if ! { "$VENV/bin/python" -m pip install --upgrade pip &&
           "$VENV/bin/python" -m pip install -e '.[test]'; } >"$VENV/pip.log" 2>&1; then
        tail -n 30 "$VENV/pip.log" >&2
        echo "pip install failed; the whole log is in $VENV/pip.log" >&2
        exit 1
    fi
    echo "$want" >"$stamp"
}

build_compiled() {
    # The compiled CNI shim (cni-plugin/percale_cni/shim.c) beside percalectl, where
    # `percalectl cni install` takes it from, and ExaBGP's compiled bridge (bgpd/bridge.c),
    # which percale-node runs when it finds it there; each rebuilt only when its source changed.
    "$VENV/bin/python" -m percale_cni.build "$VENV/bin/percale-cni" >/dev/null
    "$VENV/bin/python" -m percale.ipc.compiled bgpd/bridge.c "$VENV/bin/percale-bgp-bridge" >/dev/null
}

kubernetes_binaries() {
    # The real kube-apiserver, controller-manager, scheduler and kubectl the Kubernetes-datastore
    # tests and labs run, built from the Go module proxy once per release into ~/.cache/percale.
    bash scripts/k8s-binaries.sh >/dev/null
}

case "${1:-}" in
    demo)
        install_debian_packages
        install_python_environment
        build_compiled
        kubernetes_binaries
        shift
        exec bash scripts/demo.sh "$@"
        ;;
    test)
        install_debian_packages
        install_python_environment
        build_compiled
        kubernetes_binaries
        shift
        exec "$VENV/bin/python" -m pytest "$@"
        ;;
    setup)
        # What a node needs (docker/node.Dockerfile runs this): no Kubernetes binaries, no Go.
        install_debian_packages
        install_python_environment
        build_compiled
        ;;
    *)
        echo "usage: bash scripts/dev.sh demo [k8s] [--keep] | test [pytest args] | setup" >&2
        exit 2
        ;;
esac
