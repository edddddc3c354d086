"""CNI benchmark: percale's plugin against Debian's bridge + host-local, both called exactly as a
container runtime calls them, in node network namespaces of the same kind.

A script, not a test (timings never go into tests): `.venv/bin/python bench/cni.py [--quick]`,
as root. It starts its own throwaway etcd (tests/helpers/etcd_server.py), a node namespace with
percale-node in it (tests/helpers/cni_node.py) and a plain one for bridge, and measures in one run:

  floor      what an exec costs before a plugin does anything: `ip netns exec` alone, a bare
             `python3 -IS`, and VERSION calls (percale's shims answer those without the agent)
  one by one ADD of N pods one after another, then DEL of them, each call timed from outside
             (subprocess wall time, as the runtime sees it). Four callers take turns pod by pod,
             so all see the same machine: percale (the compiled shim, what `percalectl cni
             install` installs), percale with the Python shim, bridge, and percale's shim code
             run inside this process (no exec), which leaves the agent's share; with the agent's
             and etcd's CPU and the etcd requests per call
  at once    100 ADDs started together on one node (threads), then 100 DELs; for percale, and
             for bridge as the yardstick

bench/README.md says what each figure means.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# The test helpers (CNINode, EtcdServer) and bench/ipam.py's figures are the ones to reuse; they
# live outside the installed package.
sys.path.insert(0, str(REPO))

from percale_cni import shim

from bench.harness import run_script
from bench.ipam import Load, etcd_version, ms, percentile, progress, start_etcd, verdict
from percale.ctl import cni_cmd
from percale.datastore.etcd import EtcdDatastore
from tests.helpers.cni_node import CNINode, PluginResult, netconf, sh
from tests.helpers.ipam_world import add_pool

POOL = "10.244.0.0/16"
BRIDGE_SUBNET = "10.88.0.0/16"
REFERENCE_PLUGINS = Path("/usr/lib/cni")

# Issue #15: an ADD and a burst of ADDs no slower than bridge + host-local.
GOAL_ADD_RATIO, GOAL_DEL_RATIO, GOAL_BURST_RATIO = 1.0, 1.0, 1.0
PYTHON_SHIM = "percale-py"  # the Python shim, installed beside the compiled one to compare


@dataclass(frozen=True)
class Sizes:
    pods: int    # one by one, per caller
    burst: int   # at once, on one node
    floor: int   # repetitions of each floor command


FULL = Sizes(pods=50, burst=100, floor=30)
QUICK = Sizes(pods=20, burst=40, floor=15)


def k8s_args(pod: str) -> str:
    """CNI_ARGS as containerd sets them; IgnoreUnknown=1 lets plugins that know no K8S_* keys
    (bridge) accept them."""
    return f"IgnoreUnknown=1;K8S_POD_NAMESPACE=bench;K8S_POD_NAME={pod};K8S_POD_INFRA_CONTAINER_ID=x"


@dataclass
class Side:
    """One plugin on its node namespace, called the way a runtime calls it there."""

    label: str
    tag: str  # starts its pods' names, so the callers on one node never share a pod
    node: CNINode
    plugin: str
    conf: dict
    cold: dict[str, float] = field(default_factory=dict)

    def run(self, command: str, pod: str, netns: str | None, conf: dict) -> PluginResult:
        """CNINode.plugin: `ip netns exec <node> <plugin>`, the CNI_* environment, the config
        on stdin."""
        return self.node.plugin(self.plugin, command, conf, container_id=f"c-{pod}",
                                netns=netns, args=k8s_args(pod))

    def call(self, command: str, pod: str, netns: str | None,
             prev: dict | None = None) -> tuple[float, PluginResult]:
        """One call and its wall time, as the runtime sees it."""
        conf = self.conf if prev is None else {**self.conf, "prevResult": prev}
        start = time.perf_counter()
        result = self.run(command, pod, netns, conf)
        return time.perf_counter() - start, result

    def must(self, command: str, pod: str, netns: str | None,
             prev: dict | None = None) -> tuple[float, PluginResult]:
        took, result = self.call(command, pod, netns, prev)
        if result.code != 0:
            raise RuntimeError(f"{self.label} {command} of {pod} failed with {result.code}: "
                               f"{result.out.strip()} {result.err.strip()}{self.agent_gone()}")
        return took, result

    def agent_gone(self) -> str:
        """Whether this side's agent has died, for an error message. An agent on its way out
        closes its connections first, so it is given a moment to finish exiting."""
        agent = self.node.agent
        if agent is None:
            return ""
        try:
            agent.wait(2)
        except subprocess.TimeoutExpired:
            return ""
        return f" (percale-node has exited, code {agent.returncode}: see its log below)"


class InProcess(Side):
    """percale's shim code called as a function in this process: the same request over the
    same socket to the same agent, without fork, exec or an interpreter starting."""

    def run(self, command: str, pod: str, netns: str | None, conf: dict) -> PluginResult:
        environ = {"CNI_COMMAND": command, "CNI_CONTAINERID": f"c-{pod}",
                   "CNI_NETNS": f"/var/run/netns/{netns}" if netns else "", "CNI_IFNAME": "eth0",
                   "CNI_ARGS": k8s_args(pod), "CNI_PATH": str(self.node.bin_dir)}
        code, out = shim.run(self.plugin, environ, json.dumps(conf).encode())
        return PluginResult(code, out, "")


# -- the two nodes -------------------------------------------------------------------------------

_NODES: list[CNINode] = []  # everything stop() must remove, registered before it is started


def start_percale(etcd_unix: str, etcd_http: str) -> tuple[Side, Side, Side]:
    asyncio.run(_create_pool(etcd_http))
    node = CNINode(etcd_unix, name=f"cbp{uuid.uuid4().hex[:5]}")
    _NODES.append(node)
    node.start()
    if (node.bin_dir / "percale").read_bytes()[:4] != b"\x7fELF":
        raise RuntimeError("percalectl cni install did not install the compiled shim: build it "
                           "with `bash scripts/dev.sh setup`")
    # Any name but percale-ipam is the main plugin to the shim.
    python_shim = node.bin_dir / PYTHON_SHIM
    python_shim.write_text(cni_cmd.plugin_source("/usr/bin/python3"))
    python_shim.chmod(0o755)
    conf = netconf(node)
    return (Side("percale", "pcl", node, "percale", conf),
            Side("percale, Python shim", "ppy", node, PYTHON_SHIM, conf),
            InProcess("percale, no exec", "inp", node, "percale", conf))


async def _create_pool(endpoint: str) -> None:
    store = EtcdDatastore([endpoint])
    try:
        await add_pool(store, "pods", cidr=POOL)
    finally:
        await store.close()


def start_reference() -> Side:
    """A plain namespace with Debian's plugins in its bin dir: no agent, nothing else is needed
    by bridge. host-local keeps its leases in the node's work dir, so they go with it."""
    node = CNINode("", name=f"cbr{uuid.uuid4().hex[:5]}")
    _NODES.append(node)
    node.workdir.mkdir(parents=True)
    sh("ip", "netns", "add", node.name)
    node.exec("ip", "link", "set", "lo", "up")
    node.bin_dir.mkdir()
    for plugin in REFERENCE_PLUGINS.iterdir():
        (node.bin_dir / plugin.name).symlink_to(plugin)
    conf = {"cniVersion": "1.0.0", "name": "bench-bridge", "type": "bridge", "bridge": "cni0",
            "isGateway": True, "ipMasq": False,
            "ipam": {"type": "host-local", "subnet": BRIDGE_SUBNET,
                     "dataDir": str(node.workdir / "host-local"),
                     "routes": [{"dst": "0.0.0.0/0"}]}}
    return Side("bridge + host-local", "br", node, "bridge", conf)


