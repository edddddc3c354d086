"""CNI ADDs killed with -9 at random moments leave leaks; check finds exactly them, release cleans
them up, and the store ends consistent.

Four processes, one per node, each loop like the CNI plugin (allocate, dataplane, endpoint;
tests/helpers/cni_crash_worker.py). Each round every one of them is killed at its own random
moment and started again. The truth is counted straight from the store (ipam_pods), not by the
check's code.
"""

from __future__ import annotations

import json
import random
import selectors
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.cli.conftest import CLI
from tests.helpers.ipam_pods import NAMESPACE, allocated_and_used, overstating_handles
from tests.helpers.ipam_world import add_pool
from tests.helpers.store import open_store

pytestmark = pytest.mark.cli

ROOT = Path(__file__).resolve().parents[2]
NODES = [f"node{i}" for i in range(1, 5)]
MIN_ROUNDS, MAX_ROUNDS = 3, 6
KILL_WINDOW = (0.1, 0.8)  # seconds after a worker is ready


def start(endpoint: str, node: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.helpers.cni_crash_worker", endpoint, node],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def wait_ready(workers: list[subprocess.Popen], timeout: float = 20) -> None:
    selector = selectors.DefaultSelector()
    for w in workers:
        selector.register(w.stdout, selectors.EVENT_READ, w)
    pending = set(workers)
    deadline = time.monotonic() + timeout
    while pending:
        events = selector.select(max(0.0, deadline - time.monotonic()))
        assert events, "workers did not start in time"
        for key, _ in events:
            line = key.fileobj.readline()
            worker = key.data
            assert line == "ready\n", (line, worker.stderr.read() if worker.poll() is not None else "")
            selector.unregister(key.fileobj)
            pending.discard(worker)
    selector.close()


def kill_at_random_moments(workers: list[subprocess.Popen], rng: random.Random) -> None:
    began = time.monotonic()
    for delay, worker in sorted((rng.uniform(*KILL_WINDOW), w) for w in workers):
        time.sleep(max(0.0, began + delay - time.monotonic()))
        assert worker.poll() is None, worker.stderr.read()  # died by itself: a bug, not a kill
        worker.kill()  # SIGKILL: no finally blocks, no clean-up
    for worker in workers:
        worker.wait(10)
        worker.stdout.close()
        worker.stderr.close()


async def truth(endpoint: str) -> tuple[dict, set[str], set[str]]:
    store = open_store(endpoint)
    try:
        allocated, used = await allocated_and_used(store)
        return allocated, used, await overstating_handles(store)
    finally:
        await store.close()


@pytest.fixture(params=["etcd", "kubernetes"])
def cli(request) -> CLI:
    """percalectl on each real backend; on Kubernetes the nodes and the pods' namespace exist, as
    their kubelets and the user made them."""
    if request.param == "etcd":
        return CLI(request.getfixturevalue("etcd").endpoint)
    kube = request.getfixturevalue("kube")
    for name in NODES:
        kube.node(name)
    if kube.kubectl("get", "namespace", NAMESPACE, check=False).returncode != 0:
        kube.kubectl("create", "namespace", NAMESPACE)
    return CLI(kube.admin)


async def test_kill_9_leaks_are_found_and_cleaned_up(cli, tmp_path):
    store = open_store(cli.endpoint)
    # /28 blocks: the nodes claim blocks often, so kills land in claims too.
    await add_pool(store, "pool1", "10.50.0.0/16", blockSize=28)
    await store.close()

    rng = random.Random()
    seed = rng.randrange(2**32)
    rng.seed(seed)
    rounds = 0
    while True:
        rounds += 1
        workers = [start(cli.endpoint, n) for n in NODES]
        wait_ready(workers)
        kill_at_random_moments(workers, rng)
        allocated, used, bad_handles = await truth(cli.endpoint)
        if rounds >= MAX_ROUNDS or (rounds >= MIN_ROUNDS and set(allocated) - used):
            break
    leaked = set(allocated) - used
    assert leaked, f"no kill landed between allocation and endpoint in {rounds} rounds (seed {seed})"
    assert used <= set(allocated), "an endpoint uses an address IPAM does not hold"

    report_file = tmp_path / "report.json"
    checked = cli("ipam", "check", "-o", str(report_file))
    assert checked.code == 0, checked.err
    problems = len(leaked) + len(bad_handles)
    assert f"Found {len(leaked)} IPs that are allocated in IPAM but not actually in use.\n" in checked.out
    assert "Found 0 in-use IPs that are in active IP pools but have no corresponding IPAM allocation.\n" in checked.out
    assert checked.out.endswith(f"Check complete; found {problems} problems.\n"), (seed, checked.out)
    report = json.loads(report_file.read_text())
    reported = {ip: allocs[0] for ip, allocs in report["allocations"].items()}
    assert {ip for ip, a in reported.items() if not a["inUse"]} == leaked
    assert {ip: (a["handle"], a["sequenceNumber"]) for ip, a in reported.items()} == allocated
    assert {h["ID"] for h in report["leakedHandles"] + report["overstatedHandles"]} == bad_handles

    released = cli("ipam", "release", "--from-report", str(report_file))
    assert released.code == 0, released.err
    assert released.out.startswith(f"Releasing {len(leaked)} old IPs...\n"
                                   f"Released {len(leaked)} IPs successfully\n"), released.out
    if bad_handles:
        assert f"Released {len(bad_handles)} handles; 0 skipped; 0 errors.\n" in released.out \
            or "Corrected the counts" in released.out, released.out

    assert cli("ipam", "check").out.endswith("Check complete; found 0 problems.\n")
    allocated, used, bad_handles = await truth(cli.endpoint)
    assert set(allocated) == used, "every remaining allocation has its endpoint"
    assert bad_handles == set()
