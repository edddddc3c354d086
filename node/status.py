"""percale-node's BGP status, for `percalectl node status` (calico.md §5.2): taken from the BGP
driver's peer table, answered on a unix socket, and published cluster-wide as a NodeStatus.

    NodeView, PeerRow        what `node status` shows: is BGP running, and one row per peer (pure)
    view_of                  the BGP driver's state as a NodeView
    to_json / from_json      the socket's form: one JSON document per connection
    routes_of                the routes the driver learned and programmed, capped per family
    status_record / view_of_record / staleness
                             the NodeStatus form (Calico's CalicoNodeStatus fields)
    serve_status             the socket server (mode 0600, like the CNI socket)
    NodeStatusPublisher      writes NodeStatus `<node>` every updatePeriodSeconds and whenever a
                             peer changes state

percale/node/main.py starts `serve_status` next to the CNI server and runs the publisher as a
task; percale/cli/node_cmd.py reads both forms and draws calicoctl's text.

"BGP running" means ExaBGP's process is alive. The driver starts ExaBGP only once this node's
Node has a BGP address, so a node without one reports BGP as not running, as a VXLAN-only
Calico node reports BIRD.
"""

from __future__ import annotations

import asyncio
import heapq
import ipaddress
import json
import logging
import math
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from typing import TYPE_CHECKING, Any

from percale.bgpd.peering import GLOBAL, MESH, NODE
from percale.ipc.unix_server import serve_unix
from percale.datastore import (
    AlreadyExists,
    Conflict,
    Datastore,
    DatastoreError,
    Key,
    KVPair,
    NotFound,
)
from percale.api import NodeStatus, NodeStatusSpec, ObjectMeta
from percale.api.fields import format_time, parse_time
from percale.api.nodestatus import (
    BGPDaemonStatus,
    NodeAgentStatus,
    NodeBGPStatus,
    NodePeerStatus,
    NodeRoutesStatus,
    NodeRouteStatus,
    NodeStatusStatus,
    RouteLearnedFrom,
)

if TYPE_CHECKING:
    from percale.bgpd.controller import BGPController

log = logging.getLogger("percale.node.status")

DEFAULT_STATUS_SOCKET = "/var/run/percale/status.sock"
# Calico's default refresh period for a CalicoNodeStatus.
DEFAULT_UPDATE_PERIOD_SECONDS = 10
# A record not refreshed for this many periods is stale: its agent is gone or cannot write.
STALE_AFTER_PERIODS = 3
# What a record the agent creates for itself asks for.
OWN_CLASSES = ["Agent", "BGP", "Routes"]
# The routes list of each family stops at this many entries (the lowest destinations first):
# the record is rewritten every updatePeriodSeconds, and a node that learned a large table
# would otherwise write hundreds of kilobytes to the datastore each time (etcd refuses values
# over 1.5 MB). Calico's CalicoNodeStatus lists every route; the cap is percale's.
MAX_ROUTES_PER_FAMILY = 200

try:
    _EXABGP_VERSION: str | None = f"ExaBGP {metadata.version('exabgp')}"
except metadata.PackageNotFoundError:
    _EXABGP_VERSION = None


# -- what `node status` shows ------------------------------------------------------------------


@dataclass(frozen=True)
class PeerRow:
    """One row of the IPv4 or IPv6 table, in BIRD's words as calicoctl shows them."""

    address: str
    family: int  # 4 or 6
    kind: str  # PEER TYPE: node-to-node mesh, global, node specific
    state: str  # STATE: BIRD's protocol state, up or start
    info: str  # INFO: the BGP state and any reason: Established, Connect, Passive (...)
    since: datetime | None  # aware; SINCE shows it in local time


@dataclass(frozen=True)
class NodeView:
    bgp_running: bool
    peers: tuple[PeerRow, ...] = ()
    # For the NodeStatus record's agent entries; the socket's form leaves them out.
    router_id: str | None = None
    boot_time: datetime | None = None  # when the running ExaBGP started
    reconfiguration_time: datetime | None = None  # when it last took a new configuration

    def table(self) -> tuple:
        """The part whose change is published at once: running, and each peer's state."""
        return self.bgp_running, tuple((p.address, p.state, p.info) for p in self.peers)


