"""bench/scale.py: one real percale-node in a 1,000-node cluster, against the agent before its
datastore view (the commit before datastore/cache.py), in the same run.

    sudo .venv/bin/python bench/scale.py [--nodes 1000] [--ops 200] [--claims 10] [--before REV]

The cluster lives in a throwaway etcd: N Nodes (mesh off, as a cluster this size runs), a global
BGPConfiguration, 3 blocks per node with their confirmed affinities and 8 addresses allocated in
each, and a BGPPeer from the measured node to GoBGP (bench/bgp.py's lab: percale-node in its own
namespace, GoBGP beside it). For each agent, old and new:

  start-up   the agent restarted with that cluster in etcd, until its /readyz says 200
  RSS        the agent's process (not ExaBGP, not the dataplane workers) once it is ready
  per remote event
             a writer (this process) claims and releases blocks of other nodes, and hands out
             and gives back addresses in them, one operation every 50 ms: per operation, the
             datastore requests the agent made (etcd's own request counters, less the writer's)
             and the agent's CPU time (/proc, user + system), and the bytes etcd sent its clients
  claim -> announcement
             blocks claimed for the measured node itself, each timed until GoBGP has the route

Aims (issue #10): 0 datastore reads per remote event, <= 2 ms agent CPU per event, start-up
<= 5 s. Timings are the machine's: the ratio old/new is the figure to read.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import os
import random
import subprocess
import sys
import tempfile
import time
import tomllib
import urllib.request
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.bgp import AS, PERCALE_IP, Lab, RibWatch, memory_kb, store_work, wait_for
from bench.harness import run_script
from bench.ipam import Load, progress, start_etcd
from percale.api import BlockAffinity, IPAMBlock, ObjectMeta, parse
from percale.api.ipam import BlockAffinitySpec, affinity_name, block_name, host_affinity
from percale.datastore.etcd import EtcdDatastore
from percale.ipam import blocks as block_math
from percale.ipam.allocator import IPAM

POOL = ipaddress.ip_network("10.64.0.0/10")
BLOCKS_PER_NODE = 3
ALLOCATED_PER_BLOCK = 8
CONCURRENCY = 32
OP_INTERVAL = 0.05


def resource(kind: str, name: str, spec: dict) -> object:
    return parse({"apiVersion": "percale.io/v1", "kind": kind, "metadata": {"name": name}, "spec": spec})


def block_cidr(index: int) -> str:
    return str(ipaddress.ip_network((int(POOL.network_address) + 64 * index, 26)))


def other_node(i: int) -> str:
    return f"node-{i:04d}"


def node_address(i: int) -> str:
    return f"10.100.{i // 250}.{i % 250 + 1}/16"


async def populate(store: EtcdDatastore, me: str, nodes: int) -> int:
    """The cluster; returns the number of blocks written."""
    await store.create(resource("IPPool", "pods", {"cidr": str(POOL), "blockSize": 26}))
    await store.create(resource("BGPConfiguration", "default",
                                {"nodeToNodeMeshEnabled": False, "asNumber": AS}))
    names = [me] + [other_node(i) for i in range(1, nodes)]
    semaphore = asyncio.Semaphore(CONCURRENCY)

    async def one(i: int, name: str) -> None:
        async with semaphore:
            address = f"{PERCALE_IP}/24" if i == 0 else node_address(i)
            if i:  # the measured node registered itself already
                await store.create(resource("Node", name, {"bgp": {"ipv4Address": address}}))
            for b in range(BLOCKS_PER_NODE):
                cidr = block_cidr(i * BLOCKS_PER_NODE + b)
                spec = IPAMBlock.empty(cidr, affinity=host_affinity(name)).spec
                spec, _ = block_math.assign(spec, ALLOCATED_PER_BLOCK, f"k8s-pod-network.{name}-{b}",
                                            {"node": name, "namespace": "bench", "pod": f"{name}-{b}"})
                await store.create(IPAMBlock(metadata=ObjectMeta(name=block_name(cidr)), spec=spec))
                await store.create(BlockAffinity(
                    metadata=ObjectMeta(name=affinity_name(name, cidr)),
                    spec=BlockAffinitySpec(state="confirmed", node=name, cidr=cidr)))

    await asyncio.gather(*(one(i, name) for i, name in enumerate(names)))
    return nodes * BLOCKS_PER_NODE


# -- an older percale, for "before" -----------------------------------------------------------------


def older_agent(rev: str, scratch: Path) -> list[str]:
    """A command that runs `rev`'s percale-node from a worktree, its packages laid out as its
    pyproject.toml installs them (with this venv's dependencies)."""
    tree = scratch / "tree"
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(tree), rev],
                   check=True, capture_output=True)
    setup = tomllib.loads((tree / "pyproject.toml").read_text())["tool"]["setuptools"]
    mapping = setup.get("package-dir", {})
    root = scratch / "packages"
    for package in sorted(setup["packages"], key=lambda p: p.count(".")):
        source = tree / mapping.get(package, package.replace(".", "/"))
        target = root / package.replace(".", "/")
        if target.exists():
            continue  # inside a package linked already
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(source)
    for parent in {p.split(".")[0] for p in setup["packages"]}:  # a namespace of folders
        if (root / parent).is_dir() and not (root / parent).is_symlink():
            (root / parent / "__init__.py").touch()
    code = (f"import sys; sys.path.insert(0, {str(root)!r}); "
            "from percale.node.main import entry; entry()")
    return [sys.executable, "-c", code]


