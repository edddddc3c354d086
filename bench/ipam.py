"""IPAM benchmark: how close percale's allocator gets to what this machine's datastore can do.

A script, not a test (timings never go into tests): `.venv/bin/python bench/ipam.py [--quick]
[--datastore etcd|kubernetes]`. It starts its own throwaway etcd (tests/helpers/etcd_server.py),
or etcd and a real kube-apiserver with percale's CRDs (tests/helpers/kube_apiserver.py), and
eight worker processes, then measures, against that one datastore, in one run:

  a  the write ceiling from 8 processes: etcd create transactions/s, one EtcdClient each; or,
     on Kubernetes, creates/s of a small custom resource (an empty IPAMHandle), one client each
  a2 (etcd) the transaction an allocation makes, without the allocator: 8 processes, each
     following the datastore as an agent does, write a new handle and their block together,
     values encoded ahead of time at the allocator's sizes; a2 / a is the most b / a could be
  b  IPAM.auto_assign allocations/s with 8 nodes allocating at once, one process per node
  c  allocation latency p50/p99: from b, and one node allocating sequentially
  d  compare-and-swap conflicts per allocation, from b
  e  time to give 100 addresses to a fresh node: sequential calls, and asyncio.gather
     (--profile: e once more under cProfile, and b once more with node-0 under cProfile)
  f  (Kubernetes) watch event -> reaction: a block claimed by another node, until an agent's
     view (datastore/cache.py) has it

a, a2 and b run in turn, three rounds of them (--quick: one), and each ratio is the median of
the rounds' own. Every phase starts from an empty datastore. bench/README.md says what each
figure means.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import ipaddress
import itertools
import math
import multiprocessing
import os
import pstats
import re
import signal
import statistics
import subprocess
import sys
import time
import traceback
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable, Generator
from dataclasses import dataclass
from datetime import datetime, timezone
from multiprocessing.connection import Connection
from pathlib import Path

# The throwaway etcd of the tests is the one to reuse; it lives outside the installed package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aetcd import rpc
from percale.ipam import blocks
from percale.ipam.allocator import IPAM

from bench.harness import run_script
from percale.datastore.cache import followed
from percale.datastore.contract import writes_together
from percale.datastore.etcd import EtcdDatastore
from percale.datastore.etcd_client import EtcdClient, prefix_end
from percale.api import IPAMBlock, IPAMHandle, IPPool, ObjectMeta
from percale.api.fields import format_time
from percale.api.ipam import IPAMHandleSpec, host_affinity
from percale.api.ipam import block_name as blocks_name
from percale.datastore import layout
from percale.datastore.codec import encode, stamped_for_create
from percale.datastore.contract import Key
from percale.api.ippool import IPPoolSpec
from tests.helpers.etcd_server import ETCD, EtcdServer
from tests.helpers.store import is_kubernetes, open_store

WORKERS = 8
POOL_CIDR, BLOCK_SIZE = "10.0.0.0/8", 26
BURST = 100
VALUE = b"v" * 64
ROOT = b"/percale/"
# Time for every worker to get the command and warm its channel before the common start.
START_LEAD = 1.0

# Issue #15's aims: allocations at 0.6 of the raw create rate, p99 within 20 ms with 8 nodes.
GOAL_RATIO, GOAL_P99_MS, GOAL_CONFLICTS = 0.6, 20.0, 0.1


@dataclass(frozen=True)
class Durations:
    create: float      # a and a2, per round
    allocate: float    # b, per round
    sequential: float  # c, one node
    rounds: int        # of a, a2 and b in turn


FULL = Durations(create=3.0, allocate=6.0, sequential=5.0, rounds=3)
QUICK = Durations(create=2.0, allocate=4.0, sequential=2.0, rounds=1)

# Where phase a2's blocks go: 10.0.0.0, as int.
A2_BASE = int(ipaddress.IPv4Address("10.0.0.0"))

_CREATE = rpc.Compare.CompareTarget.Value("CREATE")
_MOD = rpc.Compare.CompareTarget.Value("MOD")
_EQUAL = rpc.Compare.CompareResult.Value("EQUAL")


# -- what a worker process runs ---------------------------------------------------------------

async def _until(start_at: float) -> float:
    """Sleep until the common wall-clock start; how late this process woke."""
    await asyncio.sleep(max(0.0, start_at - time.time()))
    return time.time() - start_at


async def op_reset(endpoint: str, pool: bool) -> dict:
    """Delete every percale key in one transaction, compact the history away, and create the
    benchmark pool if asked, so no phase sees what the one before it wrote."""
    store = EtcdDatastore([endpoint])
    try:
        delete = rpc.DeleteRangeRequest(key=ROOT, range_end=prefix_end(ROOT))
        response = await store.client.txn([], [rpc.RequestOp(request_delete_range=delete)], [])
        deleted = response.responses[0].response_delete_range.deleted
        # etcd slows several-fold with a long uncompacted history (reference/performance.md §2);
        # its own revision compactor only runs every five minutes, longer than this whole run.
        await store.client.compact(response.header.revision)
        if pool:
            await store.create(IPPool(metadata=ObjectMeta(name="bench"),
                                      spec=IPPoolSpec(cidr=POOL_CIDR, block_size=BLOCK_SIZE)))
        return {"deleted": deleted}
    finally:
        await store.close()


KUBE_KINDS = ("ipamblocks", "blockaffinities", "ipamhandles", "ipamconfigs", "ippools")


async def op_reset_kubernetes(endpoint: str, pool: bool) -> dict:
    """The same on Kubernetes: every percale object of the IPAM kinds goes (one
    deletecollection per kind), then the benchmark pool."""
    store = open_store(endpoint)
    try:
        deleted = 0
        for plural in KUBE_KINDS:
            path = f"/apis/percale.io/v1/{plural}"
            deleted += len((await store.client.request("GET", path)).get("items", []))
            await store.client.request("DELETE", path)
        for _ in range(100):  # deletecollection returns before the objects are gone
            left = [(await store.client.request("GET", f"/apis/percale.io/v1/{p}"))["items"]
                    for p in KUBE_KINDS]
            if not any(left):
                break
            await asyncio.sleep(0.1)
        if pool:
            await store.create(IPPool(metadata=ObjectMeta(name="bench"),
                                      spec=IPPoolSpec(cidr=POOL_CIDR, block_size=BLOCK_SIZE)))
        return {"deleted": deleted}
    finally:
        await store.close()


async def op_create_crs(endpoint: str, worker: int, start_at: float, duration: float) -> dict:
    """Phase a on Kubernetes: POST of a small custom resource (an IPAMHandle with no blocks) on
    fresh names, one outstanding at a time -- the apiserver's own create rate."""
    store = open_store(endpoint)
    try:
        await store.list("IPPool")  # connect before the clock starts
        late = await _until(start_at)
        cpu = time.process_time()
        deadline = start_at + duration
        count = failed = n = 0
        latencies = []
        while time.time() < deadline:
            name = f"bench-{worker}-{n}"
            n += 1
            body = {"apiVersion": "percale.io/v1", "kind": "IPAMHandle", "metadata": {"name": name},
                    "spec": {"handleID": name, "block": {}}}
            t = time.perf_counter()
            try:
                await store.client.request("POST", "/apis/percale.io/v1/ipamhandles", body=body)
            except Exception:  # noqa: BLE001 - counted, as a failed etcd txn is
                failed += 1
                continue
            latencies.append(time.perf_counter() - t)
            if time.time() <= deadline:
                count += 1
        return {"count": count, "failed": failed, "latencies": latencies, "late": late,
                "cpu": time.process_time() - cpu}
    finally:
        await store.close()


