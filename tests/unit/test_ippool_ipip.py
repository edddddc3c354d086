"""ipipMode: percale has no IPIP dataplane. A pool written now that asks for IPIP is refused,
naming the field and pointing at vxlanMode, as the operator refuses an Installation pool with
IPIP; one already stored (by Calico, or an older percale) stays readable, and percale-node says
once that it routes it unencapsulated."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from percale.api import IPPool, InvalidResource, parse
from percale.api.consistency import check_batch
from percale.datastore import MemoryDatastore
from percale.datastore.cache import Cache
from percale.node.pools import PoolFollower

pytestmark = pytest.mark.unit


def pool(**spec: Any) -> dict[str, Any]:
    return {"apiVersion": "percale.io/v1", "kind": "IPPool", "metadata": {"name": "pods"},
            "spec": {"cidr": "10.244.0.0/16", **spec}}


def written(document: dict[str, Any]) -> dict[str, str]:
    """The problems percalectl's preflight finds writing `document` into an empty datastore."""
    found = check_batch([parse(document)], {}, [], ["pool.yaml"])
    return {p.field: p.reason for p in found.get(0, [])}


@pytest.mark.parametrize("mode", ["Always", "CrossSubnet"])
def test_an_ipip_pool_is_refused_naming_the_field_and_what_to_use(mode):
    found = written(pool(ipipMode=mode, natOutgoing=True))
    assert list(found) == ["spec.ipipMode"], found
    assert "no IPIP dataplane" in found["spec.ipipMode"]
    assert "vxlanMode" in found["spec.ipipMode"]


def test_a_pool_without_ipip_is_written():
    assert written(pool(ipipMode="Never", vxlanMode="Always")) == {}
    assert written(pool()) == {}


def test_a_stored_ipip_pool_stays_readable():
    # What Calico or an older percale stored must not become unreadable: the view would leave
    # it out, and its addresses would stop being served and masqueraded.
    assert parse(pool(ipipMode="CrossSubnet")).spec.ipip_mode == "CrossSubnet"


def test_ipip_with_vxlan_says_to_drop_ipip():
    with pytest.raises(InvalidResource) as caught:
        parse(pool(ipipMode="Always", vxlanMode="CrossSubnet"))
    found = {p.field: p.reason for p in caught.value.problems}
    assert "cannot both be enabled" in found["spec.vxlanMode"], found
    assert "set ipipMode to Never" in found["spec.vxlanMode"]


async def test_the_node_says_once_that_a_stored_ipip_pool_is_routed_unencapsulated(tmp_path, caplog):
    memory = MemoryDatastore()
    stored: IPPool = parse(pool(ipipMode="Always"))  # type: ignore[assignment]
    await memory.create(stored)
    cache = Cache(memory, ["IPPool"])
    follower = PoolFollower(cache, 1500, str(tmp_path / "mtu"), None, ipv6_forwarding=None)
    tasks = [asyncio.create_task(cache.run()), asyncio.create_task(follower.run())]
    try:
        with caplog.at_level(logging.WARNING, logger="percale.node.pools"):
            for _ in range(300):
                if (tmp_path / "mtu").exists():
                    break
                await asyncio.sleep(0.01)
            follower._due.set()  # a second round: not told again
            await asyncio.sleep(0.05)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    told = [r.getMessage() for r in caplog.records if "no IPIP dataplane" in r.getMessage()]
    assert len(told) == 1 and "IPPool pods asks for ipipMode Always" in told[0], told