def remove_worktree(scratch: Path) -> None:
    subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(scratch / "tree")],
                   capture_output=True)


def cache_commit() -> str:
    """The commit before the one that brought the agent's view in."""
    found = subprocess.run(["git", "-C", str(REPO), "log", "--diff-filter=A", "--format=%H", "--",
                            "datastore/cache.py"], capture_output=True, text=True).stdout.split()
    if not found:
        raise RuntimeError("no commit adds datastore/cache.py; name one with --before")
    return found[-1] + "^"


# -- measuring ----------------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def sent_bytes(endpoint: str) -> float:
    """What etcd has sent its clients, all of them: the writer's share is its few small reads,
    so the rest is the agent's (lists and watch events)."""
    with urllib.request.urlopen(f"{endpoint}/metrics", timeout=10) as response:
        for line in response.read().decode().splitlines():
            if line.startswith("etcd_network_client_grpc_sent_bytes_total "):
                return float(line.split()[1])
    return 0.0


def ready(lab: Lab) -> bool:
    script = ("import urllib.request, sys\n"
              "try:\n urllib.request.urlopen('http://127.0.0.1:9099/readyz', timeout=2)\n"
              "except Exception:\n sys.exit(1)")
    return lab.node.exec(sys.executable, "-c", script, check=False).returncode == 0


@dataclass
class Figures:
    startup: float = 0.0
    rss_mb: float = 0.0
    ops: int = 0
    reads_per_op: float = 0.0
    kb_per_op: float = 0.0
    cpu_ms_per_op: float = 0.0
    claim_ms: list[float] | None = None