def drop_pods(node: CNINode) -> None:
    """Remove a phase's pod namespaces, so the next phase starts on an empty node."""
    for pod in node.pods:
        sh("ip", "netns", "del", pod, check=False)
    node.pods.clear()


# -- phases -------------------------------------------------------------------------------------

def shim_interpreter(node: CNINode) -> list[str]:
    """The interpreter line of the installed Python shim, as the kernel will run it."""
    first = (node.bin_dir / PYTHON_SHIM).read_text().splitlines()[0]
    return first.removeprefix("#!").split()


def floor(percale: Side, python_shim: Side, bridge: Side, reps: int) -> dict[str, tuple[str, list[float]]]:
    node = percale.node
    interpreter = shim_interpreter(node)

    commands = {
        "exec": ("ip netns exec <node> /bin/true", lambda: node.exec("/bin/true")),
        "python": (f"ip netns exec <node> {' '.join(interpreter)} -c pass",
                   lambda: node.exec(*interpreter, "-c", "pass")),
        "percale": ("percale VERSION (the compiled shim alone, no agent)",
                    lambda: percale.must("VERSION", "floor", None)),
        "percale-py": ("percale VERSION (the Python shim alone)",
                       lambda: python_shim.must("VERSION", "floor", None)),
        "bridge": ("bridge VERSION", lambda: bridge.must("VERSION", "floor", None)),
    }
    times: dict[str, list[float]] = {key: [] for key in commands}
    for _, run in commands.values():
        run()  # once untimed: page cache
    # Round robin, so a busy moment of the machine falls on all of them alike.
    for _ in range(reps):
        for key, (_, run) in commands.items():
            start = time.perf_counter()
            run()
            times[key].append(time.perf_counter() - start)
    return {key: (name, times[key]) for key, (name, _) in commands.items()}


