"""Helpers for IPAM tests: pools in a datastore, and a full consistency check of the IPAM state."""

from __future__ import annotations

import ipaddress
from collections import Counter

from percale.datastore import Datastore
from percale.ipam import blocks
from percale.api import parse


async def add_pool(store: Datastore, name: str, cidr: str, **spec) -> None:
    await store.create(parse({"apiVersion": "percale.io/v1", "kind": "IPPool",
                              "metadata": {"name": name}, "spec": {"cidr": cidr, **spec}}))


async def allocations(store: Datastore) -> dict[str, str]:
    """Every allocated address and its handle, read from the blocks."""
    found: dict[str, str] = {}
    for kv in (await store.list("IPAMBlock")).items:
        spec = kv.value.spec
        for o, slot in enumerate(spec.allocations):
            if slot is not None:
                ip = str(blocks.address(spec, o))
                assert ip not in found, f"{ip} is in two blocks"
                found[ip] = spec.attributes[slot].handle_id
    return found


async def assert_consistent(store: Datastore) -> dict[str, str]:
    """The invariants IPAM promises; returns the allocations."""
    block_list = [kv.value.spec for kv in (await store.list("IPAMBlock")).items]
    nets = [b.network for b in block_list]
    for i, a in enumerate(nets):
        for b in nets[i + 1:]:
            assert not (a.version == b.version and a.overlaps(b)), f"blocks {a} and {b} overlap"
    held = await allocations(store)
    # Every handle object agrees with the blocks, and every handle in a block has its object.
    per_handle: Counter[tuple[str, str]] = Counter()
    for spec in block_list:
        for handle, n in blocks.handle_counts(spec).items():
            per_handle[(handle, spec.cidr)] += n
    stored = {kv.value.spec.handle_id: kv.value.spec.block for kv in (await store.list("IPAMHandle")).items}
    expected: dict[str, dict[str, int]] = {}
    for (handle, cidr), n in per_handle.items():
        expected.setdefault(handle, {})[cidr] = n
    assert stored == expected
    # Confirmed affinities point at blocks that name the same node.
    by_cidr = {b.cidr: b for b in block_list}
    for kv in (await store.list("BlockAffinity")).items:
        spec = kv.value.spec
        if spec.state == "confirmed":
            assert spec.cidr in by_cidr and by_cidr[spec.cidr].affinity == f"host:{spec.node}"
    return held


def in_pool(address: str, cidr: str) -> bool:
    return ipaddress.ip_address(address) in ipaddress.ip_network(cidr)
