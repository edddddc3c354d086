"""One node's allocation loop, run in its own process by the IPAM concurrency test.

It allocates and releases at random, and logs for every address the interval it surely held it:
from the moment auto_assign returned until the moment it asked to release. Two handles whose
intervals for one address overlap would mean the address was given out twice.
"""

from __future__ import annotations

import asyncio
import random
import time

from percale.datastore import Key
from tests.helpers.store import open_store
from percale.ipam.allocator import IPAM
from percale.ipam.errors import IPAMError
from percale.api.ipam import block_name


async def _work(endpoint: str, node: str, iterations: int, seed: int, release_all: bool,
                inherited: dict[str, list[str]]):
    rng = random.Random(seed)
    store = open_store(endpoint)
    ipam = IPAM(store)
    # Handles this node held in an earlier run: released first, while the others are busy.
    held: dict[str, tuple[list[str], float]] = {h: (a, 0.0) for h, a in inherited.items()}
    for handle in sorted(inherited):
        assert sorted(await ipam.release_by_handle(handle)) == sorted(inherited[handle])
        held.pop(handle)
    intervals: list[tuple[str, str, float, float]] = []
    exhausted = borrowed = 0
    try:
        for i in range(iterations):
            if held and (rng.random() < 0.45 or len(held) > 8):
                handle = rng.choice(sorted(held))
                addresses, since = held.pop(handle)
                released_at = time.monotonic()
                freed = await ipam.release_by_handle(handle)
                assert sorted(freed) == sorted(addresses), (freed, addresses)
                intervals += [(a, handle, since, released_at) for a in addresses]
                continue
            handle = f"{node}-{i}"
            try:
                got = await ipam.auto_assign(node, handle_id=handle, num4=rng.randint(1, 3))
            except IPAMError:
                exhausted += 1
                continue
            addresses = [str(x.ip) for x in got.ipv4]
            held[handle] = (addresses, time.monotonic())
            for iface in got.ipv4:
                block = await store.get(Key("IPAMBlock", block_name(str(iface.network))))
                if block.value.spec.affinity != f"host:{node}":
                    borrowed += 1
        if release_all:
            for handle, (addresses, since) in sorted(held.items()):
                released_at = time.monotonic()
                assert sorted(await ipam.release_by_handle(handle)) == sorted(addresses)
                intervals += [(a, handle, since, released_at) for a in addresses]
            held = {}
        return {
            "held": {h: a for h, (a, _) in held.items()},
            "intervals": intervals + [(a, h, s, float("inf")) for h, (addrs, s) in held.items() for a in addrs],
            "exhausted": exhausted, "borrowed": borrowed, "conflicts": ipam.conflicts,
        }
    finally:
        await store.close()


def run(endpoint: str, node: str, iterations: int, seed: int, start_at: float,
        release_all: bool = False, inherited: dict[str, list[str]] | None = None):
    time.sleep(max(0.0, start_at - time.time()))
    return asyncio.run(_work(endpoint, node, iterations, seed, release_all, inherited or {}))
