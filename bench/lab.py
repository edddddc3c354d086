"""Lab benchmark: a node-to-node mesh of N percale nodes, brought up by the lab runner.

A script, not a test (timings never go into tests): `.venv/bin/python bench/lab.py`, as root,
for N = 10, 20, 40 (`--nodes 10,20` to choose, `--quick` for 10 alone); a few minutes per size on
2 cores. For each N it writes a mesh with percale.lab.generate (etcd on the management network,
N percale nodes on one switch, Calico's default node-to-node mesh) into a temporary directory,
named `bench-mesh<N>` so it cannot collide with a lab of topologies/, and measures:

  a  `Lab.up()` wall time, as `percalectl lab up` spends it (the status table aside); then one
     pod per node (percale.lab.pods.add, 4 at a time), timed apart: a node claims a block, and so
     has a route to announce, only when a pod gets an address
  b  from the last pod's CNI ADD returning until every node has, in its kernel, a protocol 202
     route for every other node's block (N - 1 each, N(N - 1) in all), followed from each node's
     route notifications and checked at the end by a dump (prefixes and next hops)
  c  memory per node: percale-node and every process below it (ExaBGP, its bridge helper, the CNI
     dataplane's forkserver, workers and resource tracker), VmRSS and Pss (smaps_rollup); mean and
     max per node, the whole tree and the agent + ExaBGP + bridge part
  d  CPU while idle: utime + stime of every node's process tree over 10 s after b, as % of one
     core, for all nodes together and per node (and etcd's beside it)
  e  `Lab.down()` wall time

and stops at the first N that does not come up or converge within a generous timeout (saying
so): the largest N this machine handles. The table per N, then one across the sizes.

The peer. The standard is percale beside a peer, with the ratio. A peer mesh of the same N (BIRD
in N namespaces) would measure BIRD's sessions, not what b is: a block claimed in etcd, seen by
the agent's watch, announced through ExaBGP, learned by N - 1 RIBs and written to N - 1 kernels.
b prints, as its floor, the time `ip -batch` takes to install the same N - 1 /26 routes in one
namespace (bench/fib.py's batch file and timing, median of 3); the ratio beside it says how far
above the kernel's own cost the whole chain is, not a race between equals. bench/bgp.py is where
percale's BGP path is set against BIRD's.

Everything the lab made is removed by `Lab.down()` in `finally` (also after an error, on Ctrl-C
and on SIGTERM), the reference namespace by name, the temporary directory at the end.
bench/README.md says what each figure means and how it is taken.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the other benches' pieces and the test helpers live outside

from percale.dataplane.route_owners import RouteProtocol

from bench.bgp import KernelRoutes, Memory, agent_tree, code_version, memory_kb
from bench.cni import _cpu, table
from bench.fib import batch_file, reset, run_ip_batch
from bench.harness import run_script
from bench.ipam import percentile, progress
from percale.lab import generate, pods
from percale.lab.runner import Lab, LabError
from percale.lab.topology import load, parse
from tests.helpers.fib_worker import FibNamespace

DEFAULT_SIZES = (10, 20, 40)
POD_WORKERS = 4       # pods added at once, as a scheduler places a burst
IDLE_SECONDS = 10.0
REFERENCE_ROUNDS = 3


class StampedPrefixes(set):
    """KernelRoutes' set of prefixes, noting when each first arrived (perf_counter), so that b
    can be taken apart per block."""

    def __init__(self) -> None:
        super().__init__()
        self.at: dict[bytes, float] = {}

    def add(self, key: bytes) -> None:
        if key not in self:
            self.at[key] = time.perf_counter()
        super().add(key)

    def discard(self, key: bytes) -> None:
        self.at.pop(key, None)
        super().discard(key)

    def clear(self) -> None:
        self.at.clear()
        super().clear()


def watch(netns: str) -> KernelRoutes:
    routes = KernelRoutes(netns, RouteProtocol.BGP)
    routes.prefixes = StampedPrefixes()  # before anything arrives: expect() comes next
    return routes


def route_key(block: ipaddress.IPv4Network) -> bytes:
    """A prefix as KernelRoutes keys it: the length, then RTA_DST's bytes."""
    return bytes([block.prefixlen]) + block.network_address.packed