def view_of(controller: BGPController) -> NodeView:
    """The driver's state now. Its peer table lists every configured session, mesh first, then
    global, then node-specific peers: the order calicoctl shows BIRD's protocols in."""
    process = controller.speaker.process
    if process is None or process.returncode is not None:
        # No BGP address yet, or ExaBGP died and is being restarted: its sessions are gone.
        return NodeView(bgp_running=False, router_id=controller.router_id)
    rows = tuple(
        PeerRow(address, status.session.family, status.session.kind, status.state, status.info,
                datetime.fromtimestamp(status.since, timezone.utc))
        for address, status in list(controller.peers.items())
    )
    return NodeView(True, rows, router_id=controller.router_id,
                    boot_time=_utc(controller.speaker.started_at),
                    reconfiguration_time=_utc(controller.speaker.reconfigured_at))


def _utc(seconds: float | None) -> datetime | None:
    return None if seconds is None else datetime.fromtimestamp(seconds, timezone.utc)


def routes_of(controller: BGPController,
              limit: int = MAX_ROUTES_PER_FAMILY) -> NodeRoutesStatus:
    """The routes of `status.routes`, per family, sorted by destination, at most `limit` each:

      * FIB, learned from Static: each of the node's own blocks, blackholed in the kernel;
      * FIB, learned from NodeMesh or BGPPeer: each next hop of a prefix the RIB chose and the
        agent programs into the kernel (one entry per ECMP next hop), with the peer that sent it;
      * RIB: every other path a peer sent for that prefix that import policy accepts, not
        chosen (a backup).

    The interface is left out: the kernel picks it from the next hop, and asking it for every
    route would cost a netlink dump per record. Only the first `limit` destinations of each
    family are looked at (heapq.nsmallest), so a large table costs one pass, not a sort.
    """
    rib = controller.rib
    if rib is None:
        return NodeRoutesStatus()
    kinds = {address: status.session.kind for address, status in list(controller.peers.items())}
    own = [ipaddress.ip_network(b) for b in controller.desired.blocks]
    found: dict[int, list[NodeRouteStatus]] = {4: [], 6: []}
    for version in (4, 6):
        entries: list[tuple[object, NodeRouteStatus]] = []
        blocks = heapq.nsmallest(limit, (b for b in own if b.version == version))
        entries += [(b, NodeRouteStatus(type="FIB", destination=str(b),
                                        learned_from=RouteLearnedFrom(source_type="Static")))
                    for b in blocks]
        fib = rib.fib
        for prefix in heapq.nsmallest(limit, (p for p in fib if p.version == version)):
            next_hops = fib[prefix]
            paths = sorted(rib.candidates(prefix), key=lambda p: (p.next_hop, p.peer.address))
            installed: set[object] = set()
            for path in paths:
                chosen = path.next_hop in next_hops and path.next_hop not in installed
                if chosen:
                    installed.add(path.next_hop)
                peer = str(path.peer.address)
                source = "NodeMesh" if kinds.get(peer) == MESH else "BGPPeer"
                entries.append((prefix, NodeRouteStatus(
                    type="FIB" if chosen else "RIB", destination=str(prefix),
                    gateway=str(path.next_hop),
                    learned_from=RouteLearnedFrom(source_type=source, peer_ip=peer))))
        # Own blocks and learned prefixes never overlap (the RIB refuses our own blocks back).
        entries.sort(key=lambda entry: entry[0])
        found[version] = [route for _, route in entries[:limit]]
    return NodeRoutesStatus(routes_v4=found[4], routes_v6=found[6])


# -- the socket's form -------------------------------------------------------------------------


def to_json(node: str, view: NodeView) -> dict[str, Any]:
    return {
        "agent": {"running": True, "node": node},
        "bgp": {
            "running": view.bgp_running,
            "peers": [
                {"address": p.address, "family": p.family, "kind": p.kind, "state": p.state,
                 "info": p.info, "since": format_time(p.since) if p.since else None}
                for p in view.peers
            ],
        },
    }


def from_json(document: Any) -> NodeView:
    """The agent's answer as a NodeView; ValueError if it is not one."""
    try:
        bgp = document["bgp"]
        peers = tuple(
            PeerRow(str(p["address"]), int(p["family"]), str(p["kind"]), str(p["state"]),
                    str(p["info"]), parse_time(p["since"]) if p.get("since") else None)
            for p in bgp["peers"]
        )
        return NodeView(bool(bgp["running"]), peers)
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise ValueError(f"the agent's answer is not a status document ({err!r})") from None


# -- the NodeStatus form -----------------------------------------------------------------------

