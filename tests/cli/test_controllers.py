"""percale-controllers as it runs in a cluster, against the session's etcd: a leaked address is
released once its grace period has passed, a node's surplus empty block goes back after two
rounds, its last block stays; a grace period of 0 collects no leaks (Calico's meaning); bad
settings are refused naming the option; a round that fails is logged and the next one runs."""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from percale.api.listen import listen_address
from percale.controllers import main as controllers
from percale.datastore.options import datastore_settings
from percale.ipam.allocator import IPAM
from percale.ipam.errors import TooManyConflicts
from percale.ipam.gc import GarbageCollector
from tests.helpers.etcd_server import free_port
from tests.helpers.ipam_pods import node
from tests.helpers.ipam_world import add_pool, assert_consistent
from tests.helpers.store import with_store

pytestmark = pytest.mark.cli

CONTROLLERS = str(Path(sys.executable).parent / "percale-controllers")


def run(etcd, *args: str) -> subprocess.CompletedProcess:
    done = subprocess.run([CONTROLLERS, "--etcd-endpoints", etcd.endpoint, *args],
                          capture_output=True, text=True, timeout=60)
    assert "Traceback" not in done.stderr, done.stderr
    return done


def test_gc_releases_leaks_and_surplus_empty_blocks(etcd):
    async def setup(store):
        await add_pool(store, "pods", "10.250.0.0/24", blockSize=29)
        # A registered node: a node no round ever saw may be gone, and loses its last block too.
        await store.create(node("node-a"))
        ipam = IPAM(store)
        # node-a: 8 addresses fill its first block, the 9th claims a second; no pod uses any
        # of them (no WorkloadEndpoint), so all are leaks once the grace period is over.
        await ipam.auto_assign("node-a", handle_id="k8s-pod-network.leaked", num4=9)

    with_store(etcd.endpoint, setup)
    done = run(etcd, "--rounds", "4", "--gc-interval", "0.2s", "--leak-grace-period", "0.1s")
    assert done.returncode == 0, done.stderr

    async def after(store):
        await assert_consistent(store)
        blocks = [kv.value.spec for kv in (await store.list("IPAMBlock")).items]
        return blocks, await IPAM(store).ips_by_handle("k8s-pod-network.leaked")

    blocks, held = with_store(etcd.endpoint, after)
    assert held == []
    # Round one saw the leaks, round two (past the grace period) released them; rounds three
    # and four saw both blocks empty, and one went back: never the last block of a node that
    # exists.
    assert [b.affinity for b in blocks] == ["host:node-a"]


def test_bad_durations_name_the_option(etcd):
    done = run(etcd, "--gc-interval", "soon")
    assert done.returncode == 2
    assert "--gc-interval" in done.stderr and "'soon' is not a duration" in done.stderr


def test_a_grace_period_of_zero_collects_no_leaks(etcd):
    async def setup(store):
        await add_pool(store, "pods", "10.251.0.0/24", blockSize=29)
        # A node that exists: one without a Node is gone, and its leaks go at any grace period.
        await store.create(node("node-z"))
        await IPAM(store).auto_assign("node-z", handle_id="k8s-pod-network.kept", num4=2)

    with_store(etcd.endpoint, setup)
    done = run(etcd, "--rounds", "3", "--gc-interval", "0.1s", "--leak-grace-period", "0")
    assert done.returncode == 0, done.stderr

    async def after(store):
        return await IPAM(store).ips_by_handle("k8s-pod-network.kept")

    assert len(with_store(etcd.endpoint, after)) == 2


@pytest.mark.parametrize("option, value, reason", [
    ("--gc-interval", "0", "must be longer than 0"),
    ("--gc-interval", "nan", "is not a duration"),
    ("--leak-grace-period", "1e20", "is not a duration"),
    ("--leak-grace-period", "inf", "is not a duration"),
    ("--leak-grace-period", "\uff11\uff12s", "is not a duration"),
])
def test_durations_out_of_range_name_the_option(etcd, option, value, reason):
    done = run(etcd, option, value)
    assert done.returncode == 2
    assert option in done.stderr and reason in done.stderr


@pytest.fixture
def settings(etcd):
    """For percale-controllers' loop run in this process, on the session's etcd. The loop takes
    SIGTERM and SIGINT; they are given back after the test, so that Ctrl-C still stops pytest."""
    yield datastore_settings(None, etcd.endpoint, None, None, None)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