def cold_add(side: Side) -> None:
    """The first ADD on a fresh node (percale: first block claim, MTU detection; bridge:
    creating cni0), then its DEL; kept apart from the steady-state figures."""
    netns = side.node.new_pod_netns()
    side.cold["ADD"], added = side.must("ADD", f"{side.tag}-cold", netns)
    side.cold["DEL"], _ = side.must("DEL", f"{side.tag}-cold", netns, added.json)
    drop_pods(side.node)


@dataclass(frozen=True)
class AgentCPU:
    """CPU seconds of percale-node from /proc: the agent process itself (all its threads,
    among them the dataplane workers) in user space and in the kernel, and everything below it:
    its live child processes with the children it has waited for (ExaBGP's share is not in a
    CNI call). Netlink work is mostly kernel time."""

    user: float
    system: float
    below: float

    @classmethod
    def of(cls, pid: int) -> AgentCPU:
        utime, stime, waited = _cpu(pid)
        return cls(utime, stime, waited + sum(sum(_cpu(child)) for child in _descendants(pid)))

    def __sub__(self, other: AgentCPU) -> AgentCPU:
        return AgentCPU(self.user - other.user, self.system - other.system,
                        self.below - other.below)


def _cpu(pid: int) -> tuple[float, float, float]:
    """utime, stime and cutime + cstime of one process; zeros if it has just gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0, 0.0, 0.0
    utime, stime, cutime, cstime = (int(x) / os.sysconf("SC_CLK_TCK") for x in fields[11:15])
    return utime, stime, cutime + cstime


def _descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        parent = todo.pop()
        for task in Path(f"/proc/{parent}/task").glob("*"):
            try:
                children = [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                continue
            found += children
            todo += children
    return found


def one_by_one(sides: list[Side], pods: int, etcd_http: str) -> dict:
    """ADD pod 0..N-1 for every caller, taking turns and rotating who goes first, then DEL them
    the same way with the prevResult a runtime passes. Per command also etcd's load and the
    agent's CPU, which only the percale callers cause."""
    times = {s.label: {"ADD": [], "DEL": []} for s in sides}
    added: dict[str, list[tuple[str, dict]]] = {s.label: [] for s in sides}
    agent = next(s.node.agent for s in sides if s.node.agent is not None)
    load, cpu = {}, {}
    for command in ("ADD", "DEL"):
        before, cpu_before = Load.now(etcd_http), AgentCPU.of(agent.pid)
        for i in range(pods):
            for side in sides[i % len(sides):] + sides[:i % len(sides)]:
                if command == "ADD":
                    netns = side.node.new_pod_netns()
                    took, result = side.must("ADD", f"{side.tag}-{i}", netns)
                    added[side.label].append((netns, result.json))
                else:
                    netns, prev = added[side.label][i]
                    took, _ = side.must("DEL", f"{side.tag}-{i}", netns, prev)
                times[side.label][command].append(took)
        load[command], cpu[command] = Load.now(etcd_http) - before, AgentCPU.of(agent.pid) - cpu_before
    for node in {id(s.node): s.node for s in sides}.values():
        drop_pods(node)
    calls = sum(len(t["ADD"]) for s, t in zip(sides, times.values(), strict=True)
                if s.node.agent is not None)
    return {"times": times, "load": load, "cpu": cpu, "agent_calls": calls}