def measure(lab: Lab, endpoint: str, nodes: int, ops: int, claims: int, first_free: int) -> Figures:
    figures = Figures()
    lab.node.stop_agent()
    started = time.monotonic()
    lab.node.start_agent()
    wait_for(lambda: ready(lab), 300, "the agent's /readyz", interval=0.05)
    figures.startup = time.monotonic() - started
    pid = lab.node.agent.pid
    figures.rss_mb = memory_kb(pid)[0] / 1024
    progress(f"  ready in {figures.startup:.2f} s, RSS {figures.rss_mb:.0f} MB; {ops} remote operations")

    async def remote(store: EtcdDatastore) -> tuple[Load, float, dict]:
        ipam = IPAM(store)
        rng = random.Random(7)
        claimed: list[tuple[str, str]] = []
        next_block = first_free
        await asyncio.sleep(1)  # the agent settles after its start
        before_load, before_cpu, before_bytes = Load.now(endpoint), cpu_seconds(pid), sent_bytes(endpoint)
        writer_before = dict(store.client.requests)
        for n in range(ops):
            node = other_node(rng.randrange(1, nodes))
            kind = n % 4
            if kind == 0 or not claimed:  # a node claims a fresh block
                cidr = block_cidr(next_block)
                next_block += 1
                await ipam.claim_affinity(node, cidr)
                claimed.append((node, cidr))
            elif kind == 1:  # a pod somewhere gets an address
                await ipam.auto_assign(node, handle_id=f"k8s-pod-network.op{n}", num4=1)
            elif kind == 2:  # and another gives one back
                await ipam.release_by_handle(f"k8s-pod-network.op{n - 1}")
            else:  # a node gives an empty block back
                owner, cidr = claimed.pop(0)
                await ipam._release_block_affinity(owner, cidr, require_empty=True)
            await asyncio.sleep(OP_INTERVAL)
        await asyncio.sleep(1)  # the agent's last reactions land
        load, cpu = Load.now(endpoint) - before_load, cpu_seconds(pid) - before_cpu
        sent = sent_bytes(endpoint) - before_bytes
        writer = {k: v - writer_before.get(k, 0) for k, v in store.client.requests.items()}
        return load, cpu, writer, sent

    load, cpu, writer, sent = store_work(endpoint, remote)
    figures.kb_per_op = sent / 1024 / ops
    figures.ops = ops
    figures.reads_per_op = max(0.0, load.range - writer.get("Range", 0)) / ops
    figures.cpu_ms_per_op = cpu * 1000 / ops
    progress(f"  {figures.reads_per_op:.2f} reads, {figures.cpu_ms_per_op:.2f} ms CPU per operation;"
             f" {claims} own claims")

    watch = RibWatch(lab)
    time.sleep(0.3)

    async def own(store: EtcdDatastore) -> list[float]:
        ipam = IPAM(store)
        times = []
        for i in range(claims):
            cidr = block_cidr(first_free + 10_000 + i)
            started = time.perf_counter()
            await ipam.claim_affinity(lab.node.name, cidr)
            while cidr not in watch.seen and time.perf_counter() - started < 30:
                await asyncio.sleep(0.002)
            if cidr not in watch.seen:
                raise RuntimeError(f"{cidr} not in GoBGP's RIB 30 s after its claim")
            times.append((watch.seen[cidr] - started) * 1000)
        for i in range(claims):
            await ipam._release_block_affinity(lab.node.name, block_cidr(first_free + 10_000 + i),
                                               require_empty=True)
        return times

    figures.claim_ms = store_work(endpoint, own)
    return figures


def run(args: argparse.Namespace) -> None:
    server = start_etcd()
    scratch = Path(tempfile.mkdtemp(prefix="percale-scale-"))
    lab: Lab | None = None
    results: dict[str, Figures] = {}
    try:
        before = args.before or cache_commit()
        commits = {"before": subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", before],
                                            capture_output=True, text=True, check=True).stdout.strip(),
                   "now": "working tree"}
        commands = {"before": older_agent(before, scratch), "now": None}
        for which in ("before", "now"):
            progress(f"{which} ({commits[which]}): a cluster of {args.nodes} nodes")
            wipe(server.endpoint)
            lab = Lab(server.unix_endpoint, server.endpoint, agent_command=commands[which])
            lab.up()
            store_work(server.endpoint, lambda s: s.create(
                resource("Node", lab.node.name, {"bgp": {"ipv4Address": f"{PERCALE_IP}/24"}})))
            started = time.monotonic()
            written = store_work(server.endpoint, lambda s: populate(s, lab.node.name, args.nodes))
            progress(f"  {args.nodes} nodes, {written} blocks and affinities written in "
                     f"{time.monotonic() - started:.1f} s")
            lab.percale_peer(True)
            results[which] = measure(lab, server.endpoint, args.nodes, args.ops, args.claims, written + 100)
            lab.down()
            lab = None
        report(args, commits, results)
    finally:
        if lab is not None:
            lab.down()
        remove_worktree(scratch)
        server.stop()