_RECORD_TYPE = {MESH: "NodeMesh", GLOBAL: "GlobalPeer", NODE: "NodePeer"}
_KIND_OF_TYPE = {v: k for k, v in _RECORD_TYPE.items()}
_SESSION_STATES = {"Idle", "Connect", "Active", "OpenSent", "OpenConfirm", "Established", "Close"}


def session_state(info: str) -> str:
    """The INFO column's BGP state in CalicoNodeStatus's words. BIRD prints `Passive` for a
    passive session in the Active state, so the record says Active (RFC 4271 §8.2.2)."""
    word = info.split(" ", 1)[0]
    word = "Active" if word == "Passive" else word
    return word if word in _SESSION_STATES else "Idle"


def status_record(classes: list[str], view: NodeView, now: datetime,
                  routes: NodeRoutesStatus | None = None) -> NodeStatusStatus:
    """The `status` of a NodeStatus asking for `classes`; `routes` (routes_of) fills class
    Routes. ExaBGP serves both families, so the two daemon entries Calico keeps for bird and
    bird6 say the same: the router ID is an IPv4 address for IPv6 sessions too (RFC 6286)."""
    agent = bgp = routes_status = None
    if "Agent" in classes:
        daemon = BGPDaemonStatus(
            state="Ready" if view.bgp_running else "NotReady", version=_EXABGP_VERSION,
            router_id=view.router_id,
            last_boot_time=format_time(view.boot_time) if view.boot_time else None,
            last_reconfiguration_time=(format_time(view.reconfiguration_time)
                                       if view.reconfiguration_time else None))
        agent = NodeAgentStatus(bgp_v4=daemon, bgp_v6=daemon)
    if "BGP" in classes:
        peers: dict[int, list[NodePeerStatus]] = {4: [], 6: []}
        established = {4: 0, 6: 0}
        for p in view.peers:
            state = session_state(p.info)
            established[p.family] += state == "Established"
            peers[p.family].append(NodePeerStatus(
                peer_ip=p.address, type=_RECORD_TYPE.get(p.kind, "NodePeer"), state=state,
                since=format_time(p.since) if p.since else None))
        bgp = NodeBGPStatus(
            number_established_v4=established[4],
            number_not_established_v4=len(peers[4]) - established[4],
            number_established_v6=established[6],
            number_not_established_v6=len(peers[6]) - established[6],
            peers_v4=peers[4], peers_v6=peers[6])
    if "Routes" in classes:
        routes_status = routes or NodeRoutesStatus()
    return NodeStatusStatus(last_updated=format_time(now), agent=agent, bgp=bgp,
                            routes=routes_status)


def view_of_record(record: NodeStatus) -> NodeView:
    """What a NodeStatus says, as `node status` shows it. STATE is up for an established
    session and start otherwise, as BIRD's protocol state is."""
    status = record.status or NodeStatusStatus()
    daemons = [d for d in (status.agent.bgp_v4, status.agent.bgp_v6) if d] if status.agent else []
    if daemons:
        running = any(d.state == "Ready" for d in daemons)
    else:
        running = status.bgp is not None
    rows: list[PeerRow] = []
    if status.bgp is not None:
        for family, peers in ((4, status.bgp.peers_v4), (6, status.bgp.peers_v6)):
            rows.extend(
                PeerRow(p.peer_ip, family, _KIND_OF_TYPE[p.type],
                        "up" if p.state == "Established" else "start", p.state,
                        parse_time(p.since) if p.since else None)
                for p in peers)
    return NodeView(running, tuple(rows))


def staleness(record: NodeStatus, now: datetime) -> float | None:
    """The record's age in seconds if it is stale (older than STALE_AFTER_PERIODS update
    periods); None if it is fresh or asks not to be refreshed (updatePeriodSeconds 0); inf if
    its status was never written."""
    last = record.status.last_updated if record.status else None
    if last is None:
        return math.inf
    period = record.spec.update_period_seconds
    age = (now - parse_time(last)).total_seconds()
    if period == 0 or age <= STALE_AFTER_PERIODS * period:
        return None
    return age


# -- the socket --------------------------------------------------------------------------------


async def serve_status(controller: BGPController, node: str,
                       path: str = DEFAULT_STATUS_SOCKET) -> asyncio.AbstractServer:
    """Listen on `path` (mode 0600: calicoctl node status, too, is for root on the node). Each
    connection gets the status as one JSON line, then the server closes it; nothing is read."""
    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            writer.write(json.dumps(to_json(node, view_of(controller))).encode() + b"\n")
            await writer.drain()
        except ConnectionError:
            pass  # the client gave up; nothing to tell it
        except Exception:  # a bug must not take the server down; the client sees the socket close
            log.exception("answering a status request failed")
        finally:
            writer.close()

    return await serve_unix(on_connect, path)