async def test_a_round_that_raises_is_logged_and_the_next_round_runs(settings, monkeypatch, caplog):
    """TooManyConflicts is an IPAMError, not a DatastoreError: it ended the process with a
    traceback, and with it every grace timer the collector kept. So did any bug in a round."""
    real_run_once = GarbageCollector.run_once
    failures = iter([TooManyConflicts(), RuntimeError("a bug")])
    rounds = []

    async def run_once(self, now):
        rounds.append(self)
        failure = next(failures, None)
        if failure is not None:
            raise failure
        return await real_run_once(self, now)

    monkeypatch.setattr(GarbageCollector, "run_once", run_once)
    caplog.set_level(logging.DEBUG, logger="percale.controllers")
    await controllers.run(settings, interval=0.01, grace=900, rounds=3)
    assert len(rounds) == 3 and len(set(map(id, rounds))) == 1  # one collector throughout
    failed = [r for r in caplog.records if "round failed" in r.getMessage()]
    assert [r.levelno for r in failed] == [logging.WARNING, logging.ERROR]
    assert "Max retries hit" in failed[0].getMessage()
    assert failed[1].exc_info is not None  # the bug's traceback, for its report
    assert any(r.levelno == logging.DEBUG and r.exc_info for r in caplog.records)


async def test_cancelling_the_loop_still_stops_it(settings, monkeypatch):
    started = asyncio.Event()

    async def run_once(self, now):
        started.set()
        await asyncio.sleep(3600)

    monkeypatch.setattr(GarbageCollector, "run_once", run_once)
    task = asyncio.create_task(controllers.run(settings, interval=0.01, grace=900, rounds=None))
    await asyncio.wait_for(started.wait(), 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 10)


async def scrape(port: int) -> str:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    await writer.drain()
    data = (await reader.read()).decode()
    writer.close()
    return data.partition("\r\n\r\n")[2]


def metric(text: str, name: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


async def test_metrics_count_candidates_and_what_was_released(etcd, settings):
    """ipam/gc.py said its rounds were exported as metrics, and nothing served them: with
    --metrics-listen, /metrics has Calico kube-controllers' GC metrics under percale's prefix."""
    async def setup(store):
        await add_pool(store, "pods", "10.251.0.0/24", blockSize=29)
        await store.create(node("node-m"))
        await IPAM(store).auto_assign("node-m", handle_id="k8s-pod-network.metered", num4=9)

    await asyncio.to_thread(with_store, etcd.endpoint, setup)
    port = free_port()
    task = asyncio.create_task(controllers.run(settings, interval=0.1, grace=0.3, rounds=None,
                                               metrics_listen=("127.0.0.1", port)))
    try:
        candidates = released = None
        async with asyncio.timeout(20):
            while not released:
                await asyncio.sleep(0.05)
                try:
                    text = await scrape(port)
                except ConnectionRefusedError:
                    continue  # not listening yet
                candidates = candidates or metric(text, "percale_ipam_allocations_gc_candidates")
                released = metric(text, "percale_ipam_allocations_gc_reclamations_total")
        # Seen as candidates first (their grace period), then released, all nine.
        assert candidates == 9.0 and released == 9.0
        assert metric(text, "percale_ipam_allocations_gc_held_back") == 0.0
        async with asyncio.timeout(20):
            while not metric(text, "percale_ipam_blocks_gc_reclamations_total"):
                await asyncio.sleep(0.05)
                text = await scrape(port)
        assert metric(text, "percale_ipam_blocks_gc_reclamations_total") == 1.0
        assert metric(text, "percale_ipam_allocations_gc_candidates") == 0.0
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    with pytest.raises(ConnectionRefusedError):  # stopped with the loop
        await scrape(port)


def test_bad_or_busy_metrics_listen_names_the_option(etcd):
    done = run(etcd, "--metrics-listen", "::1:9094")
    assert done.returncode == 2 and "--metrics-listen" in done.stderr
    assert "brackets" in done.stderr
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = run(etcd, "--metrics-listen", f"127.0.0.1:{port}", "--rounds", "1")
    assert done.returncode == 1
    assert (f"--metrics-listen (PERCALE_METRICS_LISTEN) '127.0.0.1:{port}': cannot listen there"
            in done.stderr), done.stderr


@pytest.mark.parametrize("listen, expected", [
    (":9094", ("127.0.0.1", 9094)),
    ("0.0.0.0:9094", ("0.0.0.0", 9094)),
    ("[::]:9094", ("::", 9094)),
    ("controllers.example:9094", ("controllers.example", 9094)),
])
def test_metrics_listen_is_host_and_port_as_percale_nodes_health_listen(listen, expected):
    assert listen_address(listen) == expected
