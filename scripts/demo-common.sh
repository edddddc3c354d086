# What both demos (scripts/demo.sh, scripts/demo-k8s.sh) do around their steps. Sourced, after
# TOPO is set: `--keep` as the first argument leaves the lab running.
export PATH="$PWD/.venv/bin:$PATH"
KEEP=false
[[ "${1:-}" == "--keep" ]] && KEEP=true

bold() { printf '\n\033[1m%s\033[0m\n' "$*"; }
step() { printf '\n\033[1m$ %s\033[0m\n' "$*"; "$@"; }

cleanup() {
    trap - EXIT INT TERM
    echo
    echo "==> removing the lab"
    percalectl lab down -t "$TOPO"
}

# A lab left by an earlier run that was killed: start from nothing.
percalectl lab down -t "$TOPO" >/dev/null 2>&1 || true
$KEEP || trap cleanup EXIT
trap 'exit 130' INT TERM

# Up to 30 s for the ping matrix to be whole (routes being learnt); the demo prints it next.
wait_for_pings() {
    for _ in $(seq 60); do
        percalectl lab ping -t "$TOPO" >/dev/null 2>&1 && break
        sleep 0.5
    done
}

# The end of a demo: leave the lab with --keep, else wait for Enter (when there is a terminal).
finish() {
    if $KEEP; then
        echo
        echo "The lab keeps running. Remove it with: percalectl lab down -t $TOPO"
    elif [[ -t 0 ]]; then
        echo
        read -r -p "Press Enter to remove the lab (Ctrl-C also removes it) " _ || true
    fi
}
