"""BGP benchmark: percale-node (ExaBGP, the RIB, the FIB) against BIRD, fed by the same GoBGP.

A script, not a test (timings never go into tests): `.venv/bin/python bench/bgp.py [--quick]`,
as root, about 2 minutes (`--quick`, without the 100k case, about 45 s). It starts its own
throwaway etcd (tests/helpers/etcd_server.py) and a small lab of network namespaces:

    percale node (CNINode: percale-node, ExaBGP) 10.99.0.1 ─┐
    BIRD 2, `protocol kernel { export all; }`    10.99.0.2 ─┴─ bridge ── GoBGP 10.99.0.3
                                                                (the speaker, its own namespace)

and measures, in one run (issue 5, item 8):

  a  GoBGP advertises N /26 routes inside an IP pool (loaded with `gobgp mrt inject global` from a
     TABLE_DUMP_V2 file this script writes); time from session Established until all N are in
     the receiver's kernel, for percale (protocol 202) and for BIRD (protocol bird), taking
     turns, 3 rounds each; N = 10k and 100k. Ratio of the medians percale / BIRD, aim <= 3x;
     for 100k (issue 15) <= 1.5x, the flush after the session ends <= 1.2x, and percale-node's
     RSS while it holds them <= 120 MB
  b  percale's FIB installing 10k routes against `ip -batch` (bench/fib.py's measure(), reused)
  c  50 blocks claimed one at a time with IPAM.auto_assign for the node; per claim the time until
     GoBGP's RIB shows the block (`gobgp monitor global rib -j`); p50/p99, aim < 1 s. Then 5 more
     after a, with a's largest table learned
  d  a second percale node with 100 BGPPeers nobody answers: RSS of percale-node, its ExaBGP and
     ExaBGP's helper, aim < 100 MB (and of every process below percale-node); their CPU while
     idle for 10 s

Everything is stopped by PID and removed by name at the end, after an error, on Ctrl-C and on
SIGTERM. bench/README.md says what each figure means and how it is taken.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import ctypes
import errno
import importlib.metadata
import ipaddress
import json
import math
import os
import re
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# The test helpers (CNINode, EtcdServer, FibNamespace) and the other benches' pieces are the ones
# to reuse; they live outside the installed package.
sys.path.insert(0, str(REPO))

from percale.dataplane.route_owners import RouteProtocol
from percale.datastore.cache import followed
from percale.ipam.allocator import IPAM

from bench.cni import AgentCPU, _cpu, _descendants, stop_node, table
from bench.fib import batch_file, measure
from bench.harness import run_script
from bench.ipam import etcd_version, ms, percentile, progress, start_etcd, verdict
from percale.datastore import Key
from percale.datastore.etcd import EtcdDatastore
from percale.api import parse
from tests.helpers.cni_node import CNINode, sh
from tests.helpers.fib_worker import FibNamespace
from tests.helpers.ipam_world import add_pool

AS = 64512
FABRIC = "10.99.0.0/24"
PERCALE_IP, BIRD_IP, GOBGP_IP = "10.99.0.1", "10.99.0.2", "10.99.0.3"
FEED_POOL = "11.0.0.0/8"     # what GoBGP advertises, as /26s: a pool, so percale accepts them
CLAIM_POOL = "10.244.0.0/16"  # where the node claims its blocks in c
# c's claims: one whole /26 per call, so every call claims a new block; the cap lifted past the
# default 20 blocks a node may hold.
CLAIM_ADDRESSES, CLAIM_CAP = 64, 256
# d's peers: addresses on the CNINode's uplink /24 (192.0.2.10, whose other end has no address),
# so ARP goes unanswered and every session stays in Connect.
DEAD_PEERS = [f"192.0.2.{i}" for i in range(101, 201)]
RTPROT_BIRD = 12
GOBGP_API = "50051"
# gobgp 3.10's `mrt inject` drops the tail of its stream (reference/performance.md §4): the file
# ends with this many copies of its first route, and the load is checked and repeated if short.
MRT_PADDING = 3000

GOAL_RATIO, GOAL_FIB, GOAL_CLAIM, GOAL_RSS_MB = 3.0, 0.3, 1.0, 100.0
# Issue 15's aims for the largest table: learning and flushing it beside BIRD, and the agent's
# RSS while it holds it.
GOAL_LEARN_RATIO, GOAL_FLUSH_RATIO, GOAL_LEARNED_RSS_MB = 1.5, 1.2, 120.0


@dataclass(frozen=True)
class Sizes:
    routes: tuple[int, ...]   # a: route counts, each fed to percale and to BIRD
    rounds: int               # a: loads of each count into each receiver
    claims: int               # c
    loaded_claims: int        # c, again, with a's largest table learned
    idle: float               # d: seconds of idle CPU
    fib_rounds: int           # b


FULL = Sizes(routes=(10_000, 100_000), rounds=3, claims=50, loaded_claims=5, idle=10.0,
             fib_rounds=3)
QUICK = Sizes(routes=(10_000,), rounds=3, claims=50, loaded_claims=5, idle=10.0, fib_rounds=3)


# -- the kernel's routes, counted as the kernel announces them -----------------------------------

_CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)
_NETLINK_ROUTE, _RTMGRP_IPV4_ROUTE = 0, 0x40
_RTM_NEWROUTE, _RTM_DELROUTE, _RTA_DST = 24, 25, 1
_SO_RCVBUFFORCE = 33
_RT_TABLE_MAIN = 254


def netlink_socket_in(netns: str, groups: int) -> socket.socket:
    """A NETLINK_ROUTE socket inside `netns`, made by a short-lived thread that enters the
    namespace (setns moves only the calling thread); the socket stays in it for good."""
    made: dict[str, object] = {}

    def inside() -> None:
        target = os.open(f"/var/run/netns/{netns}", os.O_RDONLY)
        try:
            if _libc.setns(target, _CLONE_NEWNET) != 0:
                made["error"] = OSError(ctypes.get_errno(), f"setns into {netns}")
                return
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, _NETLINK_ROUTE)
            # The kernel sends one message per route; a reader that falls behind by more than
            # the buffer loses them (ENOBUFS), so the buffer holds a whole 100k load.
            sock.setsockopt(socket.SOL_SOCKET, _SO_RCVBUFFORCE, 512 << 20)
            sock.bind((0, groups))
            made["socket"] = sock
        finally:
            os.close(target)  # the thread ends here, still inside; nothing else ran in it

    thread = threading.Thread(target=inside)
    thread.start()
    thread.join()
    if "error" in made:
        raise made["error"]  # type: ignore[misc]
    return made["socket"]  # type: ignore[return-value]


def dump_count(netns: str, protocol: int) -> int:
    """IPv4 routes of `protocol` in the main table, by dump (`ip route show`)."""
    out = sh("ip", "-n", netns, "-4", "route", "show", "table", "main",
             "proto", str(protocol)).stdout
    return len(out.splitlines())


class KernelRoutes:
    """The IPv4 routes of one protocol in one namespace's main table, followed from the kernel's
    route notifications (RTM_NEWROUTE / RTM_DELROUTE) by a reader thread, which notes when the
    count reaches a target. Much cheaper than dumping 100k routes over and over, and each route
    is seen the moment the kernel has it. Should the socket overflow anyway (ENOBUFS), the count
    is no longer exact and wait() falls back to dumps."""

    def __init__(self, netns: str, protocol: int) -> None:
        self.netns, self.protocol = netns, protocol
        self.sock = netlink_socket_in(netns, _RTMGRP_IPV4_ROUTE)
        self.sock.settimeout(0.2)
        self.prefixes: set[bytes] = set()
        self.target: int | None = None
        self.first_at: float | None = None
        self.reached_at: float | None = None
        self.overflowed = False
        self.polled = False
        self._cond = threading.Condition()
        self._closing = False
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def expect(self, target: int) -> None:
        """Start a measurement from an empty table (checked by dump) towards `target` routes."""
        left = dump_count(self.netns, self.protocol)
        if left:
            raise RuntimeError(f"{self.netns}: {left} routes of protocol {self.protocol} "
                               "before the load; expected none")
        with self._cond:
            self.prefixes.clear()
            self.target, self.first_at, self.reached_at = target, None, None
            self.overflowed = self.polled = False

    def expect_empty(self) -> None:
        """From now on towards no routes: the flush after a load that wait() saw complete. The
        prefixes it counted stay, and the kernel's deletions take them out."""
        with self._cond:
            self.target, self.reached_at = 0, None

    def wait(self, timeout: float) -> bool:
        """Until the target is reached (its time in reached_at); False after `timeout`."""
        deadline = time.perf_counter() + timeout
        with self._cond:
            self._cond.wait_for(lambda: self.reached_at is not None or self.overflowed,
                                timeout)
            if self.reached_at is not None:
                return True
            if not self.overflowed:
                return False
        self.polled = True  # notifications were lost: count by dump from here on
        while time.perf_counter() < deadline:
            if dump_count(self.netns, self.protocol) == self.target:
                self.reached_at = time.perf_counter()
                return True
            time.sleep(0.05)
        return False

    def close(self) -> None:
        self._closing = True
        self._thread.join(2)
        self.sock.close()

    def _read(self) -> None:
        protocol = self.protocol
        while not self._closing:
            try:
                data = self.sock.recv(1 << 20)
            except TimeoutError:
                continue
            except OSError as err:
                if err.errno == errno.ENOBUFS:
                    with self._cond:
                        self.overflowed = True
                        self._cond.notify_all()
                    continue
                return
            now = time.perf_counter()
            changed = False
            offset = 0
            while offset + 16 <= len(data):
                length, kind = struct.unpack_from("=IH", data, offset)
                if length < 16:
                    break
                # struct rtmsg follows the 16-byte header: family, dst_len, src_len, tos, table,
                # protocol, scope, type, flags.
                if (kind in (_RTM_NEWROUTE, _RTM_DELROUTE) and data[offset + 16] == socket.AF_INET
                        and data[offset + 21] == protocol and data[offset + 20] == _RT_TABLE_MAIN):
                    dst = _rta(data, offset + 28, offset + length, _RTA_DST)
                    key = bytes([data[offset + 17]]) + dst
                    with self._cond:
                        if kind == _RTM_NEWROUTE:
                            self.prefixes.add(key)
                            if self.first_at is None:
                                self.first_at = now
                        else:
                            self.prefixes.discard(key)
                    changed = True
                offset += (length + 3) & ~3
            if changed:
                with self._cond:
                    if (self.target is not None and self.reached_at is None
                            and len(self.prefixes) == self.target):
                        self.reached_at = now
                        self._cond.notify_all()