async def op_watch_reaction(endpoint: str, samples: int) -> dict:
    """Phase f: another node claims blocks (its writes: the block, then the affinity); an
    agent's view of IPAMBlock (a Cache on its own connection) reports each. The time from the
    block's write being sent to the view's change, per block."""
    from percale.api import IPAMBlock
    from percale.api.ipam import host_affinity
    from percale.datastore.cache import Cache

    writer, watcher = open_store(endpoint), open_store(endpoint)
    cache = Cache(watcher, ["IPAMBlock"])
    arrived: dict[str, float] = {}
    cache.subscribe(lambda change: change.new is not None and arrived.setdefault(
        change.key.name, time.perf_counter()))
    task = asyncio.create_task(cache.run())
    try:
        await cache.wait_synced()
        await writer.list("IPPool")  # connected
        delays = []
        for i in range(samples):
            cidr = f"10.200.{i}.0/26"
            sent = time.perf_counter()
            await writer.create(IPAMBlock.empty(cidr, host_affinity(f"far-node-{i}")))
            block = blocks_name(cidr)
            for _ in range(5000):
                if block in arrived:
                    break
                await asyncio.sleep(0.001)
            delays.append(arrived.get(block, math.inf) - sent)
        return {"delays": delays}
    finally:
        task.cancel()
        await writer.close()
        await watcher.close()


# One transaction to send: compares, success branch, failure branch.
Txn = tuple[list[rpc.Compare], list[rpc.RequestOp], list[rpc.RequestOp]]


async def _one_at_a_time(client: EtcdClient, start_at: float, duration: float,
                         txns: Generator[Txn, rpc.TxnResponse, None]) -> dict:
    """Phases a and a2: from `start_at`, for `duration`, send what `txns` yields, one
    transaction outstanding at a time, handing each answer back to it (send)."""
    await client.range(b"/percale/bench/warmup")  # connect before the clock starts
    txn = next(txns)  # and prepare what comes before the first transaction (a2's values)
    late = await _until(start_at)
    cpu = time.process_time()
    deadline = start_at + duration
    count = failed = 0
    latencies = []
    while time.time() < deadline:
        t = time.perf_counter()
        response = await client.txn(*txn)
        latencies.append(time.perf_counter() - t)
        if not response.succeeded:
            failed += 1
        elif time.time() <= deadline:
            count += 1
        txn = txns.send(response)
    return {"count": count, "failed": failed, "latencies": latencies, "late": late,
            "cpu": time.process_time() - cpu}


def _creates(worker: int) -> Generator[Txn, rpc.TxnResponse, None]:
    """Phase a's transactions: `create_revision == 0 -> put` of 64 bytes on fresh keys."""
    for n in itertools.count():
        key = f"/percale/bench/create/{worker}/{n}".encode()
        yield ([rpc.Compare(key=key, target=_CREATE, result=_EQUAL, create_revision=0)],
               [rpc.RequestOp(request_put=rpc.PutRequest(key=key, value=VALUE))],
               [])


async def op_create_txns(endpoint: str, worker: int, start_at: float, duration: float) -> dict:
    """Phase a: `create_revision == 0 -> put` on fresh keys, one outstanding txn at a time."""
    client = EtcdClient([endpoint])
    try:
        return await _one_at_a_time(client, start_at, duration, _creates(worker))
    finally:
        await client.close()


