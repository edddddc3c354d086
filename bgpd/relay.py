"""Passing learned routes on to the node's other peers, as Calico's BIRD does: the mesh's blocks
to an eBGP peer (a top-of-rack router that only some nodes peer with learns the whole
cluster's), an eBGP peer's pool routes to the mesh, and, on a route-reflector node, each
client's routes to the other iBGP peers (ExaBGP cannot reflect).

Which route goes where, and as what, is bgpd.pass_on's (pure); this module remembers what it
sent to each peer and sends only the difference. It works per prefix whose best path changed
(Rib.take_best_changes): a reflector for 500 nodes looks at the one block a node claims, not at
every block of the cluster for every client (5.6 s of CPU per claimed block, when it walked
the whole table on each change), and a node that learns 100k routes from its ToR looks at each
once as it changes. A node whose sessions can pass nothing on (one peer, or only iBGP peers and
no cluster ID: every mesh-only node) looks at none, and its RIB keeps no list of changes for it.
The whole table is walked only when a session comes up, when what may be passed on changes
(sessions, next-hop modes, cluster ID, pools with disableBGPExport), or after a failed send.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Collection, Iterable

from percale.bgpd.exabgp_json import RibFeed
from percale.bgpd.pass_on import Reflection, held_back, may_pass_on, pass_on
from percale.bgpd.peering import Session
from percale.bgpd.prefixes import Prefix
from percale.bgpd.rib import Path, Peer, Rib
from percale.bgpd.seams import Speaker
from percale.bgpd.speaker import SpeakerError

log = logging.getLogger("percale.bgpd.relay")


class Relay:
    def __init__(self, speaker: Speaker) -> None:
        self.speaker = speaker
        self.sent: dict[str, dict[Prefix, str]] = {}  # peer -> prefix -> the announcement sent
        self._sessions: list[Session] = []
        self.active = False  # may_pass_on(sessions): the RIB should watch best paths for us
        self._held: tuple[Prefix, ...] = ()  # pools with disableBGPExport
        self._reflection: Reflection | None = None
        self._shared: object = None  # what every session's routes depend on
        self._each: dict[str, tuple] = {}  # peer -> what its own routes depend on
        # The peers `everything` must look at; None: all of them (a send failed, a reflection
        # waited for a BGP Identifier, or what every session depends on changed).
        self._due: set[str] | None = set()

    @property
    def behind(self) -> bool:
        """Whether `everything` is due."""
        return self._due is None or bool(self._due)

    def configure(self, sessions: list[Session], no_export_pools: Iterable[str],
                  cluster_id: str | None = None) -> bool:
        """Take the node's sessions, its pools with disableBGPExport and its cluster ID (None:
        it reflects nothing). Returns whether what may be passed on changed; then `everything`
        is due (`behind`), for every session or only those whose own settings changed: a node
        joining a reflector's cluster costs the reflector no walk of its table for the others.
        A new session needs none: it is sent everything when it comes up."""
        held = tuple(sorted({ipaddress.ip_network(c) for c in no_export_pools}, key=str))
        clients = frozenset(ipaddress.ip_address(s.peer_address) for s in sessions
                            if s.route_reflector_client)
        active = may_pass_on(sessions, reflecting=cluster_id is not None)
        each = {s.peer_address: (s.family, s.peer_as, s.local_as, s.keep_next_hop,
                                 s.next_hop_self, s.route_reflector_client) for s in sessions}
        self._sessions = sessions
        for gone in set(self.sent) - each.keys():
            del self.sent[gone]  # its neighbour left ExaBGP, and what it was sent with it
        shared = (held, cluster_id, active)
        changed = {a for a, settings in each.items()
                   if a in self._each and self._each[a] != settings}
        if shared == self._shared and not changed:
            self._each = each
            return False
        if shared != self._shared or any(
                self._each[a][-1] != each[a][-1] for a in changed):
            # A client becoming a non-client (or the reverse) changes what the others get.
            self._due = None
        elif self._due is not None:
            self._due |= changed
        self._shared, self._each, self._held, self.active = shared, each, held, active
        self._reflection = None if cluster_id is None else Reflection(
            ipaddress.IPv4Address(cluster_id), clients)
        return True

    def speaker_restarted(self) -> None:
        """A fresh ExaBGP has sent nobody anything."""
        self.sent.clear()

    async def changed(self, rib: Rib, feed: RibFeed | None, up: Collection[str],
                      own: Collection[str]) -> None:
        """Pass on what changed for the prefixes whose best path changed (the RIB's list) to the
        sessions that are `up`; `own` are the prefixes this node announces itself, which it does
        not pass on."""
        prefixes = rib.take_best_changes()
        if not self.active or not prefixes:
            return
        targets = self._targets(feed, up)
        try:
            for prefix in prefixes:
                best = rib.best(prefix)
                held = best is None or held_back(prefix, self._held) or str(prefix) in own
                for session, peer in targets:
                    text = None if held else self._text(best, session, peer)  # type: ignore[arg-type]
                    await self._send(session.peer_address, prefix, text)
        except SpeakerError:
            self._due = None
            raise

    async def everything(self, rib: Rib, feed: RibFeed | None, up: Collection[str],
                         own: Collection[str], *, only: str | None = None) -> None:
        """Bring each session that is `up` (or only the peer `only`, whose session just came
        up: it is sent everything again, as ExaBGP may have kept nothing of it) in line with
        the whole RIB."""
        due: set[str] | None = {only} if only is not None else self._due
        if only is None:
            self._due = set()
            if due is None:
                rib.take_best_changes()  # every prefix is looked at now, for every peer
            else:
                # Only some peers: the others still need what changed meanwhile.
                await self.changed(rib, feed, up, own)
        try:
            await self._everything(rib, feed, up, own, due, resend=only is not None)
        except SpeakerError:
            if only is None:
                self._due = None
            raise

    async def _everything(self, rib: Rib, feed: RibFeed | None, up: Collection[str],
                          own: Collection[str], due: set[str] | None, resend: bool) -> None:
        # Each prefix judged once, not once per session: a reflector has hundreds.
        candidates: list[tuple[Prefix, Path]] = []
        if due is not None and not due:
            return
        if self.active:
            for prefix in rib.fib:
                best = rib.best(prefix)
                if best is not None and not held_back(prefix, self._held) and str(prefix) not in own:
                    candidates.append((prefix, best))
            candidates.sort(key=lambda item: str(item[0]))
        for session, peer in self._targets(feed, up):
            address = session.peer_address
            if due is not None and address not in due:
                continue
            want: dict[Prefix, str] = {}
            for prefix, best in candidates:
                text = self._text(best, session, peer)
                if text is not None:
                    want[prefix] = text
            sent = self.sent.setdefault(address, {})
            for prefix in sorted(sent.keys() - want.keys(), key=str):
                try:
                    await self.speaker.send(f"neighbor {address} withdraw route {prefix}")
                except SpeakerError as err:
                    if not resend:
                        raise
                    # What a session that just came up never got need not be withdrawn.
                    log.debug("withdrawing %s from %s: %s", prefix, address, err)
                del sent[prefix]
            for prefix, text in want.items():
                if resend or sent.get(prefix) != text:
                    await self.speaker.send(f"neighbor {address} {text}")
                    sent[prefix] = text
            if not sent:
                del self.sent[address]

    def _targets(self, feed: RibFeed | None, up: Collection[str]) -> list[tuple[Session, Peer | None]]:
        """The sessions that are up, each with its peer as the RIB knows it (a reflector needs
        the peer's BGP Identifier)."""
        return [(s, feed.peer(s.peer_address) if feed is not None and self._reflection else None)
                for s in self._sessions if s.peer_address in up]

    def _text(self, best: Path, session: Session, peer: Peer | None) -> str | None:
        try:
            return pass_on(best, session, reflection=self._reflection, to_peer=peer)
        except ValueError as err:
            # The sender's OPEN is not seen yet: looked at again by the next whole pass.
            log.debug("%s", err)
            self._due = None
            return None

    async def _send(self, address: str, prefix: Prefix, text: str | None) -> None:
        sent = self.sent.get(address)
        if text == (sent.get(prefix) if sent else None):
            return
        if text is None:
            assert sent is not None
            await self.speaker.send(f"neighbor {address} withdraw route {prefix}")
            del sent[prefix]
            if not sent:
                del self.sent[address]
        else:
            await self.speaker.send(f"neighbor {address} {text}")
            self.sent.setdefault(address, {})[prefix] = text
