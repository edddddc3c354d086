"""percale-node's BGP driver: datastore in, ExaBGP configured and fed, learned routes out.

It keeps three things in step with the datastore:
  * ExaBGP's neighbours — the sessions bgpd.peering computes for this node; a change rewrites the
    configuration and reloads ExaBGP, which leaves unchanged sessions up;
  * what the node announces — bgpd.announcements (own blocks, borrowed /32s), as announce and
    withdraw commands; everything again, then End-of-RIB, whenever ExaBGP (re)connects, and
    everything towards a peer whose session comes up (ExaBGP does not send routes announced
    before a neighbour existed, exabgp.md §1.8);
  * what the node learns — ExaBGP's events feed the RIB (bgpd.rib); its changes go to the FIB
    (bgpd.fib), and the node's own blocks get blackhole routes (bgpd.blackholes); the agent
    passes both in, tests running outside a node's namespace leave them out.
It re-reads the datastore when a watched kind changes, or every `resync` seconds at the latest,
and then also reconciles the FIB and sweeps stale routes whose restart time has passed.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from percale.bgpd import peering
from percale.bgpd.announcements import Announcements, announcements
from percale.bgpd.exabgp_config import Neighbor
from percale.bgpd.exabgp_json import EndOfRib, MalformedMessage, PeerState, RibFeed
from percale.bgpd.rib import Path as BGPPath
from percale.bgpd.rib import Peer, Rib, reflect
from percale.bgpd.speaker import ExaBGP, SpeakerError
from percale.datastore import Datastore, DatastoreError, RevisionCompacted

log = logging.getLogger("percale.bgpd")

WATCHED = ("Node", "BGPPeer", "BGPConfiguration", "BlockAffinity", "IPAMBlock", "IPPool")


@dataclass
class PeerStatus:
    """One row of `percalectl node status`, in BIRD's words as calicoctl shows them: STATE is
    the protocol state (up, start), INFO the BGP state (Established, Connect, Passive, ...)."""

    session: peering.Session
    state: str = "start"
    info: str = "Connect"
    since: float = field(default_factory=time.time)  # wall-clock seconds

    def set(self, state: str, info: str) -> None:
        if (state, info) != (self.state, self.info):
            self.state, self.info, self.since = state, info, time.time()


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
                 fib: Any = None, blackholes: Any = None, netns: str | None = None,
                 secrets_dir: Path | None = None, resync: float = 30.0):
        self.store, self.node = store, node
        self.fib = fib
        self.blackholes = blackholes
        self.rib: Rib | None = None
        self.feed: RibFeed | None = None
        self._fib_due = asyncio.Event()
        self.secrets_dir = secrets_dir
        # For /readyz: the datastore answered a whole sync; the FIB was reconciled once.
        self.synced = False
        self.reconciled = False
        self.on_sync: Any = None  # called with each sync's duration in seconds
        self.resync = resync
        self.speaker = ExaBGP(workdir, self._event, netns=netns, on_connect=self._on_connect)
        self.sessions: list[peering.Session] = []
        # Route reflection (this node has a routeReflectorClusterID): what was sent to each peer.
        self.cluster_id: str | None = None
        self.reflected: dict[str, dict[str, str]] = {}
        # Peer address -> status, for every configured session.
        self.peers: dict[str, PeerStatus] = {}
        self.announced: frozenset[str] = frozenset()
        self.desired = Announcements(frozenset(), frozenset())
        self._changed = asyncio.Event()
        self._config: str | None = None
        self.router_id: str | None = None
        self._tasks: set[asyncio.Task] = set()
        self._peer_ups: asyncio.Queue[str] = asyncio.Queue()
        # Set once the current ExaBGP has been given everything we announce: only then may a
        # peer be sent End-of-RIB, or it would drop routes graceful restart kept for us.
        self._ready = asyncio.Event()
        # After the agent starts, the kernel routes it adopted are checked against the RIB once
        # every peer has sent End-of-RIB (or the restart time has passed).
        self._started = time.monotonic()
        self._swept = False
        self._end_of_rib: set[str] = set()
        # What the RIB was last told, so unchanged inputs cost nothing; when the kernel was last
        # checked in full (blackholes, FIB reconcile).
        self._pools: list[str] = []
        self._own_addresses: list[str] = []
        self._own_blocks: frozenset[str] = frozenset()
        self._last_housekeeping = 0.0
        self._reannounce_all = asyncio.Event()

    # -- events from ExaBGP --------------------------------------------------------------------

    def _event(self, line: str) -> None:
        if self.feed is None:
            return
        try:
            event = self.feed.feed(line, time.monotonic())
        except MalformedMessage as err:
            log.warning("ExaBGP sent an event percale cannot read: %s", err)
            return
        if isinstance(event, EndOfRib):
            self._end_of_rib.add(str(event.peer.address))
            if not self._swept:
                self._changed.set()  # the initial sweep may be due now
        if isinstance(event, PeerState):
            status = self.peers.get(str(event.peer.address))
            if event.state == "up":
                self._peer_ups.put_nowait(str(event.peer.address))
                if status:
                    status.set("up", "Established")
            elif status and event.state == "connected":
                status.set("start", "OpenSent")
            elif status and event.state == "down":
                status.set("start", f"{_waiting(status.session)} ({event.reason})" if event.reason
                           else _waiting(status.session))
        self._fib_due.set()

    def _on_connect(self) -> None:
        # A fresh ExaBGP knows none of our routes, and every session of the old one has ended.
        self.announced = frozenset()
        self._ready.clear()
        self._reannounce_all.set()
        if self.feed is not None:
            self.feed.speaker_restarted(time.monotonic())
            self._fib_due.set()

    # -- the loop ------------------------------------------------------------------------------

    async def run(self) -> None:
        for kind in WATCHED:
            self._spawn(self._watch(kind))
        self._spawn(self._peers_coming_up())
        self._spawn(self._program_fib())
        try:
            while True:
                started = time.monotonic()
                try:
                    await self.sync()
                    self.synced = True
                except (DatastoreError, SpeakerError, OSError, ValueError) as err:
                    self.synced = False
                    log.warning("BGP sync failed, trying again: %s", err)
                    await asyncio.sleep(1)
                    continue
                if self.on_sync:
                    self.on_sync(time.monotonic() - started)
                try:
                    await asyncio.wait_for(self._wake(), self.resync)
                except asyncio.TimeoutError:
                    pass
        finally:
            tasks = list(self._tasks)
            for task in tasks:
                task.cancel()
            # Wait for the watches to let go of the datastore before the agent closes it.
            await asyncio.gather(*tasks, return_exceptions=True)
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
            await self._ready.wait()
            try:
                # What we reflected to it before is gone with its old session.
                self.reflected.pop(peer, None)
                if self.cluster_id:
                    await self._reflect()
                await self._announce_to(peer, sorted(self.announced))
            except SpeakerError as err:
                log.warning("re-announcing to %s: %s", peer, err)

    async def _reflect(self) -> None:
        """Route reflection in the agent (RFC 4456), since ExaBGP cannot reflect: each best path
        learned from an iBGP peer goes to the other iBGP peers its client status allows, with
        ORIGINATOR_ID and CLUSTER_LIST set and the next hop unchanged."""
        assert self.rib is not None and self.feed is not None and self.cluster_id
        ibgp = [s for s in self.sessions if s.peer_as == s.local_as]
        clients = {ipaddress.ip_address(s.peer_address) for s in ibgp if s.route_reflector_client}
        up = {a for a, status in self.peers.items() if status.state == "up"}
        for session in ibgp:
            if session.peer_address not in up:
                continue
            to = self.feed.peer(session.peer_address) or Peer(
                session.peer_address, session.peer_as, session.local_as)
            want: dict[str, str] = {}
            for prefix in self.rib.fib:
                best = self.rib.best(prefix)
                if best is None:
                    continue
                try:
                    path = reflect(best, to, cluster_id=self.cluster_id, clients=clients)
                except ValueError:
                    continue  # the sender's identifier is not known yet (its OPEN is pending)
                if path is not None:
                    want[str(prefix)] = _announcement(path)
            sent = self.reflected.setdefault(session.peer_address, {})
            for prefix in sorted(set(sent) - set(want)):
                await self.speaker.send(f"neighbor {session.peer_address} withdraw route {prefix}")
                del sent[prefix]
            for prefix, announcement in sorted(want.items()):
                if sent.get(prefix) != announcement:
                    await self.speaker.send(f"neighbor {session.peer_address} {announcement}")
                    sent[prefix] = announcement

    # -- one pass ------------------------------------------------------------------------------

    async def sync(self) -> None:
        nodes = [kv.value for kv in (await self.store.list("Node")).items]
        peers = [kv.value for kv in (await self.store.list("BGPPeer")).items]
        configs = [kv.value for kv in (await self.store.list("BGPConfiguration")).items]
        speaker = peering.local_speaker(self.node, nodes, configs)
        if speaker is None or speaker.router_id is None:
            return  # this node has no BGP address yet
        self.cluster_id = speaker.cluster_id
        self.router_id = speaker.router_id
        self.sessions = peering.sessions_for(self.node, nodes, peers, configs)
        self.peers = {
            s.peer_address: self.peers.get(s.peer_address) or PeerStatus(s, info=_waiting(s))
            for s in self.sessions
        }
        for s in self.sessions:
            self.peers[s.peer_address].session = s
        pools = [kv.value.spec.cidr for kv in (await self.store.list("IPPool")).items
                 if not kv.value.spec.disabled]
        own_addresses = [a for a in (speaker.ipv4_address, speaker.ipv6_address) if a]
        if self.rib is None:
            self.rib = Rib(router_id=speaker.router_id, pools=pools, own_addresses=own_addresses)
            self.feed = RibFeed(self.rib)
        else:
            # Each setter re-judges every prefix: only when something changed (a node with a
            # large learned table would otherwise pay it on every block claim).
            if pools != self._pools:
                self.rib.set_pools(pools)
            if own_addresses != self._own_addresses:
                self.rib.set_own_addresses(own_addresses)
        self._pools, self._own_addresses = pools, own_addresses
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
        if self.desired.blocks != self._own_blocks:
            self.rib.set_own_blocks(self.desired.blocks)
        # Announce first: a claimed block should reach the peers before any kernel housekeeping.
        await self._announce_changes()
        if self.blackholes is not None and (self.desired.blocks != self._own_blocks
                                            or self._housekeeping_due()):
            await asyncio.to_thread(self.blackholes.sync, self.desired.blocks,
                                    check=self._housekeeping_due())
        self._own_blocks = self.desired.blocks
        self.rib.expire(time.monotonic())
        self._fib_due.set()
        if self.fib is not None:
            if not self._swept and self._initial_sweep_due():
                # Routes adopted from before the restart that no peer re-announced go now.
                await asyncio.to_thread(self.fib.replace_all, dict(self.rib.fib))
                self._swept = True
            if not self.reconciled or self._housekeeping_due():
                # A full dump of the kernel's table: every `resync` seconds, not on every change
                # (changes reach the kernel through _program_fib as they happen).
                await asyncio.to_thread(self.fib.reconcile)
                self.reconciled = True
        if self._housekeeping_due():
            self._last_housekeeping = time.monotonic()

    def _housekeeping_due(self) -> bool:
        return time.monotonic() - self._last_housekeeping >= self.resync

    def _initial_sweep_due(self) -> bool:
        if time.monotonic() - self._started > peering.DEFAULT_RESTART_TIME:
            return True
        return bool(self.peers) and all(
            status.state == "up" and address in self._end_of_rib
            for address, status in self.peers.items())

    async def _program_fib(self) -> None:
        """Hand the RIB's changes to the FIB, batched: a burst of updates becomes one netlink
        batch, and the event loop (and ExaBGP's pipe) never waits on the kernel."""
        while True:
            await self._fib_due.wait()
            self._fib_due.clear()
            if self.rib is None:
                continue
            changes = self.rib.changes()
            if changes and self.cluster_id:
                await self._reflect()
            if not changes or self.fib is None:
                continue
            batch: dict[Any, Any] = {**changes.added, **changes.changed}
            batch.update({prefix: None for prefix in changes.removed})
            try:
                outcome = await asyncio.to_thread(self.fib.apply, batch)
                if outcome.failed:
                    log.warning("the kernel refused %d routes: %s", len(outcome.failed),
                                dict(list(outcome.failed.items())[:3]))
            except Exception as err:  # the next reconcile repairs whatever did not land
                log.warning("programming routes failed: %s", err)

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
        self._ready.set()
        if first:
            # Everything re-announced: now peers may drop whatever they kept stale for us
            # (graceful restart, RFC 4724 §4.1). Only to sessions that are up, each in its own
            # family: ExaBGP refuses `announce eor` that matches no established neighbour (so a
            # fresh ExaBGP, with none up yet, failed this sync every time), and a dual-stack
            # node must not send an IPv6 End-of-RIB on an IPv4-only session. A session that
            # comes up later gets its End-of-RIB from _peers_coming_up.
            for address, status in sorted(self.peers.items()):
                if status.state != "up":
                    continue
                family = "ipv4" if status.session.family == 4 else "ipv6"
                try:
                    await self.speaker.send(f"neighbor {address} announce eor {family} unicast")
                except SpeakerError as err:
                    log.debug("End-of-RIB to %s: %s (it gets one when it comes up)", address, err)

    async def _announce_to(self, peer: str, prefixes: list[str]) -> None:
        for prefix in prefixes:
            await self.speaker.send(f"neighbor {peer} announce route {prefix} next-hop self")
        family = "ipv6" if ":" in peer else "ipv4"
        await self.speaker.send(f"neighbor {peer} announce eor {family} unicast")


def _waiting(session: peering.Session) -> str:
    # A passive side waits for the other to connect; an active one keeps trying.
    return "Passive" if session.passive else "Connect"


def _announcement(path: BGPPath) -> str:
    """An ExaBGP `announce route` carrying a reflected path's attributes."""
    parts = [f"announce route {path.prefix} next-hop {path.next_hop}",
             f"origin {path.origin.name.lower()}"]
    asns = [asn for segment in path.as_path for asn in segment.asns]
    if asns:
        parts.append(f"as-path [ {' '.join(map(str, asns))} ]")
    if path.local_pref is not None:
        parts.append(f"local-preference {path.local_pref}")
    if path.med is not None:
        parts.append(f"med {path.med}")
    parts.append(f"originator-id {path.originator_id}")
    parts.append(f"cluster-list [ {' '.join(map(str, path.cluster_list))} ]")
    return " ".join(parts)