def _stored_values(node: str) -> tuple[bytes, list[bytes]]:
    """Phase a2's values, encoded as the allocator stores them: a handle (its name replaced per
    write), and a node's /26 block 10.0.0.0/26 holding 1, 2, ... 64 addresses (its CIDR replaced
    per block)."""
    now = format_time(datetime.now(timezone.utc))
    name = "k8s-pod-network." + "0" * 32
    handle = encode(stamped_for_create(IPAMHandle(
        metadata=ObjectMeta(name=name),
        spec=IPAMHandleSpec(handle_id=name, block={"10.0.0.0/26": 1}))))
    block = IPAMBlock.empty("10.0.0.0/26", host_affinity(node), affinity_claim_time=now)
    spec, values = block.spec, []
    for n in range(64):
        spec, _ = blocks.assign(spec, 1, f"k8s-pod-network.{uuid.uuid4().hex}",
                                {"node": node, "timestamp": now, "namespace": "bench",
                                 "pod": f"{node}-pod-{n}"})
        values.append(encode(stamped_for_create(block.model_copy(update={"spec": spec}))))
    return handle, values


def _handles_and_blocks(worker: int) -> Generator[Txn, rpc.TxnResponse, None]:
    """Phase a2's transactions: a new handle and the worker's block in one, as write_together
    writes them (the handle's create_revision == 0, the block's mod_revision as last written; the
    failure branch reads both), with values encoded here at the sizes the allocator writes: the
    block grows by an address per write, and a full one is followed by a fresh block."""
    handle, values = _stored_values(f"node-{worker}")
    template = b"0" * 32
    block_path, block_values, block_revision = b"", values, 0
    for n in itertools.count():
        if n % 64 == 0:
            # A fresh /26 per 64 writes; each worker's from a /13 of its own in 10/8.
            cidr = str(ipaddress.IPv4Network((A2_BASE + (worker << 19) + n // 64 * 64,
                                              BLOCK_SIZE)))
            block = blocks_name(cidr)
            block_path = layout.path(Key("IPAMBlock", block)).encode()
            block_values = [v.replace(b"10.0.0.0/26", cidr.encode())
                            .replace(b"10.0.0.0-26", block.encode()) for v in values]
            block_revision = 0
        name = uuid.uuid4().hex
        handle_path = layout.path(Key("IPAMHandle", f"k8s-pod-network.{name}")).encode()
        response = yield (
            [rpc.Compare(key=handle_path, target=_CREATE, result=_EQUAL, create_revision=0),
             rpc.Compare(key=block_path, target=_CREATE, result=_EQUAL, create_revision=0)
             if block_revision == 0 else
             rpc.Compare(key=block_path, target=_MOD, result=_EQUAL, mod_revision=block_revision)],
            [rpc.RequestOp(request_put=rpc.PutRequest(
                key=handle_path, value=handle.replace(template, name.encode()))),
             rpc.RequestOp(request_put=rpc.PutRequest(key=block_path,
                                                      value=block_values[n % 64]))],
            [rpc.RequestOp(request_range=rpc.RangeRequest(key=path))
             for path in (handle_path, block_path)],
        )
        if response.succeeded:
            block_revision = response.header.revision


async def op_block_txns(endpoint: str, worker: int, start_at: float, duration: float) -> dict:
    """Phase a2: the transaction an allocation makes, without the allocator, by a process that
    follows the datastore as an agent does (a view), one outstanding txn at a time."""
    txns = _handles_and_blocks(worker)
    store = EtcdDatastore([endpoint])
    try:
        async with followed(store):
            return await _one_at_a_time(store.client, start_at, duration, txns)
    finally:
        await store.close()


# The node agent's IPAM reads from its watch-fed view (datastore/cache.py) and writes to etcd;
# the benchmark allocates the same way (datastore.cache.followed), so that is what is measured.
PODS_PER_NODE = 640


async def op_allocate(endpoint: str, node: str, start_at: float, duration: float,
                      profile: bool = False) -> dict:
    """Phases b and c: `node` calls auto_assign for one address, back to back, until the end.
    With `profile`, the whole process (allocations and its view's watches) under cProfile."""
    store = open_store(endpoint)
    try:
        async with followed(store) as view:
            return await _allocate(store, IPAM(view, authority=store), node, start_at, duration,
                                   profile)
    finally:
        await store.close()


def _profile_report(profiler: cProfile.Profile) -> str:
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(25)
    return text.getvalue()


async def _allocate(store, ipam: IPAM, node: str, start_at: float, duration: float,
                    profile: bool = False) -> dict:
    await store.list("IPPool")  # connect before the clock starts
    late = await _until(start_at)
    profiler = cProfile.Profile() if profile else None
    if profiler:
        profiler.enable()
    cpu = time.process_time()
    deadline = start_at + duration
    count = n = 0
    latencies, addresses = [], []
    errors: Counter[str] = Counter()
    while time.time() < deadline:
        n += 1
        t = time.perf_counter()
        # A node holds at most 20 blocks (Calico's default cap, 1,280 addresses of /26s);
        # a fast single node reaches that within seconds, so it moves on to a fresh node
        # name every PODS_PER_NODE allocations, as pods spread over nodes would.
        host = f"{node}-{len(addresses) // PODS_PER_NODE}" if len(addresses) >= PODS_PER_NODE else node
        try:
            got = await ipam.auto_assign(
                host, handle_id=f"k8s-pod-network.{uuid.uuid4().hex}", num4=1,
                attrs={"namespace": "bench", "pod": f"{node}-pod-{n}"},
            )
        except Exception as err:  # noqa: BLE001 - a failed allocation is a finding, not a crash
            errors[f"{type(err).__name__}: {err}"[:160]] += 1
            continue
        latencies.append(time.perf_counter() - t)
        addresses += [str(i.ip) for i in got.ipv4]
        if time.time() <= deadline:
            count += 1
    cpu = time.process_time() - cpu
    if profiler:
        profiler.disable()
    return {"node": node, "count": count, "latencies": latencies, "addresses": addresses,
            "conflicts": ipam.conflicts, "calls": n, "errors": dict(errors), "late": late,
            "cpu": cpu, "one_txn": writes_together(ipam.store) is not None,
            "profile": _profile_report(profiler) if profiler else None}


