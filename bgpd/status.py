"""percale-node's BGP status, in the forms `percalectl node status` reads (calico.md §5.2).

    NodeView, PeerRow        what `node status` shows: is BGP running, and one row per peer
    view_of                  the BGP agent's state as a NodeView
    to_json / from_json      the status socket's form: one JSON document per connection
    routes_of                the routes the agent learned and programmed, capped per family
    status_record / view_of_record / staleness
                             the NodeStatus form (Calico's CalicoNodeStatus fields)

Pure: the agent's state in, documents out. node/status.py serves the socket and publishes the
record; ctl/node_cmd.py reads both forms and draws calicoctl's text.

"BGP running" means ExaBGP's process is alive. The agent starts ExaBGP only once this node's
Node has a BGP address, so a node without one reports BGP as not running, as a VXLAN-only
Calico node reports BIRD.
"""

from __future__ import annotations

import heapq
import ipaddress
import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from typing import Any, Protocol

from percale.api import NodeStatus
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
from percale.bgpd.announcements import Announcements
from percale.bgpd.peering import GLOBAL, MESH, NODE
from percale.bgpd.peers import PeerStatus
from percale.bgpd.rib import Rib


class ExaBGPProcess(Protocol):
    @property
    def returncode(self) -> int | None: ...


class SpeakerState(Protocol):
    @property
    def process(self) -> ExaBGPProcess | None: ...
    started_at: float | None
    reconfigured_at: float | None


class BGPState(Protocol):
    """What the status reads of the BGP agent (bgpd.agent.BGPAgent)."""

    @property
    def speaker(self) -> SpeakerState: ...
    @property
    def peers(self) -> Mapping[str, PeerStatus]: ...
    @property
    def rib(self) -> Rib | None: ...
    @property
    def router_id(self) -> str | None: ...
    @property
    def desired(self) -> Announcements: ...


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


class NoBGP:
    """The BGP state of a node that runs no BGP (`--networking-backend vxlan` or `none`): no
    speaker, no peers, nothing learned; ready as far as BGP goes."""

    class _NoSpeaker:
        process = None
        started_at: float | None = None
        reconfigured_at: float | None = None

    speaker = _NoSpeaker()
    peers: dict[str, PeerStatus] = {}
    rib = None
    fib = None
    router_id = None
    desired = Announcements(frozenset(), frozenset())
    synced = True
    reconciled = True


# -- what `node status` shows ------------------------------------------------------------------


@dataclass(frozen=True)
class PeerRow:
    """One row of the IPv4 or IPv6 table, in BIRD's words as calicoctl shows them."""

    address: str
    family: int  # 4 or 6
    kind: str  # PEER TYPE: node-to-node mesh, global, node specific
    state: str  # STATE: BIRD's protocol state, up or start
    info: str  # INFO: the BGP state and any reason: Established, Connect, Passive (...)
    # Aware; SINCE shows it in local time. Text when a NodeStatus record holds a `since` that
    # is not an RFC 3339 time: Calico's is free text (BIRD's own, such as 12:34:56), shown as is.
    since: datetime | str | None


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


def _since_text(since: datetime | str | None) -> str | None:
    return format_time(since) if isinstance(since, datetime) else since


def view_of(bgp: BGPState) -> NodeView:
    """The driver's state now. Its peer table lists every configured session, mesh first, then
    global, then node-specific peers: the order calicoctl shows BIRD's protocols in."""
    process = bgp.speaker.process
    if process is None or process.returncode is not None:
        # No BGP address yet, or ExaBGP died and is being restarted: its sessions are gone.
        return NodeView(bgp_running=False, router_id=bgp.router_id)
    rows = tuple(
        PeerRow(address, status.session.family, status.session.kind, status.state, status.info,
                datetime.fromtimestamp(status.since, timezone.utc))
        for address, status in list(bgp.peers.items())
    )
    return NodeView(True, rows, router_id=bgp.router_id,
                    boot_time=_utc(bgp.speaker.started_at),
                    reconfiguration_time=_utc(bgp.speaker.reconfigured_at))


def _utc(seconds: float | None) -> datetime | None:
    return None if seconds is None else datetime.fromtimestamp(seconds, timezone.utc)


def routes_of(bgp: BGPState,
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
    rib = bgp.rib
    if rib is None:
        return NodeRoutesStatus()
    kinds = {address: status.session.kind for address, status in list(bgp.peers.items())}
    own = [ipaddress.ip_network(b) for b in bgp.desired.blocks]
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
                 "info": p.info, "since": _since_text(p.since)}
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
                since=_since_text(p.since)))
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
    session and start otherwise, as BIRD's protocol state is.

    Without class Agent, whether ExaBGP runs is not reported: a record with class BGP is taken
    as running (it lists the sessions), and one with neither says nothing of BGP at all, which
    `bgp_running` False cannot tell from "not running": ctl/node_cmd.py's render_record looks
    at the classes reported before it draws this view."""
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
                        _moment_or_text(p.since))
                for p in peers)
    return NodeView(running, tuple(rows))


def _moment_or_text(since: str | None) -> datetime | str | None:
    if not since:
        return None
    try:
        return parse_time(since)
    except ValueError:
        return since


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
