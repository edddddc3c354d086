"""percale-node's BGP side, assembled: the agent's view of the datastore in, ExaBGP configured
and fed, learned routes out to the kernel.

Its parts, each one job:

    bgpd.peering + exabgp_config   which sessions this node holds -> ExaBGP's configuration,
                                   reloaded when Nodes, BGPPeers, BGPConfigurations or IPPools
                                   change, or a secret a BGP password comes from (unchanged
                                   sessions stay up)
    announcements.AnnouncementTable + announcer.Announcer
                                   what the node announces (own blocks, borrowed /32s and the
                                   service CIDRs, less those of pools with disableBGPExport),
                                   kept current per changed affinity, block, pool,
                                   BGPConfiguration or own Node, said to ExaBGP
    rib.Rib + exabgp_json.RibFeed  what the node learns, from ExaBGP's events
    relay.Relay                    learned routes passed on as Calico's BIRD does (the mesh's
                                   blocks to eBGP peers, an eBGP peer's pool routes to the
                                   mesh), and reflected on a route-reflector node
    programmer.FibProgrammer       RIB changes and own blocks into the kernel, checked on a timer;
                                   next hops on no connected network resolved through the kernel's
                                   route to them, and followed as it changes
    peers.PeerTable                each session's state, for status and health

React, don't re-read. The agent reads nothing from the datastore itself: the Cache it is given
(datastore/cache.py) lists each kind once and tells it every change. A block claimed or released
on another node is one IPAMBlock change here: the AnnouncementTable looks at that block alone
(does it hold an address of ours?) and nothing else happens. Sessions are recomputed only when a
kind that decides them changes.
"""

from __future__ import annotations

import asyncio
import ctypes
import ipaddress
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Hashable, Mapping
from pathlib import Path
from typing import Any

from percale.bgpd import collector, peering
from percale.bgpd.announcements import Announcements, AnnouncementTable, service_cidrs
from percale.bgpd.announcer import Announcer
from percale.bgpd.communities import CommunityRule, communities_for, community_rules, community_text
from percale.bgpd.exabgp_config import Neighbor
from percale.bgpd.exabgp_json import EndOfRib, MalformedMessage, PeerState, RibFeed
from percale.bgpd.filters import (
    export_tables, import_accepting, import_verdicts, rules_key, session_filters,
)
from percale.bgpd.log_level import bgp_log_level
from percale.bgpd.peer_routes import peer_routes
from percale.bgpd.peers import PeerTable
from percale.bgpd.programmer import FibProgrammer
from percale.bgpd.relay import Relay
from percale.bgpd.rib import Rib
from percale.bgpd.secret_sources import NoSecrets, SecretFiles, SecretSource
from percale.bgpd.seams import BlackholeTable, RouteTable
from percale.bgpd.speaker import ExaBGP, SpeakerError
from percale.datastore.cache import Cache, Change

log = logging.getLogger("percale.bgpd")

# Kinds whose change may change this node's sessions, router ID or the RIB's import policy.
SESSION_KINDS = frozenset({"Node", "BGPPeer", "BGPConfiguration", "IPPool", "BGPFilter"})
# A burst of changes (a node and its peers applied together) is taken as one.
SETTLE_SECONDS = 0.02
# The Cease subcode (RFC 4486) of a session percale restarts on purpose.
CEASE_ADMINISTRATIVE_RESET = 4
RETRY_SECONDS = 1.0
# How long a changed secret (a rotated BGP password) may go unnoticed, at most, while some
# session's password comes from one: the housekeeping loop looks at the secrets this often.
SECRET_CHECK_SECONDS = 10.0


# A FIB change this large (a full table learned or flushed) leaves megabytes the C allocator
# keeps for later; they go back to the system (malloc_trim) rather than staying in the RSS.
TRIM_AFTER_ROUTES = 10_000
# The most prefixes one batch to the route table carries (`_programming`).
FIB_PART_ROUTES = 4_000


def _return_freed_memory() -> None:
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass  # not glibc


def _attributes(prefix: str, rules: tuple[CommunityRule, ...]) -> str:
    """What an own prefix is announced with: our address as next hop, and the communities of
    the prefixAdvertisements that cover it."""
    if not rules:
        return "next-hop self"
    communities = community_text(*communities_for(ipaddress.ip_network(prefix), rules))
    return f"next-hop self {communities}" if communities else "next-hop self"