async def op_burst(endpoint: str, node: str, concurrent: bool, profile: bool) -> dict:
    """Phase e: BURST single-address requests for one fresh node, one after another or all
    at once on one IPAM object (which serialises them on its per-node lock)."""
    store = open_store(endpoint)
    try:
        async with followed(store, node=node) as view:
            return await _burst(store, IPAM(view, authority=store), node, concurrent, profile)
    finally:
        await store.close()


async def _burst(store, ipam: IPAM, node: str, concurrent: bool, profile: bool) -> dict:
    profiler = cProfile.Profile() if profile else None
    await store.list("IPPool")
    # Sequential: each call's own latency. Concurrent: when each caller got its address,
    # counted from the common start, which is what a pod in the burst waits.
    done: list[float] = []
    errors: Counter[str] = Counter()

    async def one(i: int, since: float) -> None:
        try:
            await ipam.auto_assign(
                node, handle_id=f"k8s-pod-network.{uuid.uuid4().hex}", num4=1,
                attrs={"namespace": "bench", "pod": f"{node}-pod-{i}"},
            )
            done.append(time.perf_counter() - since)
        except Exception as err:  # noqa: BLE001
            errors[f"{type(err).__name__}: {err}"[:160]] += 1

    if profiler:
        profiler.enable()
    cpu = time.process_time()
    start = time.perf_counter()
    if concurrent:
        await asyncio.gather(*(one(i, start) for i in range(BURST)))
    else:
        for i in range(BURST):
            await one(i, time.perf_counter())
    elapsed = time.perf_counter() - start
    cpu = time.process_time() - cpu
    if profiler:
        profiler.disable()
    report = _profile_report(profiler) if profiler else None
    return {"elapsed": elapsed, "ok": len(done), "times": done, "conflicts": ipam.conflicts,
            "errors": dict(errors), "profile": report, "cpu": cpu}


async def op_census(endpoint: str) -> dict:
    """What the datastore holds after phase b: allocated addresses, handles, blocks per node."""
    store = open_store(endpoint)
    try:
        specs = [kv.value.spec for kv in (await store.list("IPAMBlock")).items]
        handles = (await store.list("IPAMHandle")).items
        per_node = Counter(s.affinity_node for s in specs)
        allocated = sum(len(s.allocations) - blocks.free_count(s) for s in specs)
        return {"allocated": allocated, "handles": len(handles), "blocks": len(specs),
                "blocks_per_node": dict(per_node)}
    finally:
        await store.close()


OPS: dict[str, Callable] = {
    "reset": op_reset, "create_txns": op_create_txns, "block_txns": op_block_txns,
    "allocate": op_allocate,
    "burst": op_burst, "census": op_census, "watch_reaction": op_watch_reaction,
}
KUBE_OPS = {**OPS, "reset": op_reset_kubernetes, "create_txns": op_create_crs}


def worker_main(conn: Connection, endpoint: str) -> None:
    """One worker process: runs the parent's commands on its own event loop until told to stop."""
    # Ctrl-C reaches the whole process group; the parent decides what happens to the workers.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    conn.send(("ready", os.getpid()))
    with asyncio.Runner() as runner:
        while True:
            try:
                name, kwargs = conn.recv()
            except EOFError:
                return  # the parent is gone
            if name == "stop":
                return
            try:
                ops = KUBE_OPS if is_kubernetes(endpoint) else OPS
                conn.send(("ok", runner.run(ops[name](endpoint, **kwargs))))
            except Exception:  # noqa: BLE001 - sent to the parent, which stops the run
                conn.send(("error", traceback.format_exc()))


# -- the parent: start, command, collect ------------------------------------------------------

class Worker:
    def __init__(self, ctx: multiprocessing.context.BaseContext, endpoint: str):
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=worker_main, args=(child, endpoint), daemon=True)
        self.process.start()
        child.close()

    def send(self, name: str, **kwargs: object) -> None:
        self.conn.send((name, kwargs))

    def receive(self, timeout: float) -> object:
        if not self.conn.poll(timeout):
            raise RuntimeError(f"worker {self.process.pid} did not answer within {timeout:.0f}s")
        try:
            status, value = self.conn.recv()
        except EOFError:
            raise RuntimeError(f"worker {self.process.pid} died "
                               f"(exit code {self.process.exitcode})") from None
        if status == "error":
            raise RuntimeError(f"worker {self.process.pid} failed:\n{value}")
        return value

    def call(self, name: str, timeout: float = 120.0, **kwargs: object) -> dict:
        self.send(name, **kwargs)
        return self.receive(timeout)  # type: ignore[return-value]

    def stop(self, deadline: float) -> None:
        if self.process.is_alive():
            try:
                self.send("stop")
            except OSError:
                pass
            self.process.join(max(0.0, deadline - time.monotonic()))
        if self.process.is_alive():
            self.process.terminate()  # by its PID; it is ours
            self.process.join(5)


def start_workers(endpoint: str) -> list[Worker]:
    # spawn, not fork: each process builds its own gRPC state from scratch.
    ctx = multiprocessing.get_context("spawn")
    workers = [Worker(ctx, endpoint) for _ in range(WORKERS)]
    for w in workers:
        w.receive(timeout=120)
    return workers


