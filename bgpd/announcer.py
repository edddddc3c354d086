"""Announcing the node's own prefixes through ExaBGP: what changed, as it changes; everything
again, then End-of-RIB, whenever ExaBGP (re)starts; everything towards a peer whose session
comes up (ExaBGP does not send routes announced before a neighbour existed, exabgp.md §1.8).

What to announce comes from bgpd.announcements (the AnnouncementTable the agent keeps current),
each prefix with its attributes (next hop self, and the communities of bgpd.communities); this
module only says it to the speaker. A prefix whose attributes change is announced again: ExaBGP
replaces the route, and the peers hear an implicit withdraw, with no session touched.

Two ways of saying it. While no session has a BGPFilter with export rules, one `announce route`
reaches every neighbour. Once one has, each neighbour is told its own table (`neighbor <ip>
announce route ...`): a global announcement followed by a withdrawal for the filtered peer
would leak the route to it for a moment. Leaving that mode, one global announcement of each
prefix puts it back everywhere, and what only some peers had is withdrawn.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping

from percale.bgpd.peers import PeerStatus
from percale.bgpd.seams import Speaker
from percale.bgpd.speaker import SpeakerError

log = logging.getLogger("percale.bgpd.announcer")


def _family(address: str) -> str:
    return "ipv6" if ":" in address else "ipv4"


class Announcer:
    def __init__(self, speaker: Speaker) -> None:
        self.speaker = speaker
        self.announced: dict[str, str] = {}  # prefix -> its attributes, as last announced
        # Per neighbour, what it was told, while any session filters its exports; else None.
        self.per_peer: dict[str, dict[str, str]] | None = None
        self._everything = True  # the speaker knows nothing of ours yet
        # Set once the current ExaBGP has been given everything we announce: only then may a
        # peer be sent End-of-RIB, or it would drop routes graceful restart kept for us.
        self.ready = asyncio.Event()
        # announce and announce_to run from different loops of the agent: one at a time, or a
        # peer coming up is sent a route withdrawn (or filtered) while its table was being sent.
        self._lock = asyncio.Lock()

    def speaker_restarted(self) -> None:
        """A fresh ExaBGP knows none of our routes, and every session of the old one ended."""
        self.announced = {}
        self.per_peer = {} if self.per_peer is not None else None
        self._everything = True
        self.ready.clear()

    @property
    def behind(self) -> bool:
        """Whether the speaker must be told everything again."""
        return self._everything

    async def announce(self, want: Mapping[str, str],
                       peers: Iterable[tuple[str, PeerStatus]],
                       per_peer: Mapping[str, Mapping[str, str]] | None = None) -> None:
        """Make the speaker announce exactly `want` (prefix -> its attributes: `next-hop self`
        and any communities), or, with `per_peer`, each configured neighbour exactly its own
        table: withdrawals first, then announcements; after a (re)start of the speaker,
        End-of-RIB to each established session in `peers` too."""
        async with self._lock:
            await self._announce(want, peers, per_peer)

    async def _announce(self, want: Mapping[str, str], peers: Iterable[tuple[str, PeerStatus]],
                        per_peer: Mapping[str, Mapping[str, str]] | None) -> None:
        first = self._everything
        if per_peer is None:
            await self._announce_to_all(want)
        else:
            await self._announce_to_each(want, per_peer)
        self._everything = False
        self.ready.set()
        if first:
            # Everything re-announced: now peers may drop whatever they kept stale for us
            # (graceful restart, RFC 4724 §4.1). Only to sessions that are up, each in its own
            # family: ExaBGP refuses `announce eor` that matches no established neighbour (so a
            # fresh ExaBGP, with none up yet, failed here every time), and a dual-stack node
            # must not send an IPv6 End-of-RIB on an IPv4-only session. A session that comes up
            # later gets its End-of-RIB from announce_to.
            for address, status in peers:
                family = "ipv4" if status.session.family == 4 else "ipv6"
                try:
                    await self.speaker.send(f"neighbor {address} announce eor {family} unicast")
                except SpeakerError as err:
                    log.debug("End-of-RIB to %s: %s (it gets one when it comes up)", address, err)

    async def _announce_to_all(self, want: Mapping[str, str]) -> None:
        if self.per_peer is not None:
            # Leaving per-neighbour tables: each prefix announced once to all puts it back where
            # a filter had kept it; what some neighbours were told and none should be, goes.
            # Each table is kept true as the commands go, so a failure half-way (retried, or
            # followed by the filter's return) starts from what the neighbours really hold.
            tables = self.per_peer.values()
            told = set(self.announced).union(*tables)
            for prefix in sorted(told - want.keys()):
                await self.speaker.send(f"withdraw route {prefix}")
                self.announced.pop(prefix, None)
                for table in tables:
                    table.pop(prefix, None)
            for prefix in sorted(want):
                await self.speaker.send(f"announce route {prefix} {want[prefix]}")
                for table in tables:
                    table[prefix] = want[prefix]
            self.announced, self.per_peer = dict(want), None
            return
        for prefix in sorted(self.announced.keys() - want.keys()):
            await self.speaker.send(f"withdraw route {prefix}")
            del self.announced[prefix]
        for prefix in sorted(want):
            attributes = want[prefix]
            if self.announced.get(prefix) != attributes:
                await self.speaker.send(f"announce route {prefix} {attributes}")
                self.announced[prefix] = attributes

    async def _announce_to_each(self, want: Mapping[str, str],
                                per_peer: Mapping[str, Mapping[str, str]]) -> None:
        if self.per_peer is None:
            # Entering per-neighbour tables: each neighbour holds what was announced to all.
            self.per_peer = {peer: dict(self.announced) for peer in per_peer}
        for peer, table in per_peer.items():
            told = self.per_peer.setdefault(peer, {})
            for prefix in sorted(told.keys() - table.keys()):
                await self.speaker.send(f"neighbor {peer} withdraw route {prefix}")
                del told[prefix]
            for prefix in sorted(table):
                if told.get(prefix) != table[prefix]:
                    await self.speaker.send(f"neighbor {peer} announce route {prefix} {table[prefix]}")
                    told[prefix] = table[prefix]
        for gone in self.per_peer.keys() - per_peer.keys():
            del self.per_peer[gone]  # its neighbour left ExaBGP with its table
        # Kept as the unfiltered table, for leaving this mode and for the relay's own prefixes.
        self.announced = dict(want)

    async def announce_to(self, peer: str) -> None:
        """Everything we announce, then End-of-RIB, to one peer whose session just came up."""
        async with self._lock:
            await self._announce_to(peer)

    async def _announce_to(self, peer: str) -> None:
        table = self.announced if self.per_peer is None else self.per_peer.get(peer, {})
        for prefix, attributes in sorted(table.items()):
            await self.speaker.send(f"neighbor {peer} announce route {prefix} {attributes}")
        await self.speaker.send(f"neighbor {peer} announce eor {_family(peer)} unicast")
