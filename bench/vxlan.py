"""bench/vxlan.py: VXLAN on N-node labs without BGP (`percalectl lab generate-mesh --vxlan`).

    sudo .venv/bin/python bench/vxlan.py [--nodes 10,20] [--rounds 5] [--megabytes 200]

For each N:

  node added   a node that is not there joins (its Node with tunnel address and MAC, and a block
               of its own), written from node1; every node's `ip monitor route` is read by a
               thread that stamps the moment the block's route arrives: p50 and max over all
               nodes and rounds, from the write's return. Then it leaves, the same way.
  per change   over those joins and leaves: every agent's CPU (/proc) and datastore requests
               (percale_datastore_requests_total on its /metrics), per node and change
  throughput   (the first N only) a TCP transfer from a pod on node1 to a pod on node2 through
               vxlan.percale, and the limit: the same two pods with their traffic sent over a
               kernel VXLAN device made by hand between the nodes instead (another VNI and port,
               the same MTU; /32 routes to the two pods through it). Three rounds each, taking
               turns; medians. Aim: percale / limit >= 0.95.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.harness import run_script
from bench.ipam import progress
from percale.lab import generate, pods
from percale.lab.runner import open_lab
from tests.lab.test_vxlan3 import JOIN

TRANSFER = r"""
import socket, sys, time
role, address, megabytes = sys.argv[1], sys.argv[2], int(sys.argv[3])
if role == "serve":
    server = socket.socket(); server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind((address, 5201)); server.listen(1); print("ready", flush=True)
    conn, _ = server.accept(); total = 0; started = None
    while chunk := conn.recv(1 << 20):
        started = started or time.perf_counter(); total += len(chunk)
    print(total * 8 / (time.perf_counter() - started) / 1e9, flush=True)
else:
    client = socket.create_connection((address, 5201), timeout=30)
    block = b"x" * (1 << 20)
    for _ in range(megabytes):
        client.sendall(block)
    client.close()