def run_together(workers: list[Worker], name: str, duration: float,
                 per_worker: Callable[[int], dict], probe: Callable[[], Load]) -> tuple[list[dict], Load]:
    """Run `name` in every worker from one wall-clock start, so spawn and connect are not timed;
    the results, and the load from that start until the last worker answered."""
    start_at = time.time() + START_LEAD
    for i, w in enumerate(workers):
        w.send(name, start_at=start_at, duration=duration, **per_worker(i))
    time.sleep(max(0.0, start_at - time.time()))
    before = probe()
    results = [w.receive(timeout=duration + 120) for w in workers]
    return results, probe() - before


def measured(probe: Callable[[], Load], phase: Callable[[], dict]) -> tuple[dict, Load]:
    before = probe()
    result = phase()
    return result, probe() - before


@dataclass(frozen=True)
class Load:
    """Counters read at the start and end of a phase; their difference is the phase's load.
    etcd's come from its Prometheus /metrics (requests served, its process CPU), the machine's
    from /proc/stat (CPU seconds busy on all cores), so CPU spent by neither the server nor the
    workers shows up too: other work on the machine skews every figure. On Kubernetes `range`
    and `txn` are the apiserver's reads (GET, LIST) and writes, and the server CPU is the
    apiserver's and its etcd's together."""

    range: float
    txn: float
    etcd_cpu: float
    machine_cpu: float
    wall: float

    def __sub__(self, other: Load) -> Load:
        return Load(*(getattr(self, f) - getattr(other, f) for f in self.__dataclass_fields__))

    def __add__(self, other: Load) -> Load:
        return Load(*(getattr(self, f) + getattr(other, f) for f in self.__dataclass_fields__))

    @classmethod
    def now(cls, endpoint: str) -> Load:
        try:
            with urllib.request.urlopen(f"{endpoint}/metrics", timeout=10) as response:
                text = response.read().decode()
        except OSError as err:
            raise RuntimeError(f"etcd at {endpoint} stopped answering: {err}") from None
        handled: Counter[str] = Counter()
        etcd_cpu = 0.0
        for line in text.splitlines():
            if m := _KV_HANDLED.match(line):
                handled[m[1]] += float(m[2])
            elif line.startswith("process_cpu_seconds_total "):
                etcd_cpu = float(line.split()[1])
        return cls(handled["Range"], handled["Txn"], etcd_cpu, _machine_cpu(), time.monotonic())


def kube_load(plane) -> Load:
    """Load on Kubernetes: the apiserver's request counters (its /metrics, as admin), the CPU of
    the apiserver and etcd processes (/proc), the machine's."""
    import ssl

    pair = plane._users["admin"]
    context = ssl.create_default_context(cafile=plane.ca.cert)
    context.load_cert_chain(pair.cert, pair.key)
    with urllib.request.urlopen(f"{plane.url}/metrics", context=context, timeout=10) as response:
        text = response.read().decode()
    counted: Counter[str] = Counter()
    for line in text.splitlines():
        if line.startswith("apiserver_request_total{") and 'group="percale.io"' in line:
            verb = re.search(r'verb="(\w+)"', line)[1]
            counted["reads" if verb in ("GET", "LIST") else "writes" if verb != "WATCH" else "watch"] += float(line.split()[-1])
    cpu = sum(_process_cpu(p.pid) for p in (plane.process, plane.etcd.process))
    return Load(counted["reads"], counted["writes"], cpu, _machine_cpu(), time.monotonic())


def _process_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


_KV_HANDLED = re.compile(r'^grpc_server_handled_total\{.*grpc_method="(\w+)"'
                         r'.*grpc_service="etcdserverpb\.KV".*\} (\S+)$')


def _machine_cpu() -> float:
    """CPU seconds spent busy on all cores since boot (everything in /proc/stat but idle and
    iowait; guest time is already inside user)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def start_etcd() -> EtcdServer:
    """The tests' throwaway etcd, with revision auto-compaction. EtcdServer has no way to add
    flags, so they go in as etcd's ETCD_* environment variables, for this one Popen only."""
    extra = {"ETCD_AUTO_COMPACTION_MODE": "revision", "ETCD_AUTO_COMPACTION_RETENTION": "10000"}
    saved = {k: os.environ.get(k) for k in extra}
    os.environ.update(extra)
    server = EtcdServer()
    try:
        return server.start()
    except BaseException:
        server.stop()
        raise
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


# -- figures -----------------------------------------------------------------------------------

def percentile(samples: list[float], q: float) -> float:
    """Nearest-rank percentile; nan when there are no samples."""
    if not samples:
        return math.nan
    ordered = sorted(samples)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}"


def verdict(ok: bool) -> str:
    return "ok" if ok else "MISSED"


def progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def code_version() -> str:
    """The commit measured, and whether the allocator or the datastore differ from it."""
    repo = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"],
                                check=True, capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain",
                                "--untracked-files=no", "--",
                                "ipam", "datastore", "api"],
                               check=True, capture_output=True, text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "percale (not a git checkout)"
    return f"percale {commit}{' with uncommitted changes on the measured path' if dirty else ''}"


def etcd_version() -> str:
    try:
        out = subprocess.run([ETCD, "--version"], check=False, capture_output=True, text=True,
                             timeout=10).stdout
        return out.splitlines()[0].replace("etcd Version: ", "etcd ")
    except (OSError, IndexError, subprocess.SubprocessError):
        return "etcd (version unknown)"


