"""What a node announces over BGP, from IPAM's state (calico.md §2.5).

  * every block it holds a confirmed affinity for (a pending one counts as absent: the claim may
    still fail, and another node may be announcing the block);
  * a /32 (/128) for every address it borrowed from another node's block, so longest-prefix
    match delivers that pod's traffic here and not to the block's owner, whose blackhole route
    would drop it (calico#3246).

Each own block also gets a local blackhole route (bgpd/fib.py installs it): traffic to unused
addresses of the block stops here instead of bouncing along the default route.
Pure: IPAM resources in, prefixes out.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from percale.ipam import blocks
from percale.api import BlockAffinity, IPAMBlock


@dataclass(frozen=True)
class Announcements:
    blocks: frozenset[str]      # the node's own blocks: announced, and blackholed locally
    borrowed: frozenset[str]    # /32 and /128 of addresses it borrowed from other nodes' blocks

    @property
    def prefixes(self) -> frozenset[str]:
        return self.blocks | self.borrowed


def announcements(node: str, affinities: Iterable[BlockAffinity],
                  ipam_blocks: Iterable[IPAMBlock]) -> Announcements:
    own = frozenset(a.spec.cidr for a in affinities
                    if a.spec.node == node and a.spec.state == "confirmed" and not a.spec.deleted)
    borrowed = set()
    for block in ipam_blocks:
        spec = block.spec
        if spec.deleted or spec.cidr in own:
            continue
        for ordinal, slot in enumerate(spec.allocations):
            if slot is not None and spec.attributes[slot].secondary.get("node") == node:
                address = blocks.address(spec, ordinal)
                borrowed.add(str(ipaddress.ip_network(address)))
    return Announcements(own, frozenset(borrowed))