def _rta(data: bytes, start: int, end: int, kind: int) -> bytes:
    while start + 4 <= end:
        length, rta_type = struct.unpack_from("=HH", data, start)
        if length < 4:
            break
        if rta_type == kind:
            return bytes(data[start + 4:start + length])
        start += (length + 3) & ~3
    return b""


# -- the feed: an MRT file for `gobgp mrt inject` -------------------------------------------------

def feed_prefixes(first: int, count: int) -> list[ipaddress.IPv4Network]:
    """The first..first+count-1'th /26 of FEED_POOL."""
    base = int(ipaddress.IPv4Network(FEED_POOL).network_address)
    return [ipaddress.IPv4Network((base + (i << 6), 26)) for i in range(first, first + count)]


def write_mrt(path: Path, prefixes: list[ipaddress.IPv4Network], next_hop: str) -> None:
    """A TABLE_DUMP_V2 file (RFC 6396 §4.3): a PEER_INDEX_TABLE with one peer, then one
    RIB_IPV4_UNICAST record per prefix carrying ORIGIN IGP, an empty AS_PATH, NEXT_HOP and
    LOCAL_PREF 100 (an iBGP route), then MRT_PADDING copies of the first record."""
    hop = ipaddress.IPv4Address(next_hop).packed
    out = bytearray()

    def record(subtype: int, body: bytes) -> None:
        out.extend(struct.pack("!IHHI", 0, 13, subtype, len(body)))  # type 13: TABLE_DUMP_V2
        out.extend(body)

    peer = struct.pack("!B4s4sI", 0x02, hop, hop, AS)  # peer type: IPv4 address, 4-byte AS
    record(1, hop + struct.pack("!HH", 0, 1) + peer)
    attributes = (bytes([0x40, 1, 1, 0]) + bytes([0x40, 2, 0]) + bytes([0x40, 3, 4]) + hop
                  + bytes([0x40, 5, 4]) + struct.pack("!I", 100))
    entry = struct.pack("!HIH", 0, 0, len(attributes)) + attributes
    for seq, prefix in enumerate(prefixes + [prefixes[0]] * MRT_PADDING):
        record(2, struct.pack("!IB", seq, 26) + prefix.network_address.packed[:4]
               + struct.pack("!H", 1) + entry)
    path.write_bytes(out)


# -- the lab ---------------------------------------------------------------------------------------