def run(args: argparse.Namespace) -> None:
    d = QUICK if args.quick else FULL
    kubernetes = args.datastore == "kubernetes"
    began = time.monotonic()
    server: EtcdServer | None = None
    plane = None
    workers: list[Worker] = []
    try:
        if kubernetes:
            from tests.helpers.kube_apiserver import KubeControlPlane

            plane = KubeControlPlane().start()
            endpoint, where = plane.admin, f"kube-apiserver {plane.url} on etcd {plane.etcd.endpoint}"
            probe: Callable[[], Load] = lambda: kube_load(plane)
        else:
            server = start_etcd()
            endpoint, where = server.endpoint, f"etcd {server.endpoint} (pid {server.process.pid})"
            probe = lambda: Load.now(server.endpoint)
        progress(f"{where}, starting {WORKERS} workers")
        workers = start_workers(endpoint)
        w0 = workers[0]

        what = "creates of a small custom resource" if kubernetes else "create txns"
        # a, a2 and b in turn, round after round: each ratio is taken within a round, so this
        # machine's speed drifting over the run (it does, by a third within minutes) moves both
        # sides of it; the figures are the median round's.
        rounds = Rounds()
        for n in range(1, d.rounds + 1):
            of = f"round {n}/{d.rounds}: " if d.rounds > 1 else ""
            progress(f"a  {of}{what}, {WORKERS} processes, {d.create:g} s")
            w0.call("reset", pool=False)
            rounds.add("a", *run_together(workers, "create_txns", d.create,
                                          lambda i: {"worker": i}, probe))
            if not kubernetes:
                progress(f"a2 {of}the same transactions as b's, without the allocator, "
                         f"{d.create:g} s")
                w0.call("reset", pool=False)
                rounds.add("a2", *run_together(workers, "block_txns", d.create,
                                               lambda i: {"worker": i}, probe))
            progress(f"b  {of}auto_assign, {WORKERS} nodes, {d.allocate:g} s")
            w0.call("reset", pool=True)
            rounds.add("b", *run_together(workers, "allocate", d.allocate,
                                          lambda i: {"node": f"node-{i}"}, probe))
            rounds.censuses.append(w0.call("census"))
        b_prof = None
        if args.profile:
            progress(f"b  once more, {WORKERS} nodes, node-0 under cProfile")
            w0.call("reset", pool=True)
            profiled, _ = run_together(workers, "allocate", d.allocate,
                                       lambda i: {"node": f"node-{i}", "profile": i == 0}, probe)
            b_prof = profiled[0]

        progress(f"c  auto_assign, 1 node sequential, {d.sequential:g} s")
        w0.call("reset", pool=True)
        [c], load_c = run_together([w0], "allocate", d.sequential, lambda i: {"node": "node-0"},
                                   probe)

        progress(f"e  {BURST} addresses on a fresh node, sequential then asyncio.gather")
        w0.call("reset", pool=True)
        e_seq, load_e_seq = measured(probe, lambda: w0.call(
            "burst", node="node-burst", concurrent=False, profile=False))
        w0.call("reset", pool=True)
        e_gather, load_e_gather = measured(probe, lambda: w0.call(
            "burst", node="node-burst", concurrent=True, profile=False))
        e_prof = None
        if args.profile:
            progress("e  once more, sequential, under cProfile")
            w0.call("reset", pool=True)
            e_prof = w0.call("burst", node="node-burst", concurrent=False, profile=True)
        f = None
        if kubernetes:
            progress("f  a block claimed by another node -> an agent's view has it")
            w0.call("reset", pool=True)
            f = w0.call("watch_reaction", samples=20 if args.quick else 50)
        w0.call("reset", pool=False)

        report(args, d, where, rounds, c, e_seq, e_gather, e_prof, f, b_prof)
        where_time_goes([
            (f"a  {'creates' if kubernetes else 'create txns'}", *rounds.pooled("a")),
            *([("a2 handle+block txns", *rounds.pooled("a2"))] if rounds.has("a2") else []),
            (f"b  {WORKERS} nodes", *rounds.pooled("b")),
            ("c  1 node sequential", [c], load_c),
            ("e  sequential", [e_seq], load_e_seq),
            ("e  asyncio.gather", [e_gather], load_e_gather),
        ], kubernetes)
        print(f"whole run {time.monotonic() - began:.1f} s")
    finally:
        # A second Ctrl-C or SIGTERM must not cut the cleanup short and orphan a server; every
        # step below is bounded (etcd gets SIGKILL after 10 s).
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        # After an error or Ctrl-C the workers may be mid-phase and deaf to "stop": no waiting.
        deadline = time.monotonic() + (0 if sys.exc_info()[1] else 5)
        for w in workers:
            w.stop(deadline)
        if server is not None:
            server.stop()
        if plane is not None:
            plane.stop()


class Rounds:
    """Every round's results of a phase (a list per round of the workers' answers), the loads
    summed over the rounds, and b's census after each round."""

    def __init__(self) -> None:
        self.results: dict[str, list[list[dict]]] = {}
        self.loads: dict[str, Load] = {}
        self.censuses: list[dict] = []

    def add(self, phase: str, results: list[dict], load: Load) -> None:
        self.results.setdefault(phase, []).append(results)
        held = self.loads.get(phase)
        self.loads[phase] = load if held is None else held + load

    def has(self, phase: str) -> bool:
        return phase in self.results

    def pooled(self, phase: str) -> tuple[list[dict], Load]:
        """Every worker answer of every round, and the load of all rounds."""
        return [r for results in self.results[phase] for r in results], self.loads[phase]

    def rates(self, phase: str, seconds: float) -> list[float]:
        return [sum(r["count"] for r in results) / seconds for results in self.results[phase]]


def ratios(tops: list[float], bottoms: list[float]) -> list[float]:
    """Round by round, top / bottom."""
    return [t / b if b else math.nan for t, b in zip(tops, bottoms, strict=True)]