def at_once(side: Side, count: int, executor: ThreadPoolExecutor) -> dict:
    """`count` ADDs started together on one node, then `count` DELs the same way. Wall time runs
    from the moment every thread is released until the last call returns."""
    netnses = [side.node.new_pod_netns() for _ in range(count)]

    def together(command: str, prevs: list[dict | None]) -> tuple[float, list]:
        gate = threading.Barrier(count + 1)

        def one(i: int):
            gate.wait()
            took, result = side.call(command, f"{side.tag}-burst-{i}", netnses[i], prevs[i])
            return took, result, time.perf_counter()

        futures = [executor.submit(one, i) for i in range(count)]
        gate.wait()
        start = time.perf_counter()
        done = [f.result() for f in futures]
        return max(d[2] for d in done) - start, [(d[0], d[1]) for d in done]

    add_wall, adds = together("ADD", [None] * count)
    ok = [r for _, r in adds if r.code == 0]
    addresses = [r.json["ips"][0]["address"].split("/")[0] for r in ok]
    errors = Counter(f"ADD {r.code}: {r.out.strip() or r.err.strip()}"[:160]
                     for _, r in adds if r.code)
    # DEL every pod, as a runtime would, with prevResult where ADD gave one.
    del_wall, dels = together("DEL", [r.json if r.code == 0 else None for _, r in adds])
    errors.update(f"DEL {r.code}: {r.out.strip() or r.err.strip()}"[:160] for _, r in dels if r.code)
    drop_pods(side.node)
    return {"add_wall": add_wall, "add_calls": [t for t, _ in adds], "ok": len(ok),
            "distinct": len(set(addresses)), "del_wall": del_wall,
            "del_calls": [t for t, _ in dels], "del_ok": sum(r.code == 0 for _, r in dels),
            "errors": errors}


# -- report -------------------------------------------------------------------------------------

def code_version() -> str:
    """The commit measured, and whether the CNI path differs from it."""
    try:
        commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                                check=True, capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--",
                                "cni-plugin", "percale/node", "ipam", "percale/datastore"],
                               check=True, capture_output=True, text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "percale (not a git checkout)"
    return f"percale {commit}{' with uncommitted changes on the CNI path' if dirty else ''}"


def plugins_version() -> str:
    try:
        out = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", "containernetworking-plugins"],
                             check=False, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        out = ""
    return f"CNI plugins {out or '(version unknown)'}"


def table(rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip())


def p(samples: list[float], q: float) -> str:
    return ms(percentile(samples, q))