@dataclass
class Lab:
    """The speaker's namespace (a bridge and GoBGP), BIRD's namespace, and the percale node
    (a CNINode: percale-node in its own namespace), joined on FABRIC."""

    etcd_unix: str  # percale-node's, reachable from its namespace
    etcd_http: str  # this script's
    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:5])
    workdir: Path = field(
        default_factory=lambda: Path(tempfile.mkdtemp(prefix="percale-bgp-bench-")))
    processes: list[subprocess.Popen] = field(default_factory=list)
    namespaces: list[str] = field(default_factory=list)
    node: CNINode | None = None
    extra_nodes: list[CNINode] = field(default_factory=list)  # d's
    agent_command: list[str] | None = None  # bench/scale.py: an older percale's agent

    @property
    def speaker(self) -> str:
        return f"bbs{self.tag}"

    @property
    def bird(self) -> str:
        return f"bbb{self.tag}"

    def up(self) -> None:
        for ns in (self.speaker, self.bird):
            self.namespaces.append(ns)
            sh("ip", "netns", "add", ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "-n", self.speaker, "link", "add", "br0", "type", "bridge")
        sh("ip", "-n", self.speaker, "addr", "add", f"{GOBGP_IP}/24", "dev", "br0")
        sh("ip", "-n", self.speaker, "link", "set", "br0", "up")
        self.node = CNINode(self.etcd_unix, name=f"bbn{self.tag}")
        if self.agent_command:
            self.node.agent_command = self.agent_command
        self.node.start()
        for ns, port, address in ((self.node.netns, "pn", PERCALE_IP), (self.bird, "pb", BIRD_IP)):
            sh("ip", "link", "add", "fabric", "netns", ns, "type", "veth", "peer", "name", port,
               "netns", self.speaker)
            sh("ip", "-n", self.speaker, "link", "set", port, "master", "br0", "up")
            sh("ip", "-n", ns, "addr", "add", f"{address}/24", "dev", "fabric")
            sh("ip", "-n", ns, "link", "set", "fabric", "up")
        self._start_gobgp()
        self._start_bird()

    def start(self, ns: str, *args: str, log: str) -> subprocess.Popen:
        # `ip netns exec` execs the program, so the PID is the daemon's own.
        with open(self.workdir / log, "w") as out:  # the daemon keeps its own copy of the fd
            process = subprocess.Popen(["ip", "netns", "exec", ns, *args], stdout=out,
                                       stderr=subprocess.STDOUT, cwd=self.workdir)
        self.processes.append(process)
        return process

    def _start_gobgp(self) -> None:
        # The receivers are dynamic neighbours (any address in FABRIC, passive on GoBGP's side),
        # and each session is opened and closed from the receiver's side: percale's BGPPeer
        # created and deleted, BIRD's protocol enabled and disabled. A configured neighbour
        # would refuse every connection for 5 s after a session ends (gobgpd's idle hold); a
        # dynamic one is forgotten when its session ends and accepted again at once. GoBGP has
        # no graceful restart here: a session that ends takes its routes with it at once.
        (self.workdir / "gobgpd.toml").write_text(f"""\
[global.config]
  as = {AS}
  router-id = "{GOBGP_IP}"
  local-address-list = ["{GOBGP_IP}"]
[[peer-groups]]
  [peer-groups.config]
    peer-group-name = "receivers"
    peer-as = {AS}
  [[peer-groups.afi-safis]]
    [peer-groups.afi-safis.config]
      afi-safi-name = "ipv4-unicast"
[[dynamic-neighbors]]
  [dynamic-neighbors.config]
    prefix = "{FABRIC}"
    peer-group = "receivers"
""")
        self.gobgpd = self.start(self.speaker, "gobgpd", "-f", str(self.workdir / "gobgpd.toml"),
                                 "-p", "--api-hosts", f"127.0.0.1:{GOBGP_API}", "--pprof-disable",
                                 log="gobgpd.log")
        wait_for(lambda: self.gobgp("neighbor", check=False).returncode == 0, 15, "gobgpd's API")

    def _start_bird(self) -> None:
        # The session is off until a measurement enables it; then BIRD connects at once, and
        # retries quickly (Calico's timers, exabgp.md §4) should gobgpd not be ready yet.
        (self.workdir / "bird.conf").write_text(f"""\
router id {BIRD_IP};
protocol device {{}}
protocol kernel {{ ipv4 {{ import none; export all; }}; }}
protocol bgp feed {{
    disabled;
    local {BIRD_IP} as {AS};
    neighbor {GOBGP_IP} as {AS};
    direct;
    connect delay time 0; connect retry time 1; error wait time 1, 5;
    ipv4 {{ gateway direct; import all; export none; }};
}}
""")
        self.bird_process = self.start(self.bird, "bird", "-f",
                                       "-c", str(self.workdir / "bird.conf"),
                                       "-s", str(self.workdir / "bird.ctl"), log="bird.log")
        wait_for(lambda: (self.workdir / "bird.ctl").exists(), 10, "BIRD's control socket")

    def birdc(self, *args: str) -> subprocess.CompletedProcess:
        return sh("birdc", "-s", str(self.workdir / "bird.ctl"), *args)

    def percale_peer(self, present: bool) -> None:
        """percale's session with GoBGP: its BGPPeer created or deleted."""
        async def work(store):
            if present:
                await store.create(resource("BGPPeer", "gobgp", {
                    "peerIP": GOBGP_IP, "asNumber": AS, "node": self.node.name}))
            else:
                await store.delete(Key("BGPPeer", "gobgp"))

        store_work(self.etcd_http, work)

    def gobgp(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return sh("ip", "netns", "exec", self.speaker, "gobgp", "-p", GOBGP_API, *args, check=check)

    def neighbour(self, address: str) -> dict:
        """GoBGP's state of one neighbour ({} if it has none). From the list of all neighbours,
        not `gobgp neighbor <address>`: that one counts the routes advertised to the peer,
        about 55 ms of gobgpd's CPU per call with 100k routes."""
        out = self.gobgp("neighbor", "-j", check=False).stdout
        try:
            return next((peer["state"] for peer in json.loads(out)
                         if peer["state"].get("neighbor_address") == address), {})
        except (ValueError, KeyError, TypeError):
            return {}

    def established(self, address: str) -> bool:
        return self.neighbour(address).get("session_state") == 6  # ESTABLISHED

    def rib_size(self) -> int:
        out = self.gobgp("global", "rib", "summary", "-a", "ipv4").stdout
        found = re.search(r"Destination: (\d+)", out)
        return int(found.group(1)) if found else 0

    def inject(self, path: Path, total: int) -> float:
        """Load an MRT file into GoBGP's global RIB until it holds `total` routes (gobgp's CLI
        may drop the end of the stream; loading the same routes again is harmless)."""
        started = time.perf_counter()
        for _ in range(5):
            self.gobgp("mrt", "inject", "global", str(path))
            if self.rib_size() >= total:
                return time.perf_counter() - started
        raise RuntimeError(f"GoBGP holds {self.rib_size()} routes after 5 loads, expected {total}")

    def stop_processes(self) -> None:
        for process in self.processes:
            stop_pid(process)

    def down(self) -> None:
        self.stop_processes()
        for node in [self.node, *self.extra_nodes]:
            if node is not None:
                stop_node(node)
        for ns in self.namespaces:
            sh("ip", "netns", "del", ns, check=False)
        sh("rm", "-rf", str(self.workdir), check=False)


def stop_pid(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def wait_for(condition, timeout: float, what: str, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: not there after {timeout:g} s")
        time.sleep(interval)


# One event loop for every datastore call of the run. gRPC hands a closed call's last events
# to whichever loop polls it next; with a loop per call (asyncio.run), a later loop was handed
# events of an earlier, closed one, and printed "Event loop is closed" for each of them.
# Closed at exit, so the scripts that borrow store_work (bench/scale.py) close it too.
_LOOP = asyncio.Runner()
atexit.register(_LOOP.close)


def store_work(endpoint: str, work) -> object:
    async def main():
        store = EtcdDatastore([endpoint])
        try:
            return await work(store)
        finally:
            await store.close()

    return _LOOP.run(main())


def resource(kind: str, name: str, spec: dict) -> object:
    return parse({"apiVersion": "percale.io/v1", "kind": kind, "metadata": {"name": name},
                  "spec": spec})


# -- the agent's processes -------------------------------------------------------------------------

# ExaBGP's helper as its command line names it: compiled, or Python (run as a file or a module).
BRIDGE_NAMES = ("percale-bgp-bridge", "bgpd/bridge.py", "percale.bgpd.bridge")


def agent_tree(agent_pid: int) -> dict[str, list[int]]:
    """percale-node and the processes below it, by role."""
    roles: dict[str, list[int]] = {"percale-node": [agent_pid], "ExaBGP": [], "bridge": [],
                                   "CNI workers": [], "other": []}
    for pid in _descendants(agent_pid):
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        # Before issue #15 the CNI dataplane was a process pool (multiprocessing's forkserver,
        # workers, resource tracker); it is threads of the agent now, so this role stays empty
        # unless that comes back.
        role = ("bridge" if any(name in command for name in BRIDGE_NAMES)
                else "ExaBGP" if "exabgp" in command
                else "CNI workers" if "multiprocessing" in command else "other")
        roles[role].append(pid)
    return roles


def memory_kb(pid: int) -> tuple[int, int]:
    """VmRSS and Pss of one process, in kB (zeros if it has gone)."""
    rss = pss = 0
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                pss = int(line.split()[1])
    except OSError:
        pass
    return rss, pss


@dataclass
class Memory:
    rss: dict[str, int]  # kB by role
    pss: dict[str, int]
    processes: int

    @classmethod
    def of(cls, agent_pid: int) -> Memory:
        rss, pss, n = {}, {}, 0
        for role, pids in agent_tree(agent_pid).items():
            sizes = [memory_kb(pid) for pid in pids]
            rss[role], pss[role] = sum(s[0] for s in sizes), sum(s[1] for s in sizes)
            n += len(pids)
        return cls(rss, pss, n)

    @property
    def bgp_rss_mb(self) -> float:
        """The agent, ExaBGP and its helper: all but the CNI dataplane's pool."""
        return sum(kb for role, kb in self.rss.items() if role != "CNI workers") / 1024

    @property
    def bgp_pss_mb(self) -> float:
        return sum(kb for role, kb in self.pss.items() if role != "CNI workers") / 1024

    @property
    def total_rss_mb(self) -> float:
        return sum(self.rss.values()) / 1024

    @property
    def total_pss_mb(self) -> float:
        return sum(self.pss.values()) / 1024

    def split(self) -> str:
        return ", ".join(f"{role} {kb / 1024:.0f}" for role, kb in self.rss.items() if kb)


def import_floor() -> tuple[float, float]:
    """RSS in MB of this interpreter started bare, and after importing percale-node's modules
    (nothing running): what the agent weighs before it does anything."""
    probe = ("import sys\n{}\nprint([l for l in open('/proc/self/status') "
             "if l.startswith('VmRSS')][0].split()[1])")
    sizes = []
    for imports in ("", "import percale.node.main"):
        out = subprocess.run([sys.executable, "-c", probe.format(imports)], check=True,
                             capture_output=True, text=True, cwd=REPO).stdout
        sizes.append(int(out) / 1024)
    return sizes[0], sizes[1]


def cpu_seconds(pids: list[int]) -> float:
    return sum(sum(_cpu(pid)[:2]) for pid in pids)


class CPUWatch:
    """CPU seconds (user + kernel) of named processes between start() and stop()."""

    def __init__(self, groups: dict[str, list[int]]) -> None:
        self.groups = groups
        self.start_at = {name: cpu_seconds(pids) for name, pids in groups.items()}
        self.used: dict[str, float] = {}

    def stop(self) -> dict[str, float]:
        self.used = {name: cpu_seconds(pids) - self.start_at[name]
                     for name, pids in self.groups.items()}
        return self.used


# -- phases ----------------------------------------------------------------------------------------

def phase_fib(rounds: int) -> dict[str, list[float]]:
    """b: bench/fib.py's measurement, 10k routes only."""
    ns = FibNamespace("pfbgp").create()
    try:
        with tempfile.TemporaryDirectory(prefix="percale-bgp-bench-fib-") as tmp, \
                ns.worker() as worker:
            return measure(ns, worker, 10_000, batch_file(Path(tmp), 10_000), rounds)
    finally:
        ns.remove()


class RibWatch:
    """`gobgp monitor global rib -j` in the speaker's namespace: when each prefix first appeared
    in GoBGP's RIB, timed by a reader thread as each line arrives."""

    def __init__(self, lab: Lab) -> None:
        self.seen: dict[str, float] = {}
        self.process = subprocess.Popen(
            ["ip", "netns", "exec", lab.speaker, "gobgp", "-p", GOBGP_API, "monitor", "global",
             "rib", "-a", "ipv4", "-j"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            text=True)
        lab.processes.append(self.process)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stdout:
            now = time.perf_counter()
            try:
                paths = json.loads(line)
            except ValueError:
                continue
            for path in paths if isinstance(paths, list) else [paths]:
                if not isinstance(path, dict):
                    continue  # not a path (gobgp prints other messages on this stream too)
                prefix = path.get("nlri", {}).get("prefix")
                if prefix and not path.get("withdrawal") and prefix not in self.seen:
                    self.seen[prefix] = now


def phase_claims(lab: Lab, endpoint: str, claims: int, *, release: bool = True,
                 timeout: float = 10.0) -> dict:
    """c: with percale's session to GoBGP up, claim blocks one at a time; then, with `release`,
    give them all back and wait until GoBGP has none of them."""
    watch = RibWatch(lab)
    time.sleep(0.3)  # the monitor's stream is open before the first claim

    async def work(store):
        async with followed(store, node=lab.node.name) as view:
            return await claim_all(store, IPAM(view, authority=store))

    async def claim_all(store, ipam):
        rows = []
        for i in range(claims):
            started = time.perf_counter()
            got = await ipam.auto_assign(lab.node.name, handle_id=f"k8s-pod-network.bench-{i}",
                                         num4=CLAIM_ADDRESSES, ipv4_pools=[CLAIM_POOL],
                                         max_blocks_per_host=CLAIM_CAP)
            returned = time.perf_counter()
            blocks = {str(a.network) for a in got.ipv4}
            if len(blocks) != 1:
                raise RuntimeError(f"claim {i} gave addresses from {sorted(blocks)}, "
                                   "expected one new block")
            block = blocks.pop()
            while block not in watch.seen and time.perf_counter() - started < timeout:
                await asyncio.sleep(0.005)
            if block not in watch.seen:
                raise RuntimeError(f"block {block} not in GoBGP's RIB {timeout:g} s after "
                                   "its claim")
            rows.append({"block": block, "total": watch.seen[block] - started,
                         "assign": returned - started, "after": watch.seen[block] - returned})
        if release:
            # Back to a node without blocks for a and d: a real node holds a few, and the agent
            # reads every block of the cluster on each sync.
            for i in range(claims):
                await ipam.release_by_handle(f"k8s-pod-network.bench-{i}")
            await ipam.release_host_affinities(lab.node.name)
        return rows

    rows = store_work(endpoint, work)
    stop_pid(watch.process)
    if release:
        wait_for(lambda: lab.rib_size() == 0, 30, "the claimed blocks withdrawn from GoBGP")
    return {"rows": rows}


def phase_claims_loaded(lab: Lab, endpoint: str, n: int, claims: int) -> dict:
    """c once more, on a node that has learned a's n routes: percale's session opened again,
    all n routes in its kernel, then `claims` claims; the session closed at the end."""
    counter = KernelRoutes(lab.node.netns, RouteProtocol.BGP)
    try:
        counter.expect(n)
        lab.percale_peer(True)
        if not counter.wait(30 + n / 1000):
            raise RuntimeError(f"percale: {len(counter.prefixes):,} of {n:,} routes learned")
    finally:
        counter.close()
    time.sleep(1)  # the agent done with the new session
    result = phase_claims(lab, endpoint, claims, release=False, timeout=60)
    started = time.perf_counter()
    lab.percale_peer(False)
    wait_for(lambda: dump_count(lab.node.netns, RouteProtocol.BGP) == 0, 120 + n / 1000,
             "percale's kernel emptied after the session went down", interval=0.2)
    result.update(n=n, flush=time.perf_counter() - started)
    return result


def phase_memory(lab: Lab, endpoint: str, idle: float) -> dict:
    """d: a second percale node, started with 100 BGPPeers nobody answers already in the
    datastore; RSS and idle CPU of its agent's tree. Beside it, the lab's node with its one peer.

    A node of its own, its peers there before it starts, so ExaBGP gets all of them in its first
    configuration: adding 100 peers to a running node makes the agent rewrite the configuration
    and signal a reload many times in a row, and ExaBGP 5.0.15 then read a half-written file once,
    failed that reload, and failed every reload after it ("a process section called "percale"
    already exists"), keeping the peers it had (README, "d").
    """
    before = Memory.of(lab.node.agent.pid)
    node = CNINode(lab.etcd_unix, name=f"bbm{lab.tag}")
    conf, log = node.workdir / "bgp" / "exabgp.conf", node.workdir / "bgp" / "exabgp.log"

    async def add(store):
        for i, address in enumerate(DEAD_PEERS):
            await store.create(resource("BGPPeer", f"bench-dead-{i}",
                                        {"peerIP": address, "asNumber": AS, "node": node.name}))
        # Its BGP address on its uplink, in the dead peers' /24.
        await store.create(resource("Node", node.name, {"bgp": {"ipv4Address": "192.0.2.10/24"}}))

    store_work(endpoint, add)
    lab.extra_nodes.append(node)
    node.start()
    agent = node.agent.pid

    def neighbours() -> int:
        try:
            return sum(line.startswith("neighbor ") for line in conf.read_text().splitlines())
        except OSError:
            return 0

    def tried() -> int:
        """Dead peers ExaBGP has tried to connect to, from its log."""
        try:
            return len(set(re.findall(r"-(192\.0\.2\.\d+)", log.read_text())))
        except OSError:
            return 0

    wait_for(lambda: neighbours() == len(DEAD_PEERS), 60, "ExaBGP's config with 100 peers")
    # Each unanswered connect fails after about 3 s (ARP); let every peer be tried.
    wait_for(lambda: tried() == len(DEAD_PEERS), 30, "ExaBGP trying every dead peer",
             interval=0.5)
    cpu_before = AgentCPU.of(agent)
    exabgp_before = cpu_seconds(agent_tree(agent)["ExaBGP"])
    started = time.perf_counter()
    time.sleep(idle)
    cpu = AgentCPU.of(agent) - cpu_before
    exabgp = cpu_seconds(agent_tree(agent)["ExaBGP"]) - exabgp_before
    wall = time.perf_counter() - started
    with_peers = Memory.of(agent)
    sockets = sum("192.0.2." in line for line in
                  sh("ip", "netns", "exec", node.netns, "ss", "-tan").stdout.splitlines())
    stop_node(node)
    lab.extra_nodes.remove(node)

    async def remove(store):
        for i in range(len(DEAD_PEERS)):
            await store.delete(Key("BGPPeer", f"bench-dead-{i}"))
        await store.delete(Key("Node", node.name))

    store_work(endpoint, remove)
    return {"before": before, "with": with_peers, "cpu": cpu, "exabgp_cpu": exabgp,
            "wall": wall, "sockets": sockets, "tried": len(DEAD_PEERS),
            "floor": import_floor()}


def receive(lab: Lab, who: str, n: int) -> dict:
    """a, one receiver: open its session with GoBGP, wait for Established, then for all n routes
    in its kernel; then close the session and wait until its kernel has none left."""
    if who == "percale":
        address, netns, protocol = PERCALE_IP, lab.node.netns, RouteProtocol.BGP
        session = lab.percale_peer
        agent = lab.node.agent.pid
        tree = agent_tree(agent)
        groups = {"ExaBGP": tree["ExaBGP"], "bridge": tree["bridge"],
                  "percale-node": [agent] + tree["other"]}
    else:
        address, netns, protocol = BIRD_IP, lab.bird, RTPROT_BIRD
        groups = {"bird": [lab.bird_process.pid]}

        def session(up: bool) -> None:
            lab.birdc("enable" if up else "disable", "feed")

    groups["gobgpd"] = [lab.gobgpd.pid]
    counter = KernelRoutes(netns, protocol)
    try:
        counter.expect(n)
        cpu = CPUWatch(groups)
        enabled = time.perf_counter()
        session(True)
        deadline = enabled + 30
        while True:
            polled = time.perf_counter()
            if lab.established(address):
                established = polled  # the poll that saw it began here (a poll takes ~10 ms)
                break
            if polled > deadline:
                raise RuntimeError(f"{who}: no session with GoBGP 30 s after configuring it")
        timeout = 30 + n / 1000
        complete = counter.wait(timeout)
        cpu.stop()
        result = {"who": who, "n": n, "connect": established - enabled,
                  "first": (counter.first_at - established) if counter.first_at else None,
                  "all": (counter.reached_at - established) if complete else None,
                  "got": len(counter.prefixes), "polled": counter.polled, "cpu": cpu.used,
                  "timeout": timeout}
        sent = lab.neighbour(address).get("messages", {}).get("sent", {})
        result["updates"] = int(sent.get("update", 0))
        if complete:
            installed = dump_count(netns, protocol)
            if installed != n:
                raise RuntimeError(f"{who}: {installed} routes in the kernel, expected {n}")
        if who == "percale":
            result["memory"] = Memory.of(lab.node.agent.pid)
        # The flush is timed like the load, by the kernel's notifications: polling with dumps
        # of a 100k-route table every 0.1 s loaded the 2 cores the receiver works on, and
        # rounded each flush up to the next poll.
        counter.expect_empty()
        flushed = time.perf_counter()
        session(False)
        if not counter.wait(60 + n / 1000):
            raise RuntimeError(f"{who}: {len(counter.prefixes):,} routes still in the kernel "
                               f"{60 + n / 1000:.0f} s after the session went down")
        result["flush"] = counter.reached_at - flushed
        if dump_count(netns, protocol):
            raise RuntimeError(f"{who}: routes left in the kernel after the flush")
        wait_for(lambda: not lab.established(address), 10, f"{who}'s session down")
        return result
    finally:
        counter.close()


def phase_feed(lab: Lab, sizes: tuple[int, ...], rounds: int) -> list[dict]:
    """a: for each size, GoBGP's RIB grown to N routes, then percale and BIRD in turn, `rounds`
    times, the one that goes first alternating."""
    results = []
    loaded = 0
    for n in sizes:
        path = lab.workdir / f"feed-{n}.mrt"
        write_mrt(path, feed_prefixes(loaded, n - loaded), GOBGP_IP)
        took = lab.inject(path, n)
        progress(f"a  GoBGP loaded {n - loaded:,} more routes ({n:,} in all) in {took:.2f} s")
        loaded = n
        for r in range(rounds):
            for who in ("percale", "BIRD") if r % 2 == 0 else ("BIRD", "percale"):
                row = receive(lab, who, n)
                row["round"] = r + 1
                done = f"after {row['all']:.2f} s" if row["all"] else "NOT ALL"
                progress(f"a  {n:>7,} {who:<8} round {r + 1}: Established after "
                         f"{row['connect']:.2f} s; in the kernel {done}; "
                         f"flushed in {row['flush']:.2f} s")
                results.append(row)
    return results


def pure_pipeline(n: int, rounds: int = 3) -> dict[str, float]:
    """percale's own work on n learned routes without ExaBGP, sockets or the kernel: ExaBGP's
    JSON for them (update lines of 1,000 NLRIs, about what one 4,096-byte UPDATE holds) through
    RibFeed (json, parse, the RIB's policy and decision) in this process, then Rib.changes();
    the median of `rounds` runs, each on a fresh Rib."""
    from percale.bgpd.exabgp_json import RibFeed
    from percale.bgpd.rib import Rib

    neighbor = {"address": {"local": PERCALE_IP, "peer": GOBGP_IP},
                "asn": {"local": AS, "peer": AS}}
    lines = [json.dumps({"exabgp": "5.0.0", "time": 0.0, "type": "state",
                         "neighbor": {**neighbor, "state": "up"}})]
    prefixes = feed_prefixes(0, n)
    for start in range(0, n, 1000):
        # NLRIs as ExaBGP writes them for the agent (api.compact, bgpd/exabgp_config.py)
        nlri = [str(p) for p in prefixes[start:start + 1000]]
        lines.append(json.dumps({"exabgp": "5.0.0", "time": 0.0, "type": "update", "neighbor": {
            **neighbor, "direction": "receive", "message": {"update": {
                "attribute": {"origin": "igp", "local-preference": 100},
                "announce": {"ipv4 unicast": {GOBGP_IP: nlri}}}}}}))
    runs = []
    for _ in range(rounds):
        rib = Rib(router_id=PERCALE_IP, pools=[FEED_POOL, CLAIM_POOL],
                  own_addresses=[PERCALE_IP])
        feed = RibFeed(rib)
        started = time.perf_counter()
        for line in lines:
            feed.feed(line, 0.0)
        fed = time.perf_counter()
        changes = rib.changes()
        ended = time.perf_counter()
        if len(changes.added) != n:
            raise RuntimeError(f"the RIB chose {len(changes.added)} of {n} routes")
        runs.append((fed - started, ended - fed))
    return {"feed": statistics.median(r[0] for r in runs),
            "changes": statistics.median(r[1] for r in runs)}


# -- report ----------------------------------------------------------------------------------------

def code_version() -> str:
    try:
        commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                                check=True, capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain",
                                "--untracked-files=no", "--", "bgpd", "percale/node", "ipam"],
                               check=True, capture_output=True, text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "percale (not a git checkout)"
    return f"percale {commit}{' with uncommitted changes on the measured path' if dirty else ''}"


def versions() -> str:
    gobgp = sh("gobgp", "--version", check=False).stdout.strip().replace(" version ", " ")
    bird = (sh("bird", "--version", check=False).stderr.strip()
            or sh("bird", "--version", check=False).stdout.strip()).replace(" version ", " ")
    try:
        exabgp = f"ExaBGP {importlib.metadata.version('exabgp')}"
    except importlib.metadata.PackageNotFoundError:
        exabgp = "ExaBGP (version unknown)"
    return f"{exabgp}, {gobgp or 'gobgp'}, {bird or 'BIRD'}, {etcd_version()}"


def secs(value: float | None) -> str:
    return "-" if value is None or value == math.inf else f"{value:.2f} s"


def report(args, feed: list[dict], pure: dict[str, float], fib: dict[str, list[float]],
           claims: dict, loaded: dict, memory: dict, load_before: float) -> None:
    mode = "--quick" if args.quick else "full"
    print(f"\npercale BGP benchmark ({mode}): {code_version()}, {versions()}, "
          f"{os.cpu_count()} CPUs, load average {load_before:.2f} before the run "
          f"(a shared machine is busier: see bench/README.md)")
    rows = [("", "what", "percale", "yardstick", "ratio", "aim", "")]

    medians = {}
    largest = max(r["n"] for r in feed)
    for n in sorted({r["n"] for r in feed}):
        for who in ("percale", "BIRD"):
            times = [r["all"] for r in feed if r["n"] == n and r["who"] == who]
            # A load that never completed counts as infinitely slow.
            medians[who] = (statistics.median([t if t else math.inf for t in times]),
                            " ".join("-" if t is None else f"{t:.2f}" for t in times))
        (p, p_rounds), (b, b_rounds) = medians["percale"], medians["BIRD"]
        ratio = p / b
        goal = GOAL_LEARN_RATIO if n == largest else GOAL_RATIO
        rows.append(("a", f"{n:,} routes: Established -> all in kernel, median",
                     secs(p), f"BIRD {secs(b)}", f"{ratio:.2f}x", f"<= {goal:g}x",
                     verdict(ratio <= goal)))
        rows.append(("", "  routes/s; the rounds in s", f"{n / p:,.0f}/s; {p_rounds}",
                     f"{n / b:,.0f}/s; {b_rounds}", "", "", ""))
        if n == largest:
            flush = {who: statistics.median(r["flush"] for r in feed
                                            if r["n"] == n and r["who"] == who)
                     for who in ("percale", "BIRD")}
            ratio = flush["percale"] / flush["BIRD"]
            rows.append(("", "  flushed after the session ends, median", secs(flush["percale"]),
                         f"BIRD {secs(flush['BIRD'])}", f"{ratio:.2f}x",
                         f"<= {GOAL_FLUSH_RATIO:g}x", verdict(ratio <= GOAL_FLUSH_RATIO)))
            learned = [r["memory"].rss["percale-node"] / 1024 for r in feed
                       if r["n"] == n and r["who"] == "percale"]
            rows.append(("", f"  percale-node RSS with {n:,} learned, median; the rounds",
                         f"{statistics.median(learned):.0f} MB; "
                         + " ".join(f"{mb:.0f}" for mb in learned), "", "",
                         f"<= {GOAL_LEARNED_RSS_MB:g} MB",
                         verdict(statistics.median(learned) <= GOAL_LEARNED_RSS_MB)))

    pc, ipb = statistics.median(fib["percale"]), statistics.median(fib["ip -batch"])
    ratio = ipb / pc
    rows.append(("b", "10,000 routes: FIB.apply() vs ip -batch (median)",
                 f"{ms(pc)} ms", f"ip -batch {ms(ipb)} ms", f"{ratio:.2f}",
                 f">= {GOAL_FIB:g}", verdict(ratio >= GOAL_FIB)))

    totals = [r["total"] for r in claims["rows"]]
    p50, p99 = percentile(totals, 50), percentile(totals, 99)
    rows.append(("c", f"block claim -> route in GoBGP's RIB, {len(totals)} claims, p50",
                 f"{ms(p50)} ms", "", "", f"< {GOAL_CLAIM:g} s", verdict(p50 < GOAL_CLAIM)))
    rows.append(("", "  p99", f"{ms(p99)} ms", "", "", f"< {GOAL_CLAIM:g} s",
                 verdict(p99 < GOAL_CLAIM)))
    heavy = [r["total"] for r in loaded["rows"]]
    rows.append(("", f"  the same with {loaded['n']:,} routes learned, {len(heavy)} claims: p50",
                 f"{ms(percentile(heavy, 50))} ms", "", "", f"< {GOAL_CLAIM:g} s",
                 verdict(percentile(heavy, 50) < GOAL_CLAIM)))
    rows.append(("", "    max", f"{ms(max(heavy))} ms", "", "", f"< {GOAL_CLAIM:g} s",
                 verdict(max(heavy) < GOAL_CLAIM)))

    mem = memory["with"]
    rows.append(("d", f"RSS percale-node + ExaBGP + its helper, {len(DEAD_PEERS)} peers",
                 f"{mem.bgp_rss_mb:.0f} MB", f"PSS {mem.bgp_pss_mb:.0f} MB", "",
                 f"< {GOAL_RSS_MB:g} MB", verdict(mem.bgp_rss_mb < GOAL_RSS_MB)))
    rows.append(("", f"  the whole tree, {mem.processes} processes",
                 f"{mem.total_rss_mb:.0f} MB", f"PSS {mem.total_pss_mb:.0f} MB", "",
                 f"< {GOAL_RSS_MB:g} MB", verdict(mem.total_rss_mb < GOAL_RSS_MB)))
    cpu = memory["cpu"]
    busy = (cpu.user + cpu.system + cpu.below) / memory["wall"]
    rows.append(("", f"  idle CPU over {memory['wall']:.0f} s", f"{busy * 100:.1f}% of a core",
                 "", "", "", ""))
    table(rows)

    print("\na, step by step (wall times from Established, found by polling `gobgp neighbor` "
          "every ~10 ms; the UPDATEs GoBGP sent; CPU seconds from configuring the session to "
          "the last route):")
    rows = [("routes", "receiver", "round", "config->Estab.", "->first route", "->all", "flush",
             "UPDATEs", "CPU seconds")]
    for r in sorted(feed, key=lambda r: (r["n"], r["who"] != "percale", r["round"])):
        cpu_text = ", ".join(f"{name} {seconds:.2f}" for name, seconds in r["cpu"].items())
        note = " (counted by dump: notifications overflowed)" if r["polled"] else ""
        got = "" if r["all"] else f" ({r['got']:,} of {r['n']:,} after {r['timeout']:.0f} s)"
        rows.append((f"{r['n']:,}", r["who"], str(r["round"]), secs(r["connect"]),
                     secs(r["first"]), secs(r["all"]) + got + note, secs(r["flush"]),
                     f"{r['updates']:,}", cpu_text))
    table(rows)
    big = [r for r in feed if r["who"] == "percale" and r["n"] == max(x["n"] for x in feed)]
    n = big[0]["n"]
    memory_after = big[-1]["memory"]
    agent_cpu = statistics.median(r["cpu"]["percale-node"] for r in big)
    exabgp_cpu = statistics.median(r["cpu"]["ExaBGP"] for r in big)
    fib_seconds = n * statistics.median(fib["percale"]) / 10_000
    print(f"RSS after {n:,} routes learned (before the flush): percale-node + ExaBGP + helper "
          f"{memory_after.bgp_rss_mb:.0f} MB ({memory_after.split()} MB)")
    print(f"percale's {n:,} taken apart (medians of the rounds): percale-node's CPU "
          f"{agent_cpu:.2f} s and ExaBGP's {exabgp_cpu:.2f} s during the load; of the agent's, "
          f"RibFeed + Rib (the same routes as ExaBGP JSON, in this process) "
          f"{pure['feed']:.2f} s, Rib.changes() {pure['changes']:.2f} s, FIB.apply() about "
          f"{fib_seconds:.2f} s (b's rate)")

    rows_c = claims["rows"]
    assign = [r["assign"] for r in rows_c]
    after = [r["after"] for r in rows_c]
    print(f"\nc, taken apart: auto_assign() itself (a new /26 claimed and its {CLAIM_ADDRESSES} "
          f"addresses assigned) p50 {ms(percentile(assign, 50))} / p99 "
          f"{ms(percentile(assign, 99))} ms; from its return to GoBGP's RIB p50 "
          f"{ms(percentile(after, 50))} / p99 {ms(percentile(after, 99))} ms; "
          f"max {ms(max(totals))} ms ({rows_c[totals.index(max(totals))]['block']})")
    heavy_after = [r["after"] for r in loaded["rows"]]
    print(f"c with {loaded['n']:,} routes learned: auto_assign() p50 "
          f"{ms(percentile([r['assign'] for r in loaded['rows']], 50))} ms; from its return to "
          f"GoBGP's RIB p50 {ms(percentile(heavy_after, 50))} ms; the rounds in ms "
          f"{' '.join(f'{t * 1000:.0f}' for t in heavy)}; the session closed after them, "
          f"kernel empty {loaded['flush']:.2f} s later")

    before = memory["before"]
    bare, imported = memory["floor"]
    print(f"\nd, RSS by process in MB: the lab's node, 1 peer (after c): {before.split()}; "
          f"the second node, {len(DEAD_PEERS)} peers: {mem.split()} ({mem.processes} "
          f"processes). Floor: a bare interpreter {bare:.0f} MB, one that has imported "
          f"percale.node.main {imported:.0f} MB. ExaBGP had tried all {memory['tried']} peers "
          f"before the idle time; {memory['sockets']} TCP sockets towards them at its end. Idle "
          f"CPU: percale-node {cpu.user + cpu.system:.2f} s, the processes below it "
          f"{cpu.below:.2f} s, of which ExaBGP {memory['exabgp_cpu']:.2f} s.")

    rounds = " ".join(f"{v * 1000:.0f}" for v in fib["percale"])
    rounds_ip = " ".join(f"{v * 1000:.0f}" for v in fib["ip -batch"])
    print(f"b: rounds in ms, percale {rounds}; ip -batch {rounds_ip} "
          f"(bench/fib.py runs 100k as well)")


# -- main ------------------------------------------------------------------------------------------

def run(args: argparse.Namespace) -> None:
    sizes = QUICK if args.quick else FULL
    began = time.monotonic()
    load_before = os.getloadavg()[0]
    server = None
    lab: Lab | None = None
    try:
        progress(f"b  FIB: 10,000 routes, percale vs ip -batch, {sizes.fib_rounds} rounds")
        fib = phase_fib(sizes.fib_rounds)

        server = start_etcd()
        progress(f"etcd {server.endpoint} (pid {server.process.pid}); starting the lab")

        async def setup(store):
            await add_pool(store, "feed", FEED_POOL)
            await add_pool(store, "claims", CLAIM_POOL, blockSize=26)
            # Two percale nodes (d starts the second) must not peer with each other.
            await store.create(resource("BGPConfiguration", "default",
                                        {"nodeToNodeMeshEnabled": False}))

        store_work(server.endpoint, setup)
        lab = Lab(server.unix_endpoint, server.endpoint)
        lab.up()

        async def register(store):
            await store.create(resource("Node", lab.node.name,
                                        {"bgp": {"ipv4Address": f"{PERCALE_IP}/24"}}))

        store_work(server.endpoint, register)
        lab.percale_peer(True)
        wait_for(lambda: lab.established(PERCALE_IP), 60, "percale's session with GoBGP",
                 interval=0.2)
        progress(f"lab up: {lab.node.name} (percale-node pid {lab.node.agent.pid}), "
                 f"{lab.speaker} (gobgpd pid {lab.gobgpd.pid}), "
                 f"{lab.bird} (bird pid {lab.bird_process.pid})")

        progress(f"c  {sizes.claims} block claims, each until GoBGP has the block")
        claims = phase_claims(lab, server.endpoint, sizes.claims)

        progress(f"d  {len(DEAD_PEERS)} BGPPeers nobody answers; RSS, then {sizes.idle:g} s idle")
        memory = phase_memory(lab, server.endpoint, sizes.idle)

        lab.percale_peer(False)
        wait_for(lambda: not lab.established(PERCALE_IP), 10, "percale's session down")
        feed = phase_feed(lab, sizes.routes, sizes.rounds)
        progress(f"c  {sizes.loaded_claims} more claims, {max(sizes.routes):,} routes learned")
        loaded = phase_claims_loaded(lab, server.endpoint, max(sizes.routes),
                                     sizes.loaded_claims)
        progress(f"a  percale's own share: {max(sizes.routes):,} routes through RibFeed and "
                 "the Rib in this process")
        pure = pure_pipeline(max(sizes.routes))

        report(args, feed, pure, fib, claims, loaded, memory, load_before)
        print(f"\nwhole run {time.monotonic() - began:.1f} s")
    finally:
        # A second Ctrl-C or SIGTERM must not cut the cleanup short; each step is bounded.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if lab is not None:
            if isinstance(sys.exc_info()[1], Exception):
                agent_log_tail(lab)
            lab.down()
        if server is not None:
            server.stop()


def agent_log_tail(lab: Lab, lines: int = 30) -> None:
    """After a failure: the end of the agent's and ExaBGP's logs (they go with the work dirs)."""
    if lab.node is None:
        return
    for log in (lab.node.workdir / "agent.log", lab.node.workdir / "bgp" / "exabgp.log",
                lab.workdir / "gobgpd.log", lab.workdir / "bird.log"):
        if log.exists():
            tail = log.read_text(errors="replace").splitlines()[-lines:]
            progress(f"--- last lines of {log} ---\n" + "\n".join(tail))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="10k routes only (no 100k case)")
    args = parser.parse_args()
    return run_script("bench/bgp.py", lambda: run(args),
                      cleaned="daemons, etcd and namespaces removed")


if __name__ == "__main__":
    sys.exit(main())