def by_node(results: list[dict]) -> dict[str, dict]:
    """b's answers of every round, one entry per node: counts summed, latencies pooled."""
    nodes: dict[str, dict] = {}
    for r in results:
        held = nodes.setdefault(r["node"], {"count": 0, "latencies": [], "conflicts": 0,
                                            "errors": 0})
        held["count"] += r["count"]
        held["latencies"] += r["latencies"]
        held["conflicts"] += r["conflicts"]
        held["errors"] += sum(r["errors"].values())
    return nodes


def report(args, d: Durations, where: str, rounds: Rounds, c: dict, e_seq: dict,
           e_gather: dict, e_prof: dict | None, f: dict | None,
           b_prof: dict | None = None) -> None:
    kubernetes = f is not None
    a, _ = rounds.pooled("a")
    b, _ = rounds.pooled("b")
    rates_a, rates_b = rounds.rates("a", d.create), rounds.rates("b", d.allocate)
    rate_a, rate_b = statistics.median(rates_a), statistics.median(rates_b)
    lat_a = [x for r in a for x in r["latencies"]]
    failed_a = sum(r["failed"] for r in a)

    allocs_b = sum(r["count"] for r in b)
    lat_b = [x for r in b for x in r["latencies"]]
    calls_b = sum(len(r["latencies"]) for r in b)
    conflicts_b = sum(r["conflicts"] for r in b)
    per_alloc = conflicts_b / calls_b if calls_b else math.nan
    b_over_a = ratios(rates_b, rates_a)
    ratio = statistics.median(b_over_a)
    p99_b = percentile(lat_b, 99) * 1000
    per_round = f" per round, median of {d.rounds}" if d.rounds > 1 else ""

    rate_c = c["count"] / d.sequential
    a2 = rounds.pooled("a2")[0] if rounds.has("a2") else []
    late = max(r["late"] for r in [*a, *a2, *b, c])

    rows = [
        ("a", f"{'custom resource creates' if kubernetes else 'etcd create txns'}/s, {WORKERS} processes",
         f"{rate_a:,.0f}/s",
         f"p50 {ms(percentile(lat_a, 50))} / p99 {ms(percentile(lat_a, 99))} ms per txn", ""),
        ("b", f"allocations/s, {WORKERS} nodes at once", f"{rate_b:,.1f}/s",
         f"{allocs_b} allocations in {d.rounds * d.allocate:g} s", ""),
        ("", f"b / a{per_round}", f"{ratio:.3f}", f"goal >= {GOAL_RATIO}",
         verdict(ratio >= GOAL_RATIO)),
        *_without_allocator(rounds, d, rates_a, rates_b),
        ("c", f"allocation p50 / p99, {WORKERS} nodes",
         f"{ms(percentile(lat_b, 50))} / {p99_b:.1f} ms", f"goal p99 <= {GOAL_P99_MS:g} ms",
         verdict(p99_b <= GOAL_P99_MS)),
        ("", "allocation p50 / p99, 1 node sequential",
         f"{ms(percentile(c['latencies'], 50))} / {ms(percentile(c['latencies'], 99))} ms",
         f"{rate_c:,.1f} allocations/s", ""),
        ("d", f"conflicts per allocation, {WORKERS} nodes", f"{per_alloc:.3f}",
         f"goal < {GOAL_CONFLICTS} ({conflicts_b} conflicts / {calls_b} calls)",
         verdict(per_alloc < GOAL_CONFLICTS)),
        ("e", f"{BURST} addresses on a fresh node, sequential", f"{e_seq['elapsed']:.2f} s",
         f"p50 {ms(percentile(e_seq['times'], 50))} / p99 {ms(percentile(e_seq['times'], 99))} ms",
         ""),
        ("", f"{BURST} addresses, asyncio.gather, one IPAM", f"{e_gather['elapsed']:.2f} s",
         f"median caller waited {ms(percentile(e_gather['times'], 50))} ms", ""),
    ]
    if f is not None:
        delays = f["delays"]
        rows.append(("f", "block written by another node -> agent's view, p50 / p99 / max",
                     f"{ms(percentile(delays, 50))} / {ms(percentile(delays, 99))} / "
                     f"{ms(max(delays))} ms", f"{len(delays)} blocks", ""))
    mode = "--quick" if args.quick else "full"
    print(f"\npercale IPAM benchmark ({mode}): {code_version()}, {etcd_version()}, {where}, "
          f"{os.cpu_count()} CPUs, pool {POOL_CIDR} in /{BLOCK_SIZE} blocks")
    print("an allocation writes its handle and its block "
          + ("in one transaction (write_together)" if c.get("one_txn") else
             "one after the other (the datastore has no multi-key transaction)"))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    for r in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip())
    if d.rounds > 1:
        columns = {"b / a": b_over_a}
        if rounds.has("a2"):
            rates_a2 = rounds.rates("a2", d.create)
            columns |= {"a2 / a": ratios(rates_a2, rates_a), "b / a2": ratios(rates_b, rates_a2)}
        print(f"\nround by round: {'  '.join(f'{name:>7}' for name in columns)}   a/s    b/s")
        for n in range(d.rounds):
            print(f"  round {n + 1}:     {'  '.join(f'{col[n]:>7.3f}' for col in columns.values())}"
                  f" {rates_a[n]:>6,.0f} {rates_b[n]:>6,.0f}")

    print(f"\nb per node:  {'node':8} {'allocs':>7} {'p50 ms':>7} {'p99 ms':>7} {'max ms':>7} "
          f"{'conflicts':>9} {'blocks':>6} {'errors':>6}")
    blocks_per_node = Counter[str]()
    for census in rounds.censuses:
        blocks_per_node.update(census["blocks_per_node"])
    for node, r in by_node(b).items():
        lat = r["latencies"]
        print(f"             {node:8} {r['count']:>7} {ms(percentile(lat, 50)):>7} "
              f"{ms(percentile(lat, 99)):>7} {ms(max(lat, default=math.nan)):>7} "
              f"{r['conflicts']:>9} {blocks_per_node.get(node, 0):>6} {r['errors']:>6}")

    # Each round starts from an empty datastore: its addresses are checked against its census.
    print()
    for n, (results, census) in enumerate(zip(rounds.results["b"], rounds.censuses,
                                              strict=True), start=1):
        handed_out = [ip for r in results for ip in r["addresses"]]
        distinct = len(set(handed_out)) == len(handed_out)
        consistent = census["allocated"] == len(handed_out) == census["handles"]
        after = f"b, round {n}" if d.rounds > 1 else "b"
        print(f"check after {after}: {len(handed_out)} addresses handed out"
              f" ({'all distinct' if distinct else 'DUPLICATES'}); the datastore holds {census['allocated']}"
              f" allocated in {census['blocks']} blocks and {census['handles']} handles"
              f" ({'consistent' if consistent else 'INCONSISTENT'})")
    errors: Counter[str] = Counter()
    for r in [*b, c]:
        errors.update(r["errors"])
    for e in (e_seq, e_gather):
        errors.update(e["errors"])
    for text, n in errors.most_common():
        print(f"error x{n}: {text}")
    if failed_a:
        print(f"a: {failed_a} create txns found their fresh key taken")
    burst_conflicts = e_seq["conflicts"] + e_gather["conflicts"]
    if burst_conflicts or c["conflicts"]:
        print(f"conflicts with one node alone: c {c['conflicts']}, e {burst_conflicts}")
    if late > 0.05:
        print(f"warning: a worker started {late * 1000:.0f} ms after the common start")
    if e_prof:
        print(f"\ncProfile of phase e, sequential ({e_prof['elapsed']:.2f} s under the profiler):")
        print(e_prof["profile"])
    if b_prof:
        print(f"\ncProfile of node-0 in phase b, {WORKERS} nodes ({b_prof['count']} allocations "
              "and its view's watch events, under the profiler):")
        print(b_prof["profile"])


