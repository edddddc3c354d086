"""percale-controllers as it runs in a cluster, against the session's etcd: a leaked address is
released once its grace period has passed, a node's surplus empty block goes back after two
rounds, its last block stays; bad settings are refused naming the option."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from percale.ipam.allocator import IPAM
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
        ipam = IPAM(store)
        # node-a: 8 addresses fill its first block, the 9th claims a second; no pod uses any
        # of them (no WorkloadEndpoint), so all are leaks once the grace period is over.
        await ipam.auto_assign("node-a", handle_id="k8s-pod-network.leaked", num4=9)

    with_store(etcd.endpoint, setup)
    done = run(etcd, "--rounds", "3", "--gc-interval", "0s", "--leak-grace-period", "0s")
    assert done.returncode == 0, done.stderr

    async def after(store):
        await assert_consistent(store)
        blocks = [kv.value.spec for kv in (await store.list("IPAMBlock")).items]
        return blocks, await IPAM(store).ips_by_handle("k8s-pod-network.leaked")

    blocks, held = with_store(etcd.endpoint, after)
    assert held == []
    # Round one released the leaks; rounds two and three saw both blocks empty, and one went
    # back: never a node's last block.
    assert [b.affinity for b in blocks] == ["host:node-a"]


def test_bad_durations_name_the_option(etcd):
    done = run(etcd, "--gc-interval", "soon")
    assert done.returncode == 2
    assert "--gc-interval" in done.stderr and "'soon' is not a duration" in done.stderr