def report(args, floors: dict, percale: Side, python_shim: Side, bridge: Side, inproc: Side,
           seq: dict, bursts: dict[str, dict]) -> None:
    mode = "--quick" if args.quick else "full"
    print(f"\npercale CNI benchmark ({mode}): {code_version()}, {etcd_version()} (unix socket), "
          f"{plugins_version()}, {os.cpu_count()} CPUs")
    print("times in ms, each call timed from outside as a runtime sees it "
          "(`ip netns exec <node> <plugin>`)\n")

    times = seq["times"]
    rows = [("", "", "p50", "p90", "max", "", "")]
    for name, samples in floors.values():
        rows.append(("floor", name, p(samples, 50), p(samples, 90), ms(max(samples)),
                     f"{len(samples)} runs", ""))
    for command in ("ADD", "DEL"):
        pc, br = times[percale.label][command], times[bridge.label][command]
        for side in (percale, python_shim, bridge, inproc):
            t = times[side.label][command]
            first = f"first on the node {ms(side.cold[command])}" if side.cold else ""
            rows.append((command, f"{side.label}, {len(t)} pods one by one", p(t, 50),
                         p(t, 90), ms(max(t)), first, ""))
        ratio = percentile(pc, 50) / percentile(br, 50)
        goal = GOAL_ADD_RATIO if command == "ADD" else GOAL_DEL_RATIO
        rows.append(("", "percale / bridge, p50", f"{ratio:.2f}x", "", "",
                     f"goal <= {goal:g}x", verdict(ratio <= goal)))
        python_ratio = percentile(times[python_shim.label][command], 50) / percentile(br, 50)
        rows.append(("", "percale with the Python shim / bridge, p50", f"{python_ratio:.2f}x",
                     "", "", "", ""))
    table(rows)

    print("\npods at once on one node (threads released together; wall = until the last "
          "call returned):")
    rows = [("", "pods", "ADD wall", "goal", "", "call p50", "call max", "addresses",
             "DEL wall", "call p50", "call max")]
    for label, b in bursts.items():
        n = len(b["add_calls"])
        ratio = b["add_wall"] / bursts[bridge.label]["add_wall"]
        goal = f"{ratio:.2f}x bridge, goal <= {GOAL_BURST_RATIO:g}x" if label == percale.label else ""
        ok = verdict(ratio <= GOAL_BURST_RATIO and b["ok"] == n
                     and b["distinct"] == n) if goal else ""
        rows.append((label, str(n), f"{b['add_wall']:.2f} s", goal, ok, p(b["add_calls"], 50),
                     ms(max(b["add_calls"])), f"{b['ok']} ok, {b['distinct']} distinct",
                     f"{b['del_wall']:.2f} s", p(b["del_calls"], 50), ms(max(b["del_calls"]))))
    table(rows)
    for label, b in bursts.items():
        for text, count in b["errors"].most_common():
            print(f"{label} error x{count}: {text}")
    if any(bursts[percale.label]["errors"].values()) and (gone := percale.agent_gone()):
        print(f"percale:{gone}")

    # percale's ADD, taken apart by subtracting medians measured side by side.
    add = percentile(times[percale.label]["ADD"], 50)
    exec_floor, python, version, python_version = (
        percentile(floors[k][1], 50) for k in ("exec", "python", "percale", "percale-py"))
    agent = percentile(times[inproc.label]["ADD"], 50)
    print(f"\nwhere percale's ADD p50 ({ms(add)} ms) goes, by subtracting medians:")
    for name, took, how in (
        ("`ip netns exec` and a process", exec_floor, "exec /bin/true"),
        ("the compiled shim", version - exec_floor, "VERSION - exec"),
        ("agent round trip", agent, "ADD without exec"),
        ("left over", add - version - agent, "shim work on a real request, noise"),
    ):
        print(f"  {name:34} {ms(took):>6} ms   ({how})")
    print(f"  (the Python shim instead: {ms(python - exec_floor)} ms starting the interpreter, "
          f"{ms(python_version - python)} ms the shim file; its ADD p50 "
          f"{p(times[python_shim.label]['ADD'], 50)} ms)")

    n = seq["agent_calls"]
    print(f"\nper call to the agent, over the {n} ADDs and {n} DELs of percale and percale without "
          f"exec (agent CPU: user / kernel / its child processes):")
    print(f"  {'':4} {'agent CPU':>22} {'etcd CPU':>9} {'Range':>6} {'Txn':>5}")
    for command in ("ADD", "DEL"):
        load, cpu = seq["load"][command], seq["cpu"][command]
        split = f"{ms(cpu.user / n)} / {ms(cpu.system / n)} / {ms(cpu.below / n)}"
        print(f"  {command:4} {split:>19} ms {ms(load.etcd_cpu / n):>6} ms "
              f"{load.range / n:>6.2f} {load.txn / n:>5.2f}")


