"""Which pools a node may take addresses from, and in what order it tries their blocks.

Choosing pools is two steps, as Calico's determinePools: `usable` (enabled, the family, the use,
the nodeSelector) for every request; then, for a request that names no pool, `automatic`
(assignmentMode and namespaceSelector). A request that names its pools (the CNI config's
`ipam.ipv4_pools`, a node's tunnel address) takes them from the usable ones as named.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Iterator, Mapping, Sequence

from percale.api import selector
from percale.api import IPPool
from percale.api.fields import network_of

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def usable(
    pools: list[IPPool], version: int, node_labels: Mapping[str, str], use: str = "Workload",
) -> list[IPPool]:
    """Enabled pools of the family that allow `use` and whose nodeSelector selects the node."""
    return [
        p for p in pools
        if not p.spec.disabled
        and p.spec.network.version == version
        and use in p.spec.allowed_uses
        and selector.parse(p.spec.node_selector).matches(node_labels)
    ]


def selects_namespace(pool: IPPool, namespace_labels: Mapping[str, str]) -> bool:
    """Whether the pool's namespaceSelector selects a namespace with these labels; a pool
    without one (or with an empty one, as in Calico) selects every namespace."""
    text = pool.spec.namespace_selector
    return not text or selector.parse(text).matches(namespace_labels)


def automatic(pools: list[IPPool], namespace_labels: Mapping[str, str]) -> list[IPPool]:
    """Of `pools`, those a request that names no pool may take from: assignmentMode Automatic
    (a Manual pool serves only requests that name it, calico.md §1.1), and a namespaceSelector,
    when set, selecting the request's namespace (`namespace_labels`; {} for a request without
    one, as Calico matches it). Borrowing and the node's own blocks keep to the same pools, so
    an automatic request never takes an address of a Manual pool by any route."""
    return [p for p in pools
            if p.spec.assignment_mode == "Automatic" and selects_namespace(p, namespace_labels)]


def fnv32a(text: str) -> int:
    """The 32-bit FNV-1a hash: a stable seed per node name across processes and restarts
    (Python's hash() is randomised per process)."""
    h = 0x811C9DC5
    for byte in text.encode():
        h = ((h ^ byte) * 0x01000193) & 0xFFFFFFFF
    return h


def block_count(pool: IPPool) -> int:
    return 2 ** (pool.spec.block_size - pool.spec.network.prefixlen)


def seeded_position(pool: IPPool, node: str, block: Network) -> int:
    """Where `block` comes in `node`'s walk of the pool (see candidate_blocks)."""
    size = 2 ** (pool.spec.network.max_prefixlen - pool.spec.block_size)
    index = (int(block.network_address) - int(pool.spec.network.network_address)) // size
    return (index - fnv32a(node) % block_count(pool)) % block_count(pool)


def candidate_blocks(
    pool: IPPool, node: str, skip: Sequence[tuple[int, int]] = (),
) -> Iterator[Network]:
    """Every block of the pool, starting at an index seeded by the node's name and wrapping round,
    less the runs of block indexes in `skip` ((first, last), in order: blocks reserved whole),
    each stepped over in one stride however long it is.

    One node always probes in the same order, so its blocks sit next to each other; different
    nodes start in different places, so they rarely race for the same block.
    """
    count = block_count(pool)
    start = fnv32a(node) % count
    base = int(pool.spec.network.network_address)
    step = 2 ** (pool.spec.network.max_prefixlen - pool.spec.block_size)
    cls = type(pool.spec.network)
    for first, last in ((start, count - 1), (0, start - 1)):
        index = first
        for low, high in skip:
            if high < index or low > last:
                continue
            while index < low:
                yield cls((base + index * step, pool.spec.block_size))
                index += 1
            index = max(index, high + 1)
        while index <= last:
            yield cls((base + index * step, pool.spec.block_size))
            index += 1


class OtherSizeBlocks:
    """The existing blocks of a pool's range whose size is not the pool's blockSize.

    blockSize cannot change, but a pool can be deleted and created again with another one while
    its old blocks still hold addresses (Calico issue #10778). A new block cut at the new size
    over an old block would hand out addresses the old one still holds, so the walk steps round
    every block that overlaps one of these.
    """

    def __init__(self, existing: Iterable[str], pool: IPPool):
        """`existing`: the CIDRs of every block."""
        size, version = pool.spec.block_size, pool.spec.network.version
        # Larger old blocks, by prefix length; smaller ones, as the new-size block that holds each.
        self._larger: dict[int, set[Network]] = {}
        self._inside: set[Network] = set()
        same_size = f"/{size}"
        for cidr in existing:
            if cidr.endswith(same_size):
                continue  # the common case, told without parsing
            net = network_of(cidr)
            if net.version != version or net.prefixlen == size:
                continue
            if net.prefixlen < size:
                self._larger.setdefault(net.prefixlen, set()).add(net)
            else:
                self._inside.add(net.supernet(new_prefix=size))

    def overlap(self, block: Network) -> bool:
        """Whether a new block would overlap an old block of another size."""
        return block in self._inside or any(
            block.supernet(new_prefix=prefixlen) in nets for prefixlen, nets in self._larger.items())


def block_of(pool: IPPool, address: str) -> Network:
    """The block of `pool` that holds `address`."""
    return ipaddress.ip_network(f"{address}/{pool.spec.block_size}", strict=False)


def pool_of(pools: list[IPPool], address: str) -> IPPool | None:
    ip = ipaddress.ip_address(address)
    return next((p for p in pools if ip in p.spec.network), None)