def wipe(endpoint: str) -> None:
    subprocess.run(["etcdctl", "--endpoints", endpoint, "del", "--prefix", "/percale/"],
                   env={"ETCDCTL_API": "3", "PATH": "/usr/bin:/bin"}, check=True, capture_output=True)


def report(args: argparse.Namespace, commits: dict[str, str], results: dict[str, Figures]) -> None:
    old, new = results["before"], results["now"]

    def p50(values: list[float]) -> float:
        return sorted(values)[len(values) // 2]

    def ratio(a: float, b: float) -> str:
        return f"{a / b:.1f}x" if b else ("same" if not a else "-")

    rows = [
        ("start-up until /readyz", f"{old.startup:.2f} s", f"{new.startup:.2f} s", "<= 5 s"),
        ("agent RSS", f"{old.rss_mb:.0f} MB", f"{new.rss_mb:.0f} MB", ""),
        ("datastore reads per remote event", f"{old.reads_per_op:.2f}", f"{new.reads_per_op:.2f}", "0"),
        ("etcd -> clients per remote event", f"{old.kb_per_op:.0f} kB", f"{new.kb_per_op:.1f} kB", ""),
        ("agent CPU per remote event", f"{old.cpu_ms_per_op:.2f} ms", f"{new.cpu_ms_per_op:.2f} ms", "<= 2 ms"),
        ("own claim -> GoBGP, p50", f"{p50(old.claim_ms):.0f} ms", f"{p50(new.claim_ms):.0f} ms", "< 1 s"),
        ("own claim -> GoBGP, max", f"{max(old.claim_ms):.0f} ms", f"{max(new.claim_ms):.0f} ms", ""),
    ]
    print(f"\nbench/scale.py: {args.nodes} nodes, {args.nodes * BLOCKS_PER_NODE} blocks with "
          f"affinities, {args.ops} remote operations (claim, assign, release, give back), "
          f"{args.claims} own claims")
    print(f"before = {commits['before']} (the agent re-reads the cluster on each change), "
          f"now = {commits['now']} (the agent's view)\n")
    print(f"| {'':34} | {'before':>10} | {'now':>10} | {'before/now':>10} | aim |")
    print(f"|{'-' * 36}|{'-' * 12}|{'-' * 12}|{'-' * 12}|-----|")
    numbers = [(old.startup, new.startup), (old.rss_mb, new.rss_mb), (old.reads_per_op, new.reads_per_op),
               (old.kb_per_op, new.kb_per_op), (old.cpu_ms_per_op, new.cpu_ms_per_op),
               (p50(old.claim_ms), p50(new.claim_ms)), (max(old.claim_ms), max(new.claim_ms))]
    for (label, a, b, aim), (x, y) in zip(rows, numbers, strict=True):
        print(f"| {label:34} | {a:>10} | {b:>10} | {ratio(x, y):>10} | {aim} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--ops", type=int, default=200, help="remote operations per agent")
    parser.add_argument("--claims", type=int, default=10, help="own block claims per agent")
    parser.add_argument("--before", help="the commit to compare with (default: the one before "
                        "datastore/cache.py came in)")
    args = parser.parse_args()
    return run_script("bench/scale.py", lambda: run(args),
                      cleaned="the lab's namespaces, etcd and the worktree are removed")


if __name__ == "__main__":
    sys.exit(main())