# -- the NodeStatus record ---------------------------------------------------------------------


class NodeStatusPublisher:
    """Keeps NodeStatus `<node>` current: creates it if missing (classes Agent and BGP, Calico's
    default period), rewrites its status every updatePeriodSeconds the record asks for, and at
    once when BGP starts or stops or a peer changes state. Writes are compare-and-swap, so an
    edit of the spec made meanwhile is kept. Datastore failures are logged and retried with
    backoff; they never stop the agent."""

    # The driver has no change callback; looking at its in-memory table this often costs nothing.
    POLL_SECONDS = 0.5
    CAS_ATTEMPTS = 10
    FIRST_BACKOFF_SECONDS = 1.0
    MAX_BACKOFF_SECONDS = 30.0

    def __init__(self, store: Datastore, node: str, controller: BGPController, *,
                 default_period: int = DEFAULT_UPDATE_PERIOD_SECONDS):
        self.store, self.node, self.controller = store, node, controller
        self.default_period = default_period
        self._warned_foreign = False

    async def run(self) -> None:
        written: tuple | None = None  # the peer table last published
        due = retry_at = 0.0  # monotonic
        backoff = self.FIRST_BACKOFF_SECONDS
        while True:
            view = view_of(self.controller)
            now = time.monotonic()
            if now >= retry_at and (view.table() != written or now >= due):
                try:
                    period = await self.publish(view)
                except DatastoreError as err:
                    log.warning("writing NodeStatus %s failed, retrying in %.0fs: %s",
                                self.node, backoff, err)
                    retry_at, backoff = now + backoff, min(backoff * 2, self.MAX_BACKOFF_SECONDS)
                except Exception:  # a bug here must not take BGP or CNI down with it
                    log.exception("writing NodeStatus %s failed", self.node)
                    retry_at, backoff = now + backoff, min(backoff * 2, self.MAX_BACKOFF_SECONDS)
                else:
                    written, backoff = view.table(), self.FIRST_BACKOFF_SECONDS
                    # Period 0 asks for no refresh; look at the record again after the default.
                    due = now + (period or self.default_period)
            await asyncio.sleep(self.POLL_SECONDS)

    async def publish(self, view: NodeView) -> int:
        """Write `view` into the record; returns the record's update period (0: left alone)."""
        key = Key("NodeStatus", self.node)
        current = await self._read(key)
        for _ in range(self.CAS_ATTEMPTS):
            now = datetime.now(timezone.utc)
            if current is None:
                spec = NodeStatusSpec(node=self.node, classes=list(OWN_CLASSES),
                                      update_period_seconds=self.default_period)
                record = NodeStatus(metadata=ObjectMeta(name=self.node), spec=spec,
                                    status=status_record(spec.classes, view, now,
                                                         self._routes(spec.classes)))
                try:
                    await self.store.create(record)
                    return spec.update_period_seconds
                except AlreadyExists:
                    current = await self._read(key)
                    continue
            spec = current.value.spec
            if spec.node != self.node:
                # Someone named a record after this node but pointed it elsewhere: not ours.
                if not self._warned_foreign:
                    log.warning("NodeStatus %s describes node %s; leaving it alone",
                                self.node, spec.node)
                    self._warned_foreign = True
                return 0
            if spec.update_period_seconds == 0:
                return 0  # Calico: 0 means do not refresh
            updated = current.value.model_copy(
                update={"status": status_record(spec.classes, view, now,
                                                self._routes(spec.classes))})
            try:
                await self.store.update(updated, revision=current.revision)
                return spec.update_period_seconds
            except Conflict as err:
                current = err.current  # someone edited it: keep their spec, write ours again
            except NotFound:
                current = None  # deleted meanwhile: create it again
        raise DatastoreError(f"NodeStatus {self.node} kept changing under "
                             f"{self.CAS_ATTEMPTS} attempts to write it")

    def _routes(self, classes: list[str]) -> NodeRoutesStatus | None:
        # Read at each write, not at each poll: walking a large table twice a second for a
        # record written every few seconds would be waste.
        return routes_of(self.controller) if "Routes" in classes else None

    async def _read(self, key: Key) -> KVPair | None:
        try:
            return await self.store.get(key)
        except NotFound:
            return None