"""


class RouteWatch:
    """`ip monitor route` in one node: when a line naming `prefix` first arrived, per round."""

    def __init__(self, namespace: str) -> None:
        self.process = subprocess.Popen(["ip", "netns", "exec", namespace, "ip", "monitor", "route"],
                                        stdout=subprocess.PIPE, text=True)
        self.seen: list[tuple[float, str]] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.seen.append((time.monotonic(), line))

    def first(self, after: float, words: str, deleted: bool) -> float | None:
        for when, line in list(self.seen):
            if when >= after and words in line and line.startswith("Deleted") == deleted:
                return when
        return None

    def stop(self) -> None:
        self.process.kill()
        self.process.wait()


def agent_pids(lab) -> dict[str, int]:
    return {node: lab.processes(node)[-1]["pid"] for node in lab.topology.nodes
            if node.startswith("node")}


def cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100


def requests(lab, node: str) -> float:
    script = ("import urllib.request;"
              "print(urllib.request.urlopen('http://127.0.0.1:9099/metrics', timeout=5).read().decode())")
    out = lab.exec(node, [sys.executable, "-c", script], capture=True).stdout
    return sum(float(line.rsplit(" ", 1)[1]) for line in out.splitlines()
               if line.startswith("percale_datastore_requests_total{"))


def until(check, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError("timed out")
        time.sleep(0.02)


def joins(lab, rounds: int) -> dict:
    nodes = [n for n in lab.topology.nodes if n.startswith("node")]
    watches = {node: RouteWatch(lab.topology.namespace(node)) for node in nodes}
    pids = agent_pids(lab)
    cpu_before = {n: cpu(p) for n, p in pids.items()}
    req_before = {n: requests(lab, n) for n in nodes}
    added, removed = [], []
    try:
        time.sleep(0.5)
        for _ in range(rounds):
            for action, into in (("join", added), ("leave", removed)):
                done = lab.exec("node1", [sys.executable, "-c", JOIN, action], capture=True)
                if done.returncode:
                    raise RuntimeError(done.stderr)
                written = float(done.stdout.split()[-1])  # when the writer started the change
                deleted = action == "leave"
                until(lambda: all(w.first(written, "10.244.250.0/26", deleted) for w in watches.values()), 10)
                into += [w.first(written, "10.244.250.0/26", deleted) - written for w in watches.values()]
                time.sleep(0.3)
    finally:
        for watch in watches.values():
            watch.stop()
    changes = 2 * rounds
    return {
        "added": added, "removed": removed,
        "cpu_ms": statistics.mean((cpu(p) - cpu_before[n]) * 1000 / changes for n, p in pids.items()),
        "requests": statistics.mean((requests(lab, n) - req_before[n]) / changes for n in nodes),
    }


def throughput(lab, megabytes: int, rounds: int = 3) -> tuple[float, float]:
    a = pods.add(lab, "node1", "bench-a")
    b = pods.add(lab, "node2", "bench-b")
    ns = {node: lab.topology.namespace(node) for node in ("node1", "node2")}
    under = {n: lab.exec(n, ["ip", "-4", "-o", "addr", "show", "eth1"], capture=True).stdout.split()[3].split("/")[0]
             for n in ns}
    mtu = int(lab.exec("node1", ["cat", "/sys/class/net/vxlan.percale/mtu"], capture=True).stdout)
    ends = {"node1": ("node2", "192.168.250.1", b.addresses[0], "192.168.250.2"),
            "node2": ("node1", "192.168.250.2", a.addresses[0], "192.168.250.1")}
    for node, (other, own_tunnel, far_pod, far_tunnel) in ends.items():
        sh = ["ip", "-n", ns[node]]
        subprocess.run([*sh, "link", "add", "vxbench", "type", "vxlan", "id", "99", "dstport", "4790",
                        "local", under[node], "remote", under[other], "dev", "eth1"], check=True)
        subprocess.run([*sh, "link", "set", "vxbench", "mtu", str(mtu), "up"], check=True)
        subprocess.run([*sh, "addr", "add", f"{own_tunnel}/24", "dev", "vxbench"], check=True)

    def hand_made(on: bool) -> None:
        for node, (_, _, far_pod, far_tunnel) in ends.items():
            verb = "add" if on else "del"
            subprocess.run(["ip", "-n", ns[node], "route", verb, f"{far_pod}/32", "via", far_tunnel,
                            "dev", "vxbench"], check=True)

    percale, limit = [], []
    try:
        for _ in range(rounds):
            percale.append(transfer(b.namespace, a.namespace, b.addresses[0], megabytes))
            hand_made(True)
            try:
                limit.append(transfer(b.namespace, a.namespace, b.addresses[0], megabytes))
            finally:
                hand_made(False)
    finally:
        for node in ns.values():
            subprocess.run(["ip", "-n", node, "link", "del", "vxbench"], check=False)
    return statistics.median(percale), statistics.median(limit)


def transfer(server_ns: str, client_ns: str, address: str, megabytes: int) -> float:
    """Gbit/s of one TCP stream, measured by the receiver."""
    server = subprocess.Popen(["ip", "netns", "exec", server_ns, sys.executable, "-c", TRANSFER,
                               "serve", address, str(megabytes)], stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout.readline().strip() == "ready"
        subprocess.run(["ip", "netns", "exec", client_ns, sys.executable, "-c", TRANSFER, "send",
                        address, str(megabytes)], check=True, timeout=300)
        return float(server.stdout.readline())
    finally:
        server.kill()
        server.wait()


def run(args: argparse.Namespace) -> None:
    sizes = [int(x) for x in args.nodes.split(",")]
    rows = []
    flows = None
    with tempfile.TemporaryDirectory(prefix="percale-vxlan-bench-") as workdir:
        for n in sizes:
            path = generate.write_mesh(n, workdir, name=f"bench-vxlan{n}", vxlan=True)
            lab = open_lab(path)
            lab.down()
            try:
                progress(f"{n} nodes: up")
                lab.up()
                progress(f"{n} nodes: {args.rounds} joins and leaves")
                rows.append((n, joins(lab, args.rounds)))
                if flows is None:
                    progress(f"{n} nodes: {args.megabytes} MB pod to pod, and over a hand-made VXLAN")
                    flows = throughput(lab, args.megabytes)
            finally:
                lab.down()

    def ms(values: list[float], q: float) -> str:
        ordered = sorted(values)
        return f"{ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000:.0f} ms"

    print("\nbench/vxlan.py: labs without BGP (networking backend vxlan, vxlanMode Always)")
    print("| nodes | node added -> route on every node, p50 / max | node removed -> gone, p50 / max "
          "| agent CPU per change | datastore requests per change |")
    print("|---|---|---|---|---|")
    for n, r in rows:
        print(f"| {n} | {ms(r['added'], 0.5)} / {ms(r['added'], 1.0)} | {ms(r['removed'], 0.5)} / "
              f"{ms(r['removed'], 1.0)} | {r['cpu_ms']:.1f} ms | {r['requests']:.2f} |")
    if flows:
        percale, limit = flows
        print(f"\nTCP, one stream, {args.megabytes} MB, pod to pod, medians of 3: through vxlan.percale"
              f" {percale:.2f} Gbit/s; over a hand-made VXLAN {limit:.2f} Gbit/s; ratio"
              f" {percale / limit:.2f} (aim >= 0.95)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", default="10,20")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--megabytes", type=int, default=200)
    args = parser.parse_args()
    return run_script("bench/vxlan.py", lambda: run(args), cleaned="the labs are brought down")


if __name__ == "__main__":
    sys.exit(main())
