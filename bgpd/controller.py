"""percale-node's BGP driver: datastore in, ExaBGP configured and fed, learned routes out.

It keeps three things in step with the datastore:
  * ExaBGP's neighbours — the sessions bgpd.peering computes for this node; a change rewrites the
    configuration and reloads ExaBGP, which leaves unchanged sessions up;
  * what the node announces — bgpd.announcements (own blocks, borrowed /32s), as announce and
    withdraw commands; everything again, then End-of-RIB, whenever ExaBGP (re)connects, and
    everything towards a peer whose session comes up (ExaBGP does not send routes announced
    before a neighbour existed, exabgp.md §1.8);
  * events — every JSON event ExaBGP reports is handed to `on_event` (the RIB).
It re-reads the datastore when a watched kind changes, or every `resync` seconds at the latest.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path

from percale.bgpd import peering
from percale.bgpd.announcements import Announcements, announcements
from percale.bgpd.exabgp_config import Neighbor
from percale.bgpd.speaker import ExaBGP, SpeakerError
from percale.datastore import Datastore, DatastoreError, RevisionCompacted

log = logging.getLogger("percale.bgpd")

WATCHED = ("Node", "BGPPeer", "BGPConfiguration", "BlockAffinity", "IPAMBlock", "IPPool")


def read_secret(secrets_dir: Path | None, ref: peering.SecretRef | None) -> str | None:
    """A BGP password from `<secrets_dir>/<secret name>/<key>` (a mounted Kubernetes secret has
    this layout)."""
    if ref is None:
        return None
    if secrets_dir is None:
        raise ValueError(f"a BGP password refers to secret {ref.name}, but no secrets directory is set")
    return (secrets_dir / ref.name / ref.key).read_text().strip()


def neighbors(sessions: list[peering.Session], listen_port: int,
              secrets_dir: Path | None) -> list[Neighbor]:
    return [
        Neighbor(s.name, s.family, s.peer_address, s.peer_port, s.peer_as, s.local_as,
                 s.local_address, s.passive, s.restart_time, read_secret(secrets_dir, s.password),
                 s.ttl_security, listen_port)
        for s in sessions
    ]


class BGPController:
    def __init__(self, store: Datastore, node: str, workdir: Path, *,
                 on_event: Callable[[dict], None] | None = None, netns: str | None = None,
                 secrets_dir: Path | None = None, resync: float = 30.0):
        self.store, self.node = store, node
        self.on_event = on_event or (lambda event: None)
        self.secrets_dir = secrets_dir
        self.resync = resync
        self.speaker = ExaBGP(workdir, self._event, netns=netns, on_connect=self._on_connect)
        self.sessions: list[peering.Session] = []
        self.announced: frozenset[str] = frozenset()
        self.desired = Announcements(frozenset(), frozenset())
        self._changed = asyncio.Event()
        self._config: str | None = None
        self._router_id: str | None = None
        self._tasks: set[asyncio.Task] = set()
        self._peer_ups: asyncio.Queue[str] = asyncio.Queue()
        self._reannounce_all = asyncio.Event()

    # -- events from ExaBGP --------------------------------------------------------------------

    def _event(self, event: dict) -> None:
        neighbor = event.get("neighbor", {})
        if event.get("type") == "state" and neighbor.get("state") == "up":
            self._peer_ups.put_nowait(neighbor["address"]["peer"])
        self.on_event(event)

    def _on_connect(self) -> None:
        # A fresh ExaBGP knows none of our routes.
        self.announced = frozenset()
        self._reannounce_all.set()

    # -- the loop ------------------------------------------------------------------------------

    async def run(self) -> None:
        for kind in WATCHED:
            self._spawn(self._watch(kind))
        self._spawn(self._peers_coming_up())
        try:
            while True:
                try:
                    await self.sync()
                except (DatastoreError, SpeakerError, OSError, ValueError) as err:
                    log.warning("BGP sync failed, trying again: %s", err)
                    await asyncio.sleep(1)
                    continue
                try:
                    await asyncio.wait_for(self._wake(), self.resync)
                except asyncio.TimeoutError:
                    pass
        finally:
            for task in self._tasks:
                task.cancel()
            await self.speaker.stop()

    async def _wake(self) -> None:
        waiters = [asyncio.ensure_future(self._changed.wait()),
                   asyncio.ensure_future(self._reannounce_all.wait())]
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waiters:
                w.cancel()
        await asyncio.sleep(0.02)  # let a burst of changes land together
        self._changed.clear()

    def _spawn(self, coro) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _watch(self, kind: str) -> None:
        revision = None
        while True:
            try:
                async for event in self.store.watch(kind, revision=revision):
                    revision = event.revision
                    self._changed.set()
            except RevisionCompacted:
                revision = None
                self._changed.set()
            except DatastoreError as err:
                log.warning("watching %s: %s", kind, err)
                await asyncio.sleep(1)

    async def _peers_coming_up(self) -> None:
        while True:
            peer = await self._peer_ups.get()
            try:
                await self._announce_to(peer, sorted(self.announced))
            except SpeakerError as err:
                log.warning("re-announcing to %s: %s", peer, err)

    # -- one pass ------------------------------------------------------------------------------

    async def sync(self) -> None:
        nodes = [kv.value for kv in (await self.store.list("Node")).items]
        peers = [kv.value for kv in (await self.store.list("BGPPeer")).items]
        configs = [kv.value for kv in (await self.store.list("BGPConfiguration")).items]
        speaker = peering.local_speaker(self.node, nodes, configs)
        if speaker is None or speaker.router_id is None:
            return  # this node has no BGP address yet
        self.sessions = peering.sessions_for(self.node, nodes, peers, configs)
        config = self.speaker.render(speaker.router_id,
                                     neighbors(self.sessions, speaker.listen_port, self.secrets_dir))
        if self._config is None:
            await self.speaker.start(config)
            self._spawn(self.speaker.supervise())
        elif config != self._config:
            await self.speaker.reload(config)
        self._config = config
        await self.speaker.wait_connected()

        affinities = [kv.value for kv in (await self.store.list("BlockAffinity", node=self.node)).items]
        blocks = [kv.value for kv in (await self.store.list("IPAMBlock")).items]
        self.desired = announcements(self.node, affinities, blocks)
        await self._announce_changes()

    async def _announce_changes(self) -> None:
        first = self._reannounce_all.is_set()
        self._reannounce_all.clear()
        if first:
            self.announced = frozenset()
        want = self.desired.prefixes
        for prefix in sorted(self.announced - want):
            await self.speaker.send(f"withdraw route {prefix}")
        for prefix in sorted(want - self.announced):
            await self.speaker.send(f"announce route {prefix} next-hop self")
        self.announced = want
        if first:
            # Everything re-announced: now peers may drop whatever they kept stale for us
            # (graceful restart, RFC 4724 §4.1).
            for family in sorted({s.family for s in self.sessions}):
                await self.speaker.send(f"announce eor {'ipv4' if family == 4 else 'ipv6'} unicast")

    async def _announce_to(self, peer: str, prefixes: list[str]) -> None:
        for prefix in prefixes:
            await self.speaker.send(f"neighbor {peer} announce route {prefix} next-hop self")
        family = "ipv6" if ":" in peer else "ipv4"
        await self.speaker.send(f"neighbor {peer} announce eor {family} unicast")
