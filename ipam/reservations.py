"""IPReservations as IPAM reads them: the addresses automatic assignment passes over.

As Calico's IPReservation: auto-assign never hands out a reserved address; an address given
explicitly (`IPAM.assign_ip`, the ipAddrs annotation) is not held back, and what was allocated
before the reservation stays. A block wholly reserved is neither claimed nor taken from; in a
block partly reserved the reserved ordinals are passed over and keep their place in the free
list, so they come back in order when the reservation goes.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from percale.api.fields import network_of

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

_NONE: frozenset[int] = frozenset()


class Reservations:
    def __init__(self, cidrs: Iterable[str] = ()):
        # A bare address is its own one-address network.
        self._nets: list[Network] = [network_of(c if "/" in c else str(ipaddress.ip_network(c)))
                                     for c in cidrs]

    def __bool__(self) -> bool:
        return bool(self._nets)

    def count(self, network: Network) -> int:
        """How many addresses of `network` are reserved, however many reservations overlap:
        arithmetic, as a pool (an IPv6 /64) is too large to count address by address."""
        inside = 0
        for net in ipaddress.collapse_addresses(  # type: ignore[type-var]
                [n for n in self._nets if n.version == network.version]):
            low = max(int(net.network_address), int(network.network_address))
            high = min(int(net.broadcast_address), int(network.broadcast_address))
            inside += max(0, high - low + 1)
        return inside

    def covers(self, block: Network) -> bool:
        """Whether every address of `block` is reserved (by one reservation, or several)."""
        return len(self.ordinals(block)) == block.num_addresses

    def ordinals(self, block: Network) -> frozenset[int]:
        """The ordinals of `block` that are reserved; the same empty set when none is (the case
        of nearly every allocation, answered without arithmetic)."""
        if not self._nets:
            return _NONE
        start, end = int(block.network_address), int(block.broadcast_address)
        found: set[int] = set()
        for net in self._nets:
            if net.version != block.version:
                continue
            low, high = max(start, int(net.network_address)), min(end, int(net.broadcast_address))
            if low <= high:
                found.update(range(low - start, high - start + 1))
        return frozenset(found) if found else _NONE
