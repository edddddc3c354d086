"""IPReservations as IPAM reads them: the addresses automatic assignment passes over.

As Calico's IPReservation: auto-assign never hands out a reserved address; an address given
explicitly (`IPAM.assign_ip`, the ipAddrs annotation) is not held back, and what was allocated
before the reservation stays. A block wholly reserved is neither claimed nor taken from; in a
block partly reserved the reserved ordinals are passed over and keep their place in the free
list, so they come back in order when the reservation goes.

The reservations are kept as merged ranges of addresses, so every question is answered in
arithmetic over the ranges, never address by address or block by block: a reservation may
cover most of an IPv6 /64 pool.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Iterable

from percale.api.fields import cidr_or_ip_network

log = logging.getLogger(__name__)

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

_NONE: frozenset[int] = frozenset()


class Reservations:
    def __init__(self, cidrs: Iterable[str] = ()):
        spans: dict[int, list[tuple[int, int]]] = {4: [], 6: []}
        for text in cidrs:
            try:
                net = cidr_or_ip_network(text)
            except ValueError as err:
                log.warning("IPAM leaves out a reserved CIDR it cannot read: %s", err)
                continue
            spans[net.version].append((int(net.network_address), int(net.broadcast_address)))
        # Per family, sorted and merged: adjacent or overlapping reservations become one range.
        self._ranges: dict[int, list[tuple[int, int]]] = {}
        for version, found in spans.items():
            merged: list[tuple[int, int]] = []
            for low, high in sorted(found):
                if merged and low <= merged[-1][1] + 1:
                    merged[-1] = (merged[-1][0], max(merged[-1][1], high))
                else:
                    merged.append((low, high))
            self._ranges[version] = merged

    def __bool__(self) -> bool:
        return any(self._ranges.values())

    def _within(self, network: Network) -> list[tuple[int, int]]:
        """The reserved ranges inside `network`, clipped to it."""
        start, end = int(network.network_address), int(network.broadcast_address)
        return [(max(low, start), min(high, end)) for low, high in self._ranges[network.version]
                if low <= end and high >= start]

    def count(self, network: Network) -> int:
        """How many addresses of `network` are reserved."""
        return sum(high - low + 1 for low, high in self._within(network))

    def ordinals(self, block: Network) -> frozenset[int]:
        """The ordinals of `block` that are reserved; the same empty set when none is (the case
        of nearly every allocation, answered at once)."""
        if not self:
            return _NONE
        start = int(block.network_address)
        found = {o for low, high in self._within(block) for o in range(low - start, high - start + 1)}
        return frozenset(found) if found else _NONE

    def covered_blocks(self, pool: Network, block_size: int) -> list[tuple[int, int]]:
        """The indexes (first, last) of the runs of `pool`'s blocks that are reserved whole, in
        order: what a walk of the pool's blocks steps over in one stride."""
        start = int(pool.network_address)
        step = 2 ** (pool.max_prefixlen - block_size)
        runs = []
        for low, high in self._within(pool):
            first, last = -(-(low - start) // step), (high - start + 1) // step - 1
            if first <= last:
                runs.append((first, last))
        return runs

