"""What the node's IPPool follower asks natOutgoing for, against a real view (Cache over the memory
datastore) and a NAT that records its calls: a disabled pool's pods keep being masqueraded, a
LoadBalancer pool is an outside destination as felix has it, and an MTU file that cannot be
written is logged without holding natOutgoing back."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import pytest

from percale.api import IPPool, parse
from percale.datastore import MemoryDatastore
from percale.datastore.cache import Cache
from percale.node import pools as node_pools
from percale.node.pools import PoolFollower

pytestmark = pytest.mark.unit


class RecordingNAT:
    """OutgoingNAT's interface, writing nothing: each sync as (masqueraded, all pools), sorted."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[str], list[str]]] = []
        self.forwarded = 0  # IPv6 forwarding counted, not written: this is the machine's namespace

    def forward(self) -> None:
        self.forwarded += 1

    def sync(self, masquerade, pools, tunnels=()) -> bool:
        self.calls.append((sorted(masquerade), sorted(pools)))
        self.tunnels = list(tunnels)
        return True


def ippool(name: str, cidr: str, **spec: Any) -> IPPool:
    return parse({"apiVersion": "percale.io/v1", "kind": "IPPool", "metadata": {"name": name},
                  "spec": {"cidr": cidr, **spec}})  # type: ignore[return-value]


async def following(pools: list[IPPool], mtu_file: Path):
    """A follower over a view holding `pools`, its NAT, and the tasks to cancel."""
    memory = MemoryDatastore()
    for pool in pools:
        await memory.create(pool)
    cache = Cache(memory, ["IPPool"])
    nat = RecordingNAT()
    follower = PoolFollower(cache, 1500, str(mtu_file), nat,  # type: ignore[arg-type]
                            ipv6_forwarding=nat.forward)
    tasks = [asyncio.create_task(cache.run()), asyncio.create_task(follower.run())]
    return nat, tasks


async def until(condition, seconds: float = 3.0) -> None:
    for _ in range(int(seconds / 0.01)):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("not within the time allowed")


async def test_a_disabled_pool_keeps_masquerading_the_pods_that_hold_its_addresses(tmp_path):
    """Disabling a pool, the first step of moving pods to a new one, stops new allocations only:
    its pods still reach the outside with the node's address until they move."""
    nat, tasks = await following([
        ippool("old-pods", "10.244.0.0/16", natOutgoing=True, disabled=True),
        ippool("new-pods", "10.245.0.0/16", natOutgoing=True),
        ippool("routed", "10.246.0.0/16", disabled=True),
    ], tmp_path / "mtu")
    try:
        await until(lambda: nat.calls)
        masquerade, every = nat.calls[-1]
        assert masquerade == ["10.244.0.0/16", "10.245.0.0/16"]
        assert every == ["10.244.0.0/16", "10.245.0.0/16", "10.246.0.0/16"]
    finally:
        for task in tasks:
            task.cancel()


async def test_a_loadbalancer_pool_is_not_among_the_pools_left_unmasqueraded(tmp_path):
    """felix's all-pools set leaves LoadBalancer pools out (dataplane.md §E): their addresses are
    services' outside addresses, and a pod reaching one leaves with the node's address."""
    nat, tasks = await following([
        ippool("pods", "10.244.0.0/16", natOutgoing=True),
        ippool("services", "192.0.2.0/24", allowedUses=["LoadBalancer"]),
    ], tmp_path / "mtu")
    try:
        await until(lambda: nat.calls)
        assert nat.calls[-1] == (["10.244.0.0/16"], ["10.244.0.0/16"])
    finally:
        for task in tasks:
            task.cancel()


async def test_an_unwritable_mtu_file_is_logged_and_natoutgoing_is_programmed(tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(node_pools, "RETRY_SECONDS", 0.02)
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    mtu_file = blocker / "mtu"
    caplog.set_level(logging.INFO, logger="percale.node.pools")
    nat, tasks = await following([ippool("pods", "10.244.0.0/16", natOutgoing=True,
                                         vxlanMode="Always")], mtu_file)
    try:
        await until(lambda: nat.calls)
        assert nat.calls[-1] == (["10.244.0.0/16"], ["10.244.0.0/16"])
        await asyncio.sleep(0.2)  # several retries, each failing the same way
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1, warnings  # logged once, not at every retry
        assert str(mtu_file) in warnings[0]
        assert "File exists" in warnings[0] or "Not a directory" in warnings[0]

        # Once the path can be written, the file is written without a pool changing.
        blocker.unlink()
        await until(mtu_file.exists)
        assert mtu_file.read_text() == "1450\n"
    finally:
        for task in tasks:
            task.cancel()


async def test_the_families_with_vxlan_pools_get_the_tunnel_source_fix(tmp_path):
    nat, tasks = await following([ippool("v4", "10.244.0.0/16", vxlanMode="CrossSubnet"),
                                  ippool("v6", "fd00:10::/48"),
                                  ippool("old", "10.9.0.0/16", vxlanMode="Always", disabled=True)],
                                 tmp_path / "mtu")
    try:
        await until(lambda: nat.calls)
        assert nat.tunnels == [4]
        assert nat.forwarded  # an IPv6 pool: its pods are forwarded
    finally:
        for task in tasks:
            task.cancel()