def converge_timeout(n: int) -> float:
    """Generous: 10 nodes converge in seconds here; a mesh that needs minutes is past this
    machine."""
    return 60 + 3 * n


# -- the nodes' processes ---------------------------------------------------------------------

def agent_pid(lab: Lab, node: str) -> int:
    return lab.processes(node)[-1]["pid"]


def tree_cpu(pid: int) -> dict[str, float]:
    """CPU seconds (utime + stime) of percale-node's tree by role, with what the agent's waited-for
    children spent (cutime + cstime: the CNI plugin processes it forks, if any)."""
    used = {}
    for role, pids in agent_tree(pid).items():
        used[role] = sum(sum(_cpu(p)[:2]) for p in pids)
    used["waited"] = _cpu(pid)[2]
    return used


def cpu_delta(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return {role: after[role] - before.get(role, 0.0) for role in after}


# -- the reference ------------------------------------------------------------------------------

def ip_batch_reference(routes: int) -> list[float]:
    """bench/fib.py's `ip -batch` run for `routes` /26s in a fresh namespace, REFERENCE_ROUNDS
    times; the namespace removed by name afterwards."""
    ns = FibNamespace("pflab")
    with tempfile.TemporaryDirectory(prefix="percale-lab-bench-ref-") as tmp:
        ns.create()
        try:
            path = batch_file(Path(tmp), routes)
            times = []
            for _ in range(REFERENCE_ROUNDS):
                reset(ns)
                times.append(run_ip_batch(ns, path))
            return times
        finally:
            ns.remove()


# -- one size -------------------------------------------------------------------------------------

@dataclass
class Result:
    n: int
    load: float
    up: float = 0.0
    up_steps: dict[str, float] = field(default_factory=dict)
    pods: float = 0.0
    pod_adds: list[float] = field(default_factory=list)
    converged: bool = False
    after_last_pod: float | None = None   # b
    after_first_pod: float | None = None
    node_times: list[float] = field(default_factory=list)  # b, each node's, from the last pod
    block_times: list[tuple[float, float]] = field(default_factory=list)  # b, per block
    missing: dict[str, int] = field(default_factory=dict)  # node -> routes it lacks, on failure
    ping: bool | None = None
    reference: list[float] = field(default_factory=list)
    memory: dict[str, Memory] = field(default_factory=dict)
    idle: dict[str, dict[str, float]] = field(default_factory=dict)
    idle_wall: float = 0.0
    etcd_idle: float = 0.0
    etcd_rss_mb: float = 0.0
    busy: dict[str, float] = field(default_factory=dict)  # CPU s by role, pods -> converged
    down: float | None = None
    failure: str | None = None


def block_of(address: str) -> ipaddress.IPv4Network:
    return ipaddress.IPv4Network(f"{address}/{generate.POD_BLOCK_SIZE}", strict=False)


def kernel_routes(lab: Lab, node: str) -> dict[str, set[str]]:
    """The node's protocol 202 routes: prefix -> next hops, by dump."""
    done = subprocess.run(["ip", "-n", lab.topology.namespace(node), "-4", "-j", "route", "show",
                           "proto", str(RouteProtocol.BGP)], capture_output=True, text=True,
                          check=True)
    found: dict[str, set[str]] = {}
    for route in json.loads(done.stdout or "[]"):
        hops = {route["gateway"]} if "gateway" in route else {
            hop.get("gateway", "") for hop in route.get("nexthops", [])}
        found[route["dst"]] = hops
    return found


def expected_routes(node: str, blocks: dict[str, ipaddress.IPv4Network],
                    hops: dict[str, str]) -> dict[str, set[str]]:
    return {str(block): {hops[owner]} for owner, block in blocks.items() if owner != node}


def measure(n: int, workdir: Path) -> Result:
    result = Result(n, os.getloadavg()[0])
    path = generate.write_mesh(n, workdir, name=f"bench-mesh{n}")
    lab = Lab(load(path))
    names = [generate.node_name(i) for i in range(1, n + 1)]
    hops = {name: str(generate.node_address(i).ip) for i, name in enumerate(names, 1)}
    watchers: dict[str, KernelRoutes] = {}
    if lab.is_up():
        progress(f"N={n}: a lab {lab.topology.name} was left over by an earlier run; removing it")
        lab.down()
    try:
        # a: up, as `percalectl lab up` does it; the progress lines stamped to take it apart.
        marks: list[tuple[str, float]] = []

        def step(message: str) -> None:
            marks.append((message, time.perf_counter()))
            progress(f"  {message}")

        started = time.perf_counter()
        try:
            lab.up(progress=step)
        finally:
            # On a failure too: how far it got (`up` has then taken the lab down itself).
            result.up = time.perf_counter() - started
            result.up_steps = up_steps(started, marks)
        progress(f"N={n}: up in {result.up:.1f} s")

        for name in names:
            watchers[name] = watch(lab.topology.namespace(name))
            watchers[name].expect(n - 1)  # and checks the table is empty: no block claimed yet
        pids = {name: agent_pid(lab, name) for name in names}
        cpu_before = {name: tree_cpu(pid) for name, pid in pids.items()}

        # One pod per node, POD_WORKERS at a time.
        def add(i: int) -> tuple[pods.Pod, float, float]:
            began = time.perf_counter()
            pod = pods.add(lab, names[i], f"p{i + 1}")
            return pod, began, time.perf_counter()

        started = time.perf_counter()
        with ThreadPoolExecutor(POD_WORKERS) as pool:
            added = list(pool.map(add, range(n)))
        last_pod = max(end for _, _, end in added)
        result.pods = last_pod - started
        result.pod_adds = [end - began for _, began, end in added]
        blocks = {pod.node: block_of(pod.addresses[0]) for pod, _, _ in added}
        if len(set(blocks.values())) != n:
            raise RuntimeError(f"N={n}: {n} pods got addresses from only "
                               f"{len(set(blocks.values()))} blocks; expected one block per node")
        progress(f"N={n}: {n} pods added in {result.pods:.1f} s; waiting for "
                 f"{n * (n - 1)} routes")

        # b: every node's kernel, from its notifications, then checked by dump.
        deadline = last_pod + converge_timeout(n)
        for name in names:
            watchers[name].wait(max(0.0, deadline - time.perf_counter()))
        late = {name: w for name, w in watchers.items() if w.reached_at is None}
        wrong: set[str] = set()
        converged_at = max((w.reached_at for w in watchers.values() if w.reached_at), default=0)
        if not late:
            wrong = {name for name in names
                     if kernel_routes(lab, name) != expected_routes(name, blocks, hops)}
            # A count that reached N - 1 with other prefixes than the blocks (none seen so
            # far) would be a false finish: poll the dumps until they match, or time runs out.
            while wrong and time.perf_counter() < deadline:
                time.sleep(0.1)
                wrong = {name for name in wrong
                         if kernel_routes(lab, name) != expected_routes(name, blocks, hops)}
                converged_at = time.perf_counter()
        if late or wrong:
            result.missing = {name: n - 1 - len(w.prefixes) for name, w in late.items()}
            result.missing.update({name: -1 for name in wrong})
            result.failure = (f"not converged {converge_timeout(n):.0f} s after the last pod: "
                              f"{len(late) + len(wrong)} of {n} nodes lack routes")
            return result
        result.converged = True
        result.after_last_pod = converged_at - last_pod
        result.after_first_pod = converged_at - min(began for _, began, _ in added)
        result.node_times = sorted(w.reached_at - last_pod for w in watchers.values())
        # Per block: from its pod's ADD (start, and return) until the last other node has it.
        for pod, began, ended in added:
            key = route_key(blocks[pod.node])
            everywhere = max(w.prefixes.at.get(key, converged_at)
                             for name, w in watchers.items() if name != pod.node)
            result.block_times.append((everywhere - began, everywhere - ended))
        result.busy = {}
        for name, pid in pids.items():
            for role, seconds in cpu_delta(tree_cpu(pid), cpu_before[name]).items():
                result.busy[role] = result.busy.get(role, 0.0) + seconds
        progress(f"N={n}: every kernel has its {n - 1} routes "
                 f"{result.after_last_pod:.2f} s after the last pod")
        for w in watchers.values():
            w.close()
        watchers.clear()

        # The datapath, once: the first pod reaches the last.
        first, last = added[0][0], added[-1][0]
        result.ping = pods.ping(first, last.addresses[0], count=1, wait=2)

        # c: memory, after convergence.
        result.memory = {name: Memory.of(pid) for name, pid in pids.items()}
        etcd_pid = agent_pid(lab, "etcd")
        result.etcd_rss_mb = memory_kb(etcd_pid)[0] / 1024

        # d: idle CPU.
        before = {name: tree_cpu(pid) for name, pid in pids.items()}
        etcd_before = sum(_cpu(etcd_pid)[:2])
        started = time.perf_counter()
        time.sleep(IDLE_SECONDS)
        result.idle = {name: cpu_delta(tree_cpu(pid), before[name]) for name, pid in pids.items()}
        result.etcd_idle = sum(_cpu(etcd_pid)[:2]) - etcd_before
        result.idle_wall = time.perf_counter() - started

        result.reference = ip_batch_reference(n - 1)
        return result
    except (LabError, RuntimeError) as err:
        # The runner's message, then the last line of the node's log it quotes (the cause).
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        result.failure = " ".join(lines[:1] + lines[-1:] if len(lines) > 1 else lines) \
            or type(err).__name__
        progress(f"N={n}: {err}")
        return result
    finally:
        for w in watchers.values():
            w.close()
        # e: down (also after a failure, Ctrl-C or SIGTERM; a second one must not cut it short).
        previous = (signal.signal(signal.SIGINT, signal.SIG_IGN),
                    signal.signal(signal.SIGTERM, signal.SIG_IGN))
        try:
            started = time.perf_counter()
            lab.down()
            result.down = time.perf_counter() - started
            progress(f"N={n}: down in {result.down:.1f} s")
        finally:
            signal.signal(signal.SIGINT, previous[0])
            signal.signal(signal.SIGTERM, previous[1])


def up_steps(started: float, marks: list[tuple[str, float]]) -> dict[str, float]:
    """`up` taken apart from the runner's progress lines: namespaces and management network,
    links, etcd (until healthy), the percale nodes (each until its agent's socket is there)."""
    steps: dict[str, float] = {}
    previous = started
    for message, at in marks:
        if "management network" in message:
            key = "namespaces + mgmt"
        elif message.endswith(" links"):
            key = "links"
        elif message.startswith("etcd "):
            key = "etcd"
        else:
            key = "percale nodes"
        steps[key] = steps.get(key, 0.0) + at - previous
        previous = at
    return steps


# -- the report ---------------------------------------------------------------------------------

def mb(kb: float) -> str:
    return f"{kb / 1024:.0f}"


def report(r: Result) -> None:
    print(f"\nN = {r.n}: {r.n} percale nodes, node-to-node mesh ({r.n - 1} sessions each), "
          f"load average {r.load:.2f} before")
    rows = [("", "what", "figure", "beside it")]
    steps = ", ".join(f"{k} {v:.1f} s" for k, v in r.up_steps.items())
    rows.append(("a", "Lab.up() wall time" + ("" if r.pod_adds or r.converged else
                                                " (until it failed)"), f"{r.up:.1f} s", steps))
    if r.pod_adds:
        rows.append(("", f"  {r.n} pods, {POD_WORKERS} at a time (one per node)", f"{r.pods:.1f} s",
                     f"ADD p50 {percentile(r.pod_adds, 50):.2f} s, max {max(r.pod_adds):.2f} s"))
    if r.converged:
        ref = statistics.median(r.reference)
        rows.append(("b", f"last pod added -> all {r.n - 1} routes in all {r.n} kernels",
                     f"{r.after_last_pod:.2f} s",
                     f"floor: ip -batch of {r.n - 1} routes in one netns {ref * 1000:.1f} ms "
                     + (f"(ratio {r.after_last_pod / ref:,.0f}x)" if r.after_last_pod > 0 else
                        "(no ratio: all routes were in before the last ADD returned)")))
        rows.append(("", "  each node's time, p50 / max",
                     f"{percentile(r.node_times, 50):.2f} / {max(r.node_times):.2f} s",
                     f"from the first pod's ADD: {r.after_first_pod:.2f} s"))
        from_start = [t[0] for t in r.block_times]
        from_end = [t[1] for t in r.block_times]
        rows.append(("", "  per block: its pod's ADD began -> in all other kernels, p50 / max",
                     f"{percentile(from_start, 50):.2f} / {max(from_start):.2f} s",
                     (f"from the ADD's return: p50 {percentile(from_end, 50):+.2f}, "
                      f"max {max(from_end):+.2f} s")))
        mems = list(r.memory.values())
        total = [m.total_rss_mb for m in mems]
        total_pss = [m.total_pss_mb for m in mems]
        bgp = [m.bgp_rss_mb for m in mems]
        bgp_pss = [m.bgp_pss_mb for m in mems]
        processes = statistics.median(m.processes for m in mems)
        rows.append(("c", f"RSS per node, whole tree ({processes:.0f} processes), mean / max",
                     f"{statistics.mean(total):.0f} / {max(total):.0f} MB",
                     (f"PSS {statistics.mean(total_pss):.0f} / {max(total_pss):.0f} MB; "
                      f"all nodes' PSS {sum(total_pss):,.0f} MB")))
        rows.append(("", "  agent + ExaBGP + bridge, mean / max",
                     f"{statistics.mean(bgp):.0f} / {max(bgp):.0f} MB",
                     f"PSS {statistics.mean(bgp_pss):.0f} / {max(bgp_pss):.0f} MB"))
        roles = ("percale-node", "ExaBGP", "bridge", "CNI workers", "other")
        split = ", ".join(f"{role} {statistics.mean(m.rss.get(role, 0) for m in mems) / 1024:.0f}"
                          for role in roles)
        split_pss = ", ".join(
            f"{role} {statistics.mean(m.pss.get(role, 0) for m in mems) / 1024:.0f}"
            for role in roles)
        rows.append(("", "  by process, mean RSS", split + " MB", f"etcd {r.etcd_rss_mb:.0f} MB"))
        rows.append(("", "  by process, mean PSS", split_pss + " MB", ""))
        per_node = [sum(v.values()) / r.idle_wall for v in r.idle.values()]
        rows.append(("d", f"idle CPU, all {r.n} nodes, over {r.idle_wall:.0f} s",
                     f"{sum(per_node) * 100:.1f}% of a core",
                     (f"per node mean {statistics.mean(per_node) * 100:.2f}%, "
                      f"max {max(per_node) * 100:.2f}%; "
                      f"etcd {r.etcd_idle / r.idle_wall * 100:.1f}%")))
        by_role: dict[str, float] = {}
        for used in r.idle.values():
            for role, seconds in used.items():
                by_role[role] = by_role.get(role, 0.0) + seconds
        rows.append(("", "  by process, all nodes",
                     ", ".join(f"{role} {s / r.idle_wall * 100:.1f}%"
                               for role, s in by_role.items() if s > 0.005) or "-", ""))
        busy = sum(r.busy.values())
        rows.append(("", "CPU of all nodes, first pod -> converged",
                     f"{busy:.1f} s",
                     ", ".join(f"{role} {s:.1f}" for role, s in r.busy.items() if s > 0.05)))
        rows.append(("", "ping: first pod -> last pod", "ok" if r.ping else "FAILED", ""))
    else:
        rows.append(("b", "NOT CONVERGED" if r.pod_adds else "NOT UP", r.failure or "", ""))
        if r.missing:
            worst = sorted(r.missing.items(), key=lambda kv: -kv[1])[:5]
            rows.append(("", "  nodes lacking routes (count; -1: wrong routes)",
                         ", ".join(f"{k} {v}" for k, v in worst), ""))
    rows.append(("e", "Lab.down() wall time", "-" if r.down is None else f"{r.down:.1f} s",
                 "" if r.pod_adds else "Lab.up() had removed what it made already"))
    table(rows)


def summary(results: list[Result]) -> None:
    print("\nAcross the sizes:")
    rows = [("N", "up", "pods", "b: last pod -> all routes", "RSS/node (PSS)",
             "agent+ExaBGP+bridge RSS (PSS)", "idle CPU all nodes", "down")]
    for r in results:
        if r.converged:
            mems = list(r.memory.values())
            idle = sum(sum(v.values()) for v in r.idle.values()) / r.idle_wall
            rows.append((str(r.n), f"{r.up:.1f} s", f"{r.pods:.1f} s", f"{r.after_last_pod:.2f} s",
                         (f"{statistics.mean(m.total_rss_mb for m in mems):.0f} "
                          f"({statistics.mean(m.total_pss_mb for m in mems):.0f}) MB"),
                         (f"{statistics.mean(m.bgp_rss_mb for m in mems):.0f} "
                          f"({statistics.mean(m.bgp_pss_mb for m in mems):.0f}) MB"),
                         f"{idle * 100:.1f}%", f"{r.down:.1f} s" if r.down else "-"))
        else:
            rows.append((str(r.n), f"{r.up:.1f} s" if r.up else "-", "-",
                         f"FAILED: {r.failure}", "", "", "", f"{r.down:.1f} s" if r.down else "-"))
    table(rows)


# -- main ---------------------------------------------------------------------------------------

def sizes(args: argparse.Namespace) -> list[int]:
    if args.quick:
        return [10]
    if not args.nodes:
        return list(DEFAULT_SIZES)
    try:
        chosen = [int(x) for x in args.nodes.split(",") if x.strip()]
    except ValueError:
        raise SystemExit(f"--nodes: {args.nodes!r} is not a list of numbers like 10,20") from None
    for n in chosen:
        if not 2 <= n <= generate.MAX_NODES:
            raise SystemExit(f"--nodes: {n} is not between 2 and {generate.MAX_NODES}")
    return chosen


NEIGHBOUR_SYSCTLS = ("gc_thresh2", "gc_thresh3")


@contextlib.contextmanager
def neighbour_room(n: int):
    """The kernel's ARP table is one for the whole machine (gc_thresh3, 1024 by default), and
    an N-node mesh on one machine needs about N * (N + 2) entries: past the limit neighbours stay
    INCOMPLETE, sends fail with ENOBUFS, and sessions flap (40 nodes did). Real nodes each have
    their own table, so for the run the limit is raised to twice what the lab needs, and put
    back afterwards; the script says so."""
    from percale.lab.runner import neighbour_entries

    base = Path("/proc/sys/net/ipv4/neigh/default")
    before = {name: int((base / name).read_text()) for name in NEIGHBOUR_SYSCTLS}
    needed = 2 * neighbour_entries(parse(generate.mesh(n), Path(f"mesh{n}.clab.yml")))
    if needed <= before["gc_thresh3"]:
        yield
        return
    print(f"(N={n}: net.ipv4.neigh.default.gc_thresh2/3 raised from "
          f"{before['gc_thresh2']}/{before['gc_thresh3']} to {needed} for this size: one ARP "
          "table serves every namespace on this machine)")
    try:
        for name in NEIGHBOUR_SYSCTLS:
            (base / name).write_text(str(max(needed, before[name])))
        yield
    finally:
        for name in NEIGHBOUR_SYSCTLS[::-1]:
            (base / name).write_text(str(before[name]))


def run(args: argparse.Namespace) -> int:
    began = time.monotonic()
    chosen = sizes(args)
    print(f"percale lab benchmark: {code_version()}, {os.cpu_count()} CPUs, sizes "
          f"{', '.join(map(str, chosen))}; the machine is shared (see bench/README.md)")
    workdir = Path(tempfile.mkdtemp(prefix="percale-lab-bench-"))
    results: list[Result] = []
    try:
        for n in chosen:
            progress(f"N={n}: up")
            with neighbour_room(n):
                result = measure(n, workdir)
            results.append(result)
            report(result)
            sys.stdout.flush()
            if not result.converged:
                print(f"\nN = {n} did not come up or converge: stopping here; the largest N "
                      f"this machine "
                      f"handled is {results[-2].n if len(results) > 1 else 'none'}")
                break
        summary(results)
        print(f"\nwhole run {time.monotonic() - began:.0f} s")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0 if results and results[-1].converged else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", help="sizes, comma-separated (default 10,20,40)")
    parser.add_argument("--quick", action="store_true", help="N = 10 only")
    args = parser.parse_args()
    return run_script("bench/lab.py", lambda: run(args),
                      cleaned="the lab is down and its namespaces removed")


if __name__ == "__main__":
    sys.exit(main())