def stop_node(node: CNINode) -> None:
    """CNINode.stop(): the agent by PID, the pod and node namespaces by name, the work dir. Then
    whatever the agent started and left behind: its netlink worker processes outlive it when it
    has to be killed."""
    below = []
    if node.agent is not None and node.agent.poll() is None:
        below = [(pid, _started(pid)) for pid in _descendants(node.agent.pid)]
    node.stop()
    left = [pid for pid, started in below if started and _started(pid) == started]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in left:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline and any(_started(pid) for pid in left):
            time.sleep(0.05)
        # _started is None for a process that is gone; a new one under the same PID differs.
        left = [pid for pid, started in below if started and _started(pid) == started]
        if not left:
            return


def _started(pid: int) -> int | None:
    """A process's start time (field 22 of /proc/PID/stat), which tells it from a later process
    that reuses its PID; None if it is gone or a zombie."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return None if fields[0] == "Z" else int(fields[19])


def agent_log_tail(lines: int = 40) -> None:
    """After a failure: the end of each agent's log, which goes with its work dir."""
    for node in _NODES:
        log = node.workdir / "agent.log"
        if log.exists():
            tail = log.read_text(errors="replace").splitlines()[-lines:]
            progress(f"--- last lines of {node.name}'s percale-node log ---\n" + "\n".join(tail))


# -- main ---------------------------------------------------------------------------------------

def run(args: argparse.Namespace) -> None:
    sizes = QUICK if args.quick else FULL
    began = time.monotonic()
    server = None
    executor = ThreadPoolExecutor(sizes.burst)
    try:
        server = start_etcd()
        progress(f"etcd {server.endpoint} (pid {server.process.pid}); starting percale-node")
        percale, python_shim, inproc = start_percale(server.unix_endpoint, server.endpoint)
        bridge = start_reference()
        progress(f"nodes: {percale.node.name} (percale-node pid {percale.node.agent.pid}), "
                 f"{bridge.node.name} (bridge)")

        progress(f"floor: {sizes.floor} runs of each")
        floors = floor(percale, python_shim, bridge, sizes.floor)
        progress("first ADD/DEL on each node")
        for side in (percale, bridge):
            cold_add(side)
        progress(f"{sizes.pods} pods one by one, ADD then DEL: percale (compiled shim), percale "
                 f"(Python shim), bridge and percale without exec taking turns")
        seq = one_by_one([percale, python_shim, bridge, inproc], sizes.pods, server.endpoint)
        bursts = {}
        for side in (percale, bridge):
            progress(f"{sizes.burst} pods at once: {side.label}")
            bursts[side.label] = at_once(side, sizes.burst, executor)

        report(args, floors, percale, python_shim, bridge, inproc, seq, bursts)
        print(f"\nwhole run {time.monotonic() - began:.1f} s")
    finally:
        # A second Ctrl-C or SIGTERM must not cut the cleanup short; each step is bounded (the
        # agent and etcd get SIGKILL after 10 s). Calls still running in threads end by
        # themselves once their agent and namespaces are gone.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if isinstance(sys.exc_info()[1], Exception):
            agent_log_tail()
        executor.shutdown(wait=False, cancel_futures=True)
        for node in _NODES:
            stop_node(node)
        if server is not None:
            server.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help=f"{QUICK.pods} pods one by one, {QUICK.burst} at once")
    args = parser.parse_args()
    return run_script("bench/cni.py", lambda: run(args),
                      cleaned="agent, etcd and namespaces removed")


if __name__ == "__main__":
    sys.exit(main())
