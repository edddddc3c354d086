"""How the addresses of the IP pools are used: counts per pool and per block, and which addresses
nodes borrowed from other nodes' blocks.

Pure: it reads the IPPool and IPAMBlock values it is handed and imports no datastore.
`percalectl ipam show` renders it (ctl/ipam_show.py).

Counting follows Calico's GetUtilization (calico.md §5.3):
  * a block counts under the first pool, in the order given, whose CIDR overlaps it; a pool's
    addresses in use are the sum over its blocks, so an address counts once however pools change;
  * a block under no pool is an orphan: its pool was deleted while addresses were still held.
    Calico files orphans under a pseudo-pool 0.0.0.0/0, which loses IPv6 orphans; here they are a
    list of their own, both families;
  * blocks are listed in address order (Calico lists them in datastore key order, where
    10.0.0.128/26 comes before 10.0.0.64/26);
  * a block marked deleted (the first step of a two-step delete) is already gone;
  * an address an IPReservation covers is reserved, and not free even where no block holds it
    yet; one allocated before it was reserved counts as in use and as reserved (Calico's HEAD).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from percale.ipam import blocks as block_math
from percale.api import IPAMBlock, IPPool
from percale.api.fields import network_of
from percale.api.ipam import IPAMBlockSpec
from percale.ipam.reservations import Reservations

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class BlockUsage:
    cidr: str
    capacity: int
    in_use: int
    reserved: int = 0
    # Addresses that can still be handed out; None: all not in use (nothing reserved).
    available: int | None = None

    @property
    def free(self) -> int:
        return self.capacity - self.in_use if self.available is None else self.available


@dataclass(frozen=True)
class PoolUsage:
    name: str
    cidr: str
    capacity: int
    blocks: tuple[BlockUsage, ...]
    reserved: int = 0
    # Reserved addresses of the pool that no block holds yet: not free either.
    reserved_outside_blocks: int = 0

    @property
    def in_use(self) -> int:
        return sum(b.in_use for b in self.blocks)

    @property
    def free(self) -> int:
        unblocked = self.capacity - sum(b.capacity for b in self.blocks)
        return unblocked - self.reserved_outside_blocks + sum(b.free for b in self.blocks)


@dataclass(frozen=True)
class Usage:
    pools: tuple[PoolUsage, ...]
    # Blocks in no pool, still holding what was allocated before their pool was deleted.
    orphans: tuple[BlockUsage, ...]


def usage(pools: Sequence[IPPool], blocks: Iterable[IPAMBlock],
          reservations: Reservations = Reservations()) -> Usage:
    """Addresses in use, reserved and free per pool (in the order given) and per block."""
    networks = [p.spec.network for p in pools]
    held: list[list[BlockUsage]] = [[] for _ in pools]
    orphans: list[BlockUsage] = []
    for spec in _live(blocks):
        in_use = len(spec.allocations) - block_math.free_count(spec)
        if reservations:
            reserved = reservations.ordinals(spec.network)
            counted = BlockUsage(spec.cidr, len(spec.allocations), in_use, len(reserved),
                                 block_math.free_count(spec, reserved))
        else:
            counted = BlockUsage(spec.cidr, len(spec.allocations), in_use)
        home = next((i for i, net in enumerate(networks) if _overlap(net, spec.network)), None)
        (orphans if home is None else held[home]).append(counted)
    found = []
    for i, (p, net) in enumerate(zip(pools, networks, strict=True)):
        reserved = reservations.count(net) if reservations else 0
        in_blocks = sum(reservations.count(network_of(b.cidr)) for b in held[i]) if reserved else 0
        found.append(PoolUsage(p.metadata.name, p.spec.cidr, net.num_addresses, tuple(held[i]),
                               reserved, reserved - in_blocks))
    return Usage(pools=tuple(found), orphans=tuple(orphans))


@dataclass(frozen=True)
class BorrowedAddress:
    """An address a node took from a block that is not its own (or from an unaffine block)."""

    address: str
    borrowing_node: str
    block: str
    block_owner: str   # "" when the block has no owner any more
    type: str          # "pod", a tunnel address type (vxlanTunnelAddress, ...) or ""
    allocated_to: str  # "namespace/pod" for a pod, else ""


@dataclass(frozen=True)
class Borrowing:
    addresses: tuple[BorrowedAddress, ...]
    # Allocations with no node attribute: whether they are borrowed cannot be told.
    unclassified: int


def borrowed(blocks: Iterable[IPAMBlock]) -> Borrowing:
    """Every allocation whose node attribute is not its block's owner, in address order."""
    found: list[BorrowedAddress] = []
    unclassified = 0
    for spec in _live(blocks):
        owner = spec.affinity_node or ""
        for ordinal, slot in enumerate(spec.allocations):
            if slot is None or spec.attributes[slot].released_at is not None:
                continue  # free, or released and cooling down
            attrs = spec.attributes[slot].secondary
            node = attrs.get("node")
            if node is None:
                unclassified += 1
                continue
            if node == owner:
                continue
            if "pod" in attrs:
                kind, to = "pod", f"{attrs.get('namespace', '')}/{attrs['pod']}"
            else:
                kind, to = attrs.get("type", ""), ""
            found.append(BorrowedAddress(
                str(block_math.address(spec, ordinal)), node, spec.cidr, owner, kind, to))
    return Borrowing(tuple(found), unclassified)


def _live(blocks: Iterable[IPAMBlock]) -> list[IPAMBlockSpec]:
    """The blocks not marked deleted, in address order (IPv4 first)."""
    specs = [b.spec for b in blocks if not b.spec.deleted]
    return sorted(specs, key=lambda s: (s.network.version, int(s.network.network_address)))


def _overlap(a: Network, b: Network) -> bool:
    return a.version == b.version and a.overlaps(b)  # type: ignore[arg-type]
