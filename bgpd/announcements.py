"""What a node announces over BGP, from IPAM's state (calico.md §2.5).

  * every block it holds a confirmed affinity for (a pending one counts as absent: the claim may
    still fail, and another node may be announcing the block);
  * a /32 (/128) for every address it borrowed from another node's block, so longest-prefix
    match delivers that pod's traffic here and not to the block's owner, whose blackhole route
    would drop it (calico#3246).

Each own block also gets a local blackhole route (dataplane/blackholes.py installs it): traffic
to unused addresses of the block stops here instead of bouncing along the default route.

Pure: IPAM resources in, prefixes out. `announcements` computes the whole answer at once;
`AnnouncementTable` keeps it as the agent's view changes, one affinity or block at a time, so a
block changed anywhere in the cluster costs this node one look at that block.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from percale.api import BlockAffinity, IPAMBlock


@dataclass(frozen=True)
class Announcements:
    blocks: frozenset[str]      # the node's own blocks: announced, and blackholed locally
    borrowed: frozenset[str]    # /32 and /128 of addresses it borrowed from other nodes' blocks

    @property
    def prefixes(self) -> frozenset[str]:
        return self.blocks | self.borrowed


def own_block(node: str, affinity: BlockAffinity | None) -> str | None:
    """The block `affinity` gives `node`, if it is confirmed and not being deleted."""
    if affinity is None:
        return None
    spec = affinity.spec
    if spec.node == node and spec.state == "confirmed" and not spec.deleted:
        return spec.cidr
    return None


def borrowed_in(node: str, block: IPAMBlock | None) -> frozenset[str]:
    """The /32s (/128s) of `block`'s addresses allocated to `node`: borrowed unless the block
    is the node's own, which the caller knows."""
    if block is None:
        return frozenset()
    return frozenset(host_prefix(block.spec.cidr, o) for o in ordinals_of(node, block))


def ordinals_of(node: str, block: IPAMBlock | None) -> frozenset[int]:
    """Which addresses of `block` (by ordinal) are allocated to `node`. Cheaper than their
    prefixes, which a node's own block (every one of its pods) never needs."""
    if block is None or block.spec.deleted:
        return frozenset()
    spec = block.spec
    return frozenset(ordinal for ordinal, slot in enumerate(spec.allocations)
                     if slot is not None and spec.attributes[slot].secondary.get("node") == node)


@functools.lru_cache(maxsize=8192)
def host_prefix(cidr: str, ordinal: int) -> str:
    """The /32 (/128) of the address `ordinal` of block `cidr`."""
    return str(ipaddress.ip_network(ipaddress.ip_network(cidr).network_address + ordinal))


def announcements(node: str, affinities: Iterable[BlockAffinity],
                  ipam_blocks: Iterable[IPAMBlock]) -> Announcements:
    own = frozenset(filter(None, (own_block(node, a) for a in affinities)))
    borrowed: set[str] = set()
    for block in ipam_blocks:
        if block.spec.cidr not in own:
            borrowed |= borrowed_in(node, block)
    return Announcements(own, frozenset(borrowed))


class AnnouncementTable:
    """`announcements(node, ...)` kept current one change at a time: each call says whether
    what the node announces changed."""

    def __init__(self, node: str) -> None:
        self.node = node
        self._own: dict[str, str] = {}  # affinity name -> block
        self._borrowed: dict[str, frozenset[int]] = {}  # block -> this node's addresses in it
        self._current = Announcements(frozenset(), frozenset())

    @property
    def current(self) -> Announcements:
        return self._current

    def affinity(self, name: str, affinity: BlockAffinity | None) -> bool:
        """Affinity `name` is now `affinity` (None: deleted)."""
        block = own_block(self.node, affinity)
        if block is None:
            self._own.pop(name, None)
        else:
            self._own[name] = block
        return self._refresh()

    def block(self, cidr: str, block: IPAMBlock | None) -> bool:
        """Block `cidr` is now `block` (None: deleted)."""
        mine = ordinals_of(self.node, block)
        if mine:
            self._borrowed[cidr] = mine
        elif self._borrowed.pop(cidr, None) is None:
            return False  # none of ours before or after: nothing to look at
        return self._refresh()

    def _refresh(self) -> bool:
        own = frozenset(self._own.values())
        borrowed = frozenset(host_prefix(cidr, o) for cidr, ordinals in self._borrowed.items()
                             if cidr not in own for o in ordinals)
        before, self._current = self._current, Announcements(own, borrowed)
        return self._current != before