def neighbors(sessions: list[peering.Session], listen_port: int,
              passwords: Mapping[peering.SecretRef, str | None] | None) -> list[Neighbor]:
    """ExaBGP's neighbours; `passwords` as the secret source read them (None: none read)."""
    return [
        Neighbor(s.name, s.family, s.peer_address, s.peer_port, s.peer_as, s.local_as,
                 s.local_address, s.passive, s.restart_time,
                 (passwords or {}).get(s.password) if s.password else None,
                 s.ttl_security, listen_port, s.keepalive_time)
        for s in sessions
    ]


class BGPAgent:
    def __init__(self, cache: Cache, node: str, workdir: Path, *,
                 fib: RouteTable | None = None, blackholes: BlackholeTable | None = None,
                 peer_routes: RouteTable | None = None, netns: str | None = None,
                 secrets_dir: Path | None = None, secrets: SecretSource | None = None,
                 router_id: str | None = None, resync: float = 30.0):
        """`secrets`: where BGP passwords come from (secret_sources.choose); without it, the
        files under `secrets_dir`."""
        self.cache, self.node = cache, node
        self.secrets: SecretSource = secrets or (
            SecretFiles(secrets_dir) if secrets_dir is not None else NoSecrets())
        self.router_id_setting = router_id  # CALICO_ROUTER_ID's meaning: None, "hash" or an ID
        self.resync = resync
        self.speaker = ExaBGP(workdir, self._event, netns=netns, on_connect=self._on_connect)
        self.table = AnnouncementTable(node)
        self.announcer = Announcer(self.speaker)
        self.relay = Relay(self.speaker)
        self.programmer = FibProgrammer(fib, blackholes, peers=peer_routes)
        self.peers = PeerTable()
        self.rib: Rib | None = None
        self.feed: RibFeed | None = None
        self.sessions: list[peering.Session] = []
        self.cluster_id: str | None = None  # set: this node reflects routes
        self.router_id: str | None = None
        # For /readyz: this node's BGP configuration is applied (or it has no BGP address).
        self.synced = False
        self._told_no_router_id = False  # logged that an IPv6-only node has no router ID
        self._clashes_told: set[str] = set()  # sessions logged as left out (_tell_clashes)
        # The secrets the configured passwords came from, as they were read (secret_version):
        # a secret changes without any datastore change, so housekeeping looks at them.
        self._secrets_read: dict[peering.SecretRef, Hashable] = {}
        self._connected_to: float | None = None  # the start of the ExaBGP whose bridge connected
        self.on_sync: Callable[[float], None] | None = None  # each announcement pass's duration
        self._config: str | None = None
        self._supervisor: asyncio.Future[None] | None = None
        self._pools: list[str] = []
        self._own_addresses: list[str] = []
        self._services: list[str] = []
        self._allow_own_as: dict[str, int] = {}
        self._filters: dict = {}  # BGPFilters by name
        self._log_level: int | None = None  # from logSeverityScreen (bgpd/log_level.py)
        self._import_key: dict = {}  # what the RIB's import filters were made from
        self._rib_blocks: frozenset[str] = frozenset()
        self._configure_due = asyncio.Event()
        self._announce_due = asyncio.Event()
        self._fib_due = asyncio.Event()
        self._pass_on_due = asyncio.Event()
        self._housekeeping_due = asyncio.Event()
        self._peer_ups: asyncio.Queue[str] = asyncio.Queue()
        self._reapply = False
        # the collector's pause (bgpd/collector.py), held from an UPDATE until its routes are in
        # the kernel
        self._collector_held = False
        self._programming_runs = False
        # After the agent starts, the kernel routes it adopted are checked against the RIB once
        # every peer has sent End-of-RIB (or the restart time has passed).
        self._started = time.monotonic()
        self._end_of_rib: set[str] = set()
        cache.subscribe(self._changed)

    # -- what readers see -----------------------------------------------------------------------

    @property
    def desired(self) -> Announcements:
        return self.table.current

    @property
    def fib(self) -> RouteTable | None:
        return self.programmer.routes

    @property
    def reconciled(self) -> bool:
        return self.programmer.reconciled

    async def exclusions_changed(self) -> None:
        """What `programmer.claimed` says changed (the VXLAN side took or gave back prefixes):
        the whole RIB goes through it again."""
        self._reapply = True
        self._fib_due.set()

    # -- changes from the datastore -------------------------------------------------------------

    def _changed(self, change: Change) -> None:
        kind = change.kind
        if kind in SESSION_KINDS:
            self._configure_due.set()
        if kind == "BGPConfiguration":
            # Service CIDRs added or removed: announced or withdrawn, no session touched; and
            # the prefixAdvertisements' communities looked at again (_announce).
            self.table.configuration(change.key.name, change.new.value if change.new else None)
            self._announce_due.set()
        elif kind == "Node":
            if change.key.name == self.node and self.table.own_node(
                    change.new.value if change.new else None):
                self._announce_due.set()
        elif kind == "IPPool":
            # A pool's disableBGPExport turned on or off: its prefixes are withdrawn or announced.
            if self.table.pool(change.key.name, change.new.value if change.new else None):
                self._announce_due.set()
        elif kind == "BlockAffinity":
            if self.table.affinity(change.key.name, change.new.value if change.new else None):
                self._announce_due.set()
        elif kind == "IPAMBlock":
            present = change.new or change.old
            assert present is not None
            if self.table.block(present.value.spec.cidr, change.new.value if change.new else None):
                self._announce_due.set()

    # -- events from ExaBGP -------------------------------------------------------------------

    def _event(self, line: str) -> None:
        if self.feed is None:
            return
        # One UPDATE line carries up to ~1,000 routes, ~4,000 new objects that live on in the
        # RIB and form no cycles: the collector stays paused until the burst's routes are in
        # the kernel (bgpd/collector.py, _programming).
        self._hold_collector(True)
        try:
            with collector.paused():  # the line's own: where a pause that went on too long collects
                event = self.feed.feed(line, time.monotonic())
        except MalformedMessage as err:
            log.warning("ExaBGP sent an event percale cannot read: %s", err)
            return
        if isinstance(event, EndOfRib):
            self._end_of_rib.add(str(event.peer.address))
            if not self.programmer.swept:
                self._housekeeping_due.set()  # the sweep after a restart may be due now
        if isinstance(event, PeerState):
            if event.state == "up":
                self._peer_ups.put_nowait(str(event.peer.address))
            elif event.state == "down":
                # Its stale paths now have a restart time to run out: the housekeeping loop
                # was waiting for a deadline worked out before it, up to `resync` away.
                self._housekeeping_due.set()
            self.peers.heard(event)
        self._fib_due.set()

    def _on_connect(self) -> None:
        # A bridge connected: a fresh ExaBGP's, or a new bridge of the same ExaBGP (it starts
        # one again when its helper dies). Only a fresh ExaBGP has ended every session: one that
        # went on keeps them up and tells the new bridge nothing of them, so taking them for
        # ended would show them down, and drop their routes, until each flapped.
        fresh = self.speaker.started_at != self._connected_to
        self._connected_to = self.speaker.started_at
        if fresh:
            self.peers.speaker_restarted()
            if self.feed is not None:
                self.feed.speaker_restarted(time.monotonic())
                self._fib_due.set()
        # Either way what went through the old bridge may not all have arrived: said again.
        self.announcer.speaker_restarted()
        self.relay.speaker_restarted()
        self._announce_due.set()

    # -- running ------------------------------------------------------------------------------

    async def run(self) -> None:
        await self.cache.wait_synced()
        # Whatever was listed before this agent subscribed (a late subscriber misses nothing).
        for kv in self.cache.items("BlockAffinity").values():
            self.table.affinity(kv.key.name, kv.value)
        for kv in self.cache.items("IPAMBlock").values():
            self.table.block(kv.value.spec.cidr, kv.value)
        for kv in self.cache.items("IPPool").values():
            self.table.pool(kv.key.name, kv.value)
        for kv in self.cache.items("BGPConfiguration").values():
            self.table.configuration(kv.key.name, kv.value)
        for kv in self.cache.items("Node").values():
            if kv.key.name == self.node:
                self.table.own_node(kv.value)
        self._configure_due.set()
        self._announce_due.set()
        loops = [self._configuring(), self._announcing(), self._peers_coming_up(),
                 self._passing_on(),
                 self._programming(), self._housekeeping(), self.programmer.follow_underlay()]
        tasks = [asyncio.ensure_future(loop) for loop in loops]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                task.result()  # a loop that ended has failed: say why
        finally:
            if self._supervisor is not None:
                tasks.append(self._supervisor)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self.speaker.stop()

    async def _retrying(self, due: asyncio.Event, work: Callable[[], Awaitable[None]],
                        what: str) -> None:
        """Run `work` whenever `due` is set; on a failure a retry can cure, again after a pause."""
        while True:
            await due.wait()
            await asyncio.sleep(SETTLE_SECONDS)
            due.clear()
            try:
                await work()
            except (SpeakerError, OSError, ValueError, asyncio.TimeoutError) as err:
                log.warning("%s failed, trying again: %s", what, err)
                await asyncio.sleep(RETRY_SECONDS)
                due.set()

    def _configuring(self) -> Coroutine[Any, Any, None]:
        return self._retrying(self._configure_due, self._configure, "configuring BGP")

    def _announcing(self) -> Coroutine[Any, Any, None]:
        return self._retrying(self._announce_due, self._announce, "announcing")

    async def _configure(self) -> None:
        nodes = self.cache.values("Node")
        configs = self.cache.values("BGPConfiguration")
        self._follow_log_severity(configs)
        speaker = peering.local_speaker(self.node, nodes, configs, self.router_id_setting)  # type: ignore[arg-type]
        if speaker is not None and speaker.router_id is None and speaker.ipv6_address:
            # An IPv6-only node: BGP needs an IPv4-format router ID, which its address cannot
            # give. confd fails the same way; said once, and not ready, rather than no BGP at
            # all with nothing said.
            if not self._told_no_router_id:
                log.error("node %s has only an IPv6 BGP address (%s), and BGP needs a router ID "
                          "in IPv4 form: start percale-node with --router-id hash "
                          "(PERCALE_ROUTER_ID=hash) or an IPv4 address; running no BGP until "
                          "then", self.node, speaker.ipv6_address)
                self._told_no_router_id = True
            await self._route_to_peers({})
            self._secrets_read = {}  # nothing configured from them
            self.synced = False
            return
        self._told_no_router_id = False
        if speaker is None or speaker.router_id is None:
            await self._route_to_peers({})
            self._secrets_read = {}  # nothing configured from them
            self.synced = True  # this node has no BGP address (yet): nothing to run
            return
        self.cluster_id, self.router_id = speaker.cluster_id, speaker.router_id
        self.sessions, clashes = peering.sessions_with_clashes(
            self.node, nodes, self.cache.values("BGPPeer"), configs)  # type: ignore[arg-type]
        self._tell_clashes(clashes)
        self.peers.configure(self.sessions)
        to_peers = peer_routes(self.sessions)
        # New routes to peers before ExaBGP connects through them; those of peers gone after it
        # closed their sessions (its NOTIFICATION still needs the way there).
        await self._route_to_peers({**(self.programmer.peer_routes_given or {}), **to_peers})
        if self.feed is not None and self.feed.configured(
                [s.peer_address for s in self.sessions], time.monotonic()):
            self._fib_due.set()  # a removed peer's routes leave the kernel before its session ends
        all_pools = self.cache.values("IPPool")
        # Every pool, disabled ones too: disabling stops new addresses, not the routes to the
        # pods that hold one (Calico's kernel filter never looks at `disabled`).
        pools = [p.spec.cidr for p in all_pools]  # type: ignore[attr-defined]
        # A view that does not follow BGPFilters (an older agent's kinds) has none.
        followed = "BGPFilter" in self.cache.kinds
        self._filters = {f.metadata.name: f
                         for f in (self.cache.values("BGPFilter") if followed else ())}
        relay_due = self.relay.configure(
            self.sessions, [p.spec.cidr for p in all_pools if p.spec.disable_bgp_export],  # type: ignore[attr-defined]
            self.cluster_id or None, self._filters)  # type: ignore[arg-type]
        import_filters = import_verdicts(self.sessions, self._filters)  # type: ignore[arg-type]
        # Whose Accept lets a route outside the pools in; made from the same rules as the key.
        accepting = import_accepting(self.sessions, self._filters)  # type: ignore[arg-type]
        # What each import filter was made from: its rules, and whether the session is iBGP
        # (peerType rules; a BGPPeer's asNumber may change).
        import_key = {s.peer_address: (s.peer_as == s.local_as,
                                       rules_key(session_filters(s, self._filters)))  # type: ignore[arg-type]
                      for s in self.sessions if s.peer_address in import_filters}
        own_addresses = [a for a in (speaker.ipv4_address, speaker.ipv6_address) if a]
        # Every node announces the service CIDRs: what the others send of them is never routed,
        # on a node excluded from announcing them too (confd's /rejectcidrs).
        services = sorted({cidr for c in configs for cidr in service_cidrs(c)})  # type: ignore[arg-type]
        allow_own_as = {s.peer_address: s.allow_local_as for s in self.sessions if s.allow_local_as}
        if self.rib is None:
            # The cluster ID too: a route reflector refuses a path whose CLUSTER_LIST holds it
            # (RFC 4456 §8), the copy of its own reflection another reflector of the cluster sent.
            self.rib = Rib(router_id=speaker.router_id, pools=pools, own_addresses=own_addresses,
                           own_blocks=self.table.current.blocks, service_cidrs=services,
                           cluster_id=speaker.cluster_id)
            self.rib.set_allow_own_as(allow_own_as)
            self._rib_blocks = self.table.current.blocks
            self.rib.set_import_filters(import_filters, accepting)
            self.feed = RibFeed(self.rib)
        else:
            # Each setter re-judges every prefix: only when something changed.
            identity = (ipaddress.IPv4Address(speaker.router_id),
                        ipaddress.IPv4Address(speaker.cluster_id) if speaker.cluster_id else None)
            if identity != self.rib.identity:
                self.rib.set_identity(*identity)
            if pools != self._pools:
                self.rib.set_pools(pools)
            if own_addresses != self._own_addresses:
                self.rib.set_own_addresses(own_addresses)
            if services != self._services:
                self.rib.set_service_cidrs(services)
            if allow_own_as != self._allow_own_as:
                self.rib.set_allow_own_as(allow_own_as)
            if import_key != self._import_key:
                self.rib.set_import_filters(import_filters, accepting)
            self._fib_due.set()
        self.rib.watch_best(self.relay.active)  # the relay lists best-path changes while active
        self._pools, self._own_addresses = pools, own_addresses
        self._import_key = import_key
        self._services, self._allow_own_as = services, allow_own_as
        # Looked at before they are read: a change in between is seen at the next look.
        refs = sorted({s.password for s in self.sessions if s.password})
        self._secrets_read = {ref: await self.secrets.version(ref) for ref in refs}
        passwords = {ref: await self.secrets.read(ref) for ref in refs}
        config = self.speaker.render(speaker.router_id,
                                     neighbors(self.sessions, speaker.listen_port, passwords))
        if self._config is None:
            await self.speaker.start(config)
            self._supervisor = asyncio.ensure_future(self.speaker.supervise())
        elif config != self._config:
            await self.speaker.reload(config)
        self._config = config
        await self.speaker.wait_connected()
        await self._route_to_peers(to_peers)
        await self._restart_revived()
        if relay_due:
            self._pass_on_due.set()
        self.synced = True
        self._announce_due.set()

    def _tell_clashes(self, clashes: list[peering.Clash]) -> None:
        """Log each session left out for another at its peer address (bgpd/peering.py) when it
        first is, not at every configuration: it stays left out until a BGPPeer changes."""
        told = {str(clash) for clash in clashes}
        for text in sorted(told - self._clashes_told):
            log.warning("%s", text)
        self._clashes_told = told

    async def _route_to_peers(self, routes: dict[str, str]) -> None:
        """The host routes to peers (reachableBy); a change of their prefixes puts the RIB
        through the programmer's exclusions again."""
        if await self.programmer.peer_routes(routes):
            await self.exclusions_changed()

    def _follow_log_severity(self, configs: list) -> None:
        """BGPConfiguration logSeverityScreen sets the level of the percale.bgpd loggers
        (bgpd/log_level.py)."""
        level = bgp_log_level(self.node, configs)
        if level == self._log_level:
            return
        self._log_level = level
        logging.getLogger("percale.bgpd").setLevel(logging.NOTSET if level is None else level)
        # Said at WARNING by a logger above percale.bgpd, so that it is seen at any level.
        if level is None:
            now, why = "percale-node's --log-level", "no BGPConfiguration sets logSeverityScreen"
        else:
            now, why = logging.getLevelName(level), "BGPConfiguration logSeverityScreen"
        logging.getLogger("percale").warning("BGP logging now at %s (%s)", now, why)

    async def _restart_revived(self) -> None:
        """Restart each session that outlived its peer's removal (RibFeed.to_restart): the
        peer sent its routes once on it, and they were dropped. A Cease NOTIFICATION with
        "Administrative Reset" (RFC 4486) ends it, ExaBGP connects again, and the peer sends
        everything anew."""
        if self.feed is None:
            return
        for address in sorted(self.feed.to_restart, key=str):
            log.info("restarting the session with %s: it was configured again before it ended",
                     address)
            await self.speaker.send(f"neighbor {address} teardown {CEASE_ADMINISTRATIVE_RESET}")
            self.feed.to_restart.discard(address)

    async def _announce(self) -> None:
        if self._config is None:
            return  # ExaBGP is not running yet; configuring it announces when it is
        started = time.monotonic()
        desired = self.table.current
        if self.rib is not None and desired.blocks != self._rib_blocks:
            self.rib.set_own_blocks(desired.blocks)
            self._rib_blocks = desired.blocks
            self._fib_due.set()
        rules = community_rules(self.node, self.cache.values("BGPConfiguration"))  # type: ignore[arg-type]
        want = {prefix: _attributes(prefix, rules) for prefix in desired.prefixes}
        # Sessions with BGPFilters exporting: each neighbour its own table.
        per_peer = export_tables(self.sessions, self._filters, want, desired.withheld)
        # Announce first: a claimed block should reach the peers before any kernel housekeeping.
        await self.announcer.announce(want, self.peers.established(), per_peer)
        # What is passed on carries the communities too, and keeps off what we now announce.
        if (self.relay.set_communities(rules)
                | self.relay.set_own(self.announcer.announced, desired.blocks,
                                      self.announcer.per_peer)):
            self._pass_on_due.set()
        await self.programmer.own_blocks(desired.blocks)
        if self.on_sync:
            self.on_sync(time.monotonic() - started)

    async def _peers_coming_up(self) -> None:
        while True:
            peer = await self._peer_ups.get()
            await self.announcer.ready.wait()
            self.relay.session_up(peer)
            self._pass_on_due.set()
            try:
                await self.announcer.announce_to(peer)
            except SpeakerError as err:
                log.warning("re-announcing to %s: %s", peer, err)

    def _up(self) -> set[str]:
        return {address for address, _ in self.peers.established()}

    def _passing_on(self) -> Coroutine[Any, Any, None]:
        """Learned routes passed on (bgpd/relay.py) in a loop of their own: each is a command
        ExaBGP answers, and the kernel's routes need not wait for thousands of them."""
        return self._retrying(self._pass_on_due, self._pass_on, "passing routes on")

    async def _pass_on(self) -> None:
        if self.rib is None:
            return
        await self.relay.catch_up(self.rib, self.feed, self._up())
        if self.relay.behind and not self._pass_on_due.is_set():
            # A reflection waits for a sender's BGP Identifier: look again in a moment.
            asyncio.get_running_loop().call_later(RETRY_SECONDS, self._pass_on_due.set)

    async def _programming(self) -> None:
        """Hand the RIB's changes on as they come: a burst of updates is one netlink batch.

        At most FIB_PART_ROUTES prefixes at a time, and the next part is worked out while the
        route table's thread programs the one before: a session lost with 100k routes began
        deleting them only once all 100k changes were known (~90 ms), and the kernel's share
        of the deletions now overlaps the RIB's share of the rest. Once the last part is in the
        kernel and nothing more is due, the collector's pause taken by `_event` ends."""
        in_kernel: asyncio.Future[None] | None = None  # the part the route table's thread has
        programmed = 0  # by the parts of one batch so far
        self._programming_runs = True
        try:
            while True:
                if not self._fib_due.is_set():  # idle once the last part is in the kernel
                    if in_kernel is not None:
                        await in_kernel
                        in_kernel = None
                    if not self._fib_due.is_set():
                        self._hold_collector(False)
                await self._fib_due.wait()
                self._fib_due.clear()
                if self.rib is None:
                    continue
                changes = self.rib.changes(limit=FIB_PART_ROUTES)
                if self.rib.pending:
                    self._fib_due.set()
                if self._reapply:
                    self._reapply = False
                    await self.programmer.reapply(self.rib)
                if self.relay.active:
                    self._pass_on_due.set()  # a new best path may change no next hop
                if not changes:
                    continue
                if in_kernel is not None:
                    await in_kernel  # one part waiting behind the one being programmed, no more
                in_kernel = asyncio.ensure_future(self.programmer.apply(changes))
                programmed += len(changes.added) + len(changes.changed) + len(changes.removed)
                if not self.rib.pending:  # the batch's last part
                    if programmed >= TRIM_AFTER_ROUTES:
                        await in_kernel
                        _return_freed_memory()
                    programmed = 0
        finally:
            if in_kernel is not None:
                in_kernel.cancel()
            self._programming_runs = False
            self._hold_collector(False)

    def _hold_collector(self, hold: bool) -> None:
        # only while _programming runs: it is what lets go
        hold = hold and self._programming_runs
        if hold != self._collector_held:
            (collector.pause if hold else collector.resume)()
            self._collector_held = hold

    async def _secrets_changed(self) -> bool:
        """Whether a secret some session's password came from now holds something else (or
        appeared, or went). Calico's confd watches the secrets; here they are looked at."""
        changed = sorted({ref.name for ref, seen in self._secrets_read.items()
                          if await self.secrets.version(ref) != seen})
        if changed:
            log.info("BGP password secret %s changed: configuring BGP again", ", ".join(changed))
        return bool(changed)

    async def _housekeeping(self) -> None:
        """Expire stale routes when their restart time is up, sweep adopted routes once every
        peer has sent End-of-RIB, every `resync` seconds check the kernel in full, and configure
        BGP again when a secret holding a session's password changed (looked at every
        SECRET_CHECK_SECONDS while there is one: not every round, which may come every 50 ms,
        as a look may be a request to the apiserver)."""
        last_full = last_secrets = -float("inf")
        while True:
            now = time.monotonic()
            if now - last_secrets >= SECRET_CHECK_SECONDS:
                last_secrets = now
                if await self._secrets_changed():
                    self._configure_due.set()
            try:
                if self.rib is not None:
                    self.rib.expire(now)
                    self._fib_due.set()
                    if not self.programmer.swept and self._sweep_due():
                        await self.programmer.sweep(self.rib)
                if now - last_full >= self.resync:
                    if self._config is not None:
                        await self.programmer.own_blocks(self.table.current.blocks, check=True)
                    await self.programmer.reconcile()
                    last_full = now
            except Exception as err:  # the next round tries again
                log.warning("checking the kernel's routes failed: %s", err)
            wait = self.resync - (time.monotonic() - last_full)
            expiry = self.rib.next_expiry() if self.rib is not None else None
            if expiry is not None:
                wait = min(wait, max(0.05, expiry - time.monotonic()))
            if not self.programmer.swept:
                wait = min(wait, 1.0)
            if self._secrets_read:
                wait = min(wait, SECRET_CHECK_SECONDS - (time.monotonic() - last_secrets))
            try:
                # not wait_for: see bgpd/speaker.py's wait_connected
                async with asyncio.timeout(max(wait, 0.05)):
                    await self._housekeeping_due.wait()
            except TimeoutError:
                pass
            self._housekeeping_due.clear()

    def _sweep_due(self) -> bool:
        if time.monotonic() - self._started > peering.DEFAULT_RESTART_TIME:
            return True
        return bool(self.peers) and all(
            status.state == "up" and address in self._end_of_rib
            for address, status in self.peers.items())
