"""Passing learned routes on to the node's other peers, as Calico's BIRD does: the mesh's blocks
to an eBGP peer (a top-of-rack router that only some nodes peer with learns the whole
cluster's), an eBGP peer's pool routes to the mesh.

Which route goes where, and as what, is bgpd.pass_on's (pure); this module remembers what it
sent to each peer and sends only the difference. It works per changed prefix: a node that
learns 100k routes from its ToR looks at each once as it changes, not at the whole table on
every UPDATE, and a node whose sessions can pass nothing on (one peer, or iBGP only: every
mesh-only node) looks at none. The whole table is walked only when a session comes up or what
may be passed on changes (sessions, next-hop modes, pools with disableBGPExport).
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Collection, Iterable

from percale.bgpd.pass_on import held_back, may_pass_on, pass_on
from percale.bgpd.peering import Session
from percale.bgpd.prefixes import Prefix
from percale.bgpd.rib import Rib
from percale.bgpd.seams import Speaker
from percale.bgpd.speaker import SpeakerError

log = logging.getLogger("percale.bgpd.relay")


class Relay:
    def __init__(self, speaker: Speaker) -> None:
        self.speaker = speaker
        self.sent: dict[str, dict[Prefix, str]] = {}  # peer -> prefix -> the announcement sent
        self._sessions: list[Session] = []
        self._active = False  # may_pass_on(sessions)
        self._held: tuple[Prefix, ...] = ()  # pools with disableBGPExport
        self._settings: object = None
        # A send failed: what each peer was sent is uncertain until `everything` has run.
        self.behind = False

    def configure(self, sessions: list[Session], no_export_pools: Iterable[str]) -> bool:
        """Take the node's sessions and its pools with disableBGPExport. Returns whether what
        may be passed on changed, so that `everything` is due."""
        held = tuple(sorted({ipaddress.ip_network(c) for c in no_export_pools}, key=str))
        settings = (tuple((s.peer_address, s.family, s.peer_as, s.local_as, s.keep_next_hop,
                           s.next_hop_self) for s in sessions), held)
        self._sessions = sessions
        configured = {s.peer_address for s in sessions}
        for gone in set(self.sent) - configured:
            del self.sent[gone]  # its neighbour left ExaBGP, and what it was sent with it
        if settings == self._settings:
            return False
        self._settings, self._held = settings, held
        self._active = may_pass_on(sessions)
        self.behind = True
        return True

    def speaker_restarted(self) -> None:
        """A fresh ExaBGP has sent nobody anything."""
        self.sent.clear()

    async def changed(self, rib: Rib, prefixes: Iterable[Prefix], up: Collection[str],
                      own: Collection[str]) -> None:
        """Pass on what changed for `prefixes` (their best paths) to the sessions that are `up`;
        `own` are the prefixes this node announces itself, which it does not pass on."""
        if not self._active:
            return
        targets = [s for s in self._sessions if s.peer_address in up]
        if not targets:
            return
        try:
            for prefix in prefixes:
                best = rib.best(prefix)
                held = best is None or held_back(prefix, self._held) or str(prefix) in own
                for session in targets:
                    text = None if held else pass_on(best, session)  # type: ignore[arg-type]
                    await self._send(session.peer_address, prefix, text)
        except SpeakerError:
            self.behind = True
            raise

    async def everything(self, rib: Rib, up: Collection[str], own: Collection[str], *,
                         only: str | None = None) -> None:
        """Bring each session that is `up` (or only the peer `only`, whose session just came
        up: it is sent everything again, as ExaBGP may have kept nothing of it) in line with
        the whole RIB."""
        try:
            await self._everything(rib, up, own, only)
        except SpeakerError:
            if only is None:
                self.behind = True
            raise
        if only is None:
            self.behind = False

    async def _everything(self, rib: Rib, up: Collection[str], own: Collection[str],
                          only: str | None) -> None:
        for session in self._sessions:
            address = session.peer_address
            if address not in up or (only is not None and address != only):
                continue
            want: dict[Prefix, str] = {}
            if self._active:
                for prefix in rib.fib:
                    best = rib.best(prefix)
                    if best is None or held_back(prefix, self._held) or str(prefix) in own:
                        continue
                    text = pass_on(best, session)
                    if text is not None:
                        want[prefix] = text
            sent = self.sent.setdefault(address, {})
            for prefix in sorted(set(sent) - set(want), key=str):
                try:
                    await self.speaker.send(f"neighbor {address} withdraw route {prefix}")
                except SpeakerError as err:
                    if only is None:
                        raise
                    # What a session that just came up never got need not be withdrawn.
                    log.debug("withdrawing %s from %s: %s", prefix, address, err)
                del sent[prefix]
            for prefix, text in sorted(want.items(), key=lambda item: str(item[0])):
                if only is not None or sent.get(prefix) != text:
                    await self.speaker.send(f"neighbor {address} {text}")
                    sent[prefix] = text
            if not sent:
                del self.sent[address]

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
