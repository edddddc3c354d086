#!/usr/bin/env bash
# The demo: a local etcd, the example resources applied with percalectl, and shown back.
# Run through `bash scripts/dev.sh demo`, which installs what this needs. Pass --keep to leave
# etcd running afterwards (it prints how to stop it).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"

KEEP=false
[[ "${1:-}" == "--keep" ]] && KEEP=true

DEMO_DIR=$PWD/.demo
mkdir -p "$DEMO_DIR"
port=$(python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
peer=$(python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
export ETCD_ENDPOINTS=http://127.0.0.1:$port

etcd_pid=
stop_etcd() {
    if [[ -n "$etcd_pid" ]] && kill -0 "$etcd_pid" 2>/dev/null; then
        kill "$etcd_pid"
        wait "$etcd_pid" 2>/dev/null || true
    fi
    rm -rf "$DEMO_DIR/etcd"
}
$KEEP || trap stop_etcd EXIT

step() { printf '\n\033[1m$ %s\033[0m\n' "$*"; "$@"; }

echo "==> starting etcd on $ETCD_ENDPOINTS (data in $DEMO_DIR/etcd)"
rm -rf "$DEMO_DIR/etcd"
etcd --name demo --data-dir "$DEMO_DIR/etcd" \
    --listen-client-urls "$ETCD_ENDPOINTS" --advertise-client-urls "$ETCD_ENDPOINTS" \
    --listen-peer-urls "http://127.0.0.1:$peer" --initial-advertise-peer-urls "http://127.0.0.1:$peer" \
    --initial-cluster "demo=http://127.0.0.1:$peer" \
    --auto-compaction-mode revision --auto-compaction-retention 10000 \
    --logger zap --log-outputs "$DEMO_DIR/etcd.log" >/dev/null 2>&1 &
etcd_pid=$!
for _ in $(seq 100); do
    python -c "import urllib.request,sys; urllib.request.urlopen('$ETCD_ENDPOINTS/health', timeout=1)" 2>/dev/null && break
    sleep 0.1
done

step percalectl version
step percalectl apply -f examples/
step percalectl get ippools -o wide
step percalectl get nodes -o wide
step percalectl get bgppeers
step percalectl get bgpconfig
step percalectl get ippool default-ipv4-ippool -o yaml
step percalectl ipam show
step percalectl ipam show --show-configuration

echo
echo "==> applying what 'get -o yaml' printed changes nothing:"
printf '\033[1m$ percalectl get ippools -o yaml | percalectl apply -f -\033[0m\n'
percalectl get ippools -o yaml | percalectl apply -f -

echo
echo "==> bad input is refused whole, naming the field and the reason:"
printf '$ percalectl apply -f examples/invalid/overlapping-pool.yaml\n'
percalectl apply -f examples/invalid/overlapping-pool.yaml || true

echo
if $KEEP; then
    echo "etcd is still running (pid $etcd_pid). Try:"
    echo "  export ETCD_ENDPOINTS=$ETCD_ENDPOINTS PATH=$PWD/.venv/bin:\$PATH"
    echo "  percalectl get ippools -o yaml"
    echo "Stop it with: kill $etcd_pid"
else
    echo "Next: run 'bash scripts/dev.sh demo --keep' to keep etcd running and try percalectl yourself."
fi