def _without_allocator(rounds: Rounds, d: Durations, rates_a: list[float],
                       rates_b: list[float]) -> list[tuple[str, str, str, str, str]]:
    """Phase a2's rows: how far the datastore write alone (b's transactions, values as big, a
    view in each process) falls below a, and how much of b it explains."""
    if not rounds.has("a2"):
        return []
    a2, _ = rounds.pooled("a2")
    rates = rounds.rates("a2", d.create)
    lat = [x for r in a2 for x in r["latencies"]]
    failed = sum(r["failed"] for r in a2)
    alone = statistics.median(ratios(rates, rates_a))
    share = statistics.median(ratios(rates_b, rates))
    return [
        ("a2", f"handle+block txns/s, {WORKERS} nodes, no allocator",
         f"{statistics.median(rates):,.0f}/s",
         f"p50 {ms(percentile(lat, 50))} / p99 {ms(percentile(lat, 99))} ms per txn"
         + (f", {failed} FAILED" if failed else ""), ""),
        ("", "a2 / a: the write alone", f"{alone:.3f}",
         "the most b / a could be with a free allocator", ""),
        ("", "b / a2: the allocator's share", f"{share:.3f}", "", ""),
    ]


def where_time_goes(phases: list[tuple[str, list[dict], Load]], kubernetes: bool = False) -> None:
    """Per operation: requests served, CPU spent by the server (etcd; or the apiserver and its
    etcd) and by the worker processes; and how busy the machine was, and how much of that was
    neither (other programs, this parent)."""
    cpus = os.cpu_count() or 1
    reads, writes, cpu = ("reads/op", "writes/op", "server CPU") if kubernetes else ("Range/op", "Txn/op", "etcd CPU")
    print(f"\nwhere the time goes (per {'create' if kubernetes else 'txn'} in a, per allocation elsewhere; {cpus} CPUs):")
    print(f"  {'phase':22} {'ops':>6} {reads:>8} {writes:>7} {cpu:>9} "
          f"{'client CPU':>10} {'wall/op':>8} {'machine busy':>12} {'others':>6}")
    for name, results, load in phases:
        ops = sum(len(r.get("latencies", r.get("times", []))) for r in results)
        if not ops:
            continue
        clients = sum(r["cpu"] for r in results)
        capacity = load.wall * cpus
        others = max(0.0, load.machine_cpu - load.etcd_cpu - clients)
        print(f"  {name:22} {ops:>6} {load.range / ops:>8.2f} {load.txn / ops:>7.2f} "
              f"{ms(load.etcd_cpu / ops):>6} ms {ms(clients / ops):>7} ms "
              f"{ms(load.wall / ops):>5} ms {load.machine_cpu / capacity:>12.0%} "
              f"{others / capacity:>6.0%}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter phases (about 18 s in all)")
    parser.add_argument("--datastore", choices=("etcd", "kubernetes"), default="etcd",
                        help="etcd (default), or a real kube-apiserver with percale's CRDs")
    parser.add_argument("--profile", action="store_true",
                        help="also run phase e sequential, and node-0 of phase b, under cProfile "
                             "and print the top")
    args = parser.parse_args()
    return run_script("bench/ipam.py", lambda: run(args), needs_root=False,
                      cleaned="servers and workers stopped")


if __name__ == "__main__":
    sys.exit(main())
