"""ExaBGP 5.0's JSON events, read into `bgpd.rib` terms and applied to a `Rib`.

Where it sits: the speaker's bridge reads ExaBGP's output line by line and hands each line to
`RibFeed.feed()` (or to `parse()` alone). Pure: no I/O, and time is passed in.

The shapes are those of ExaBGP 5.0.15, `exabgp/reactor/api/response/json.py` (JSON version
string "5.0.0"); reference/exabgp.md §1.6 has examples. Every event is one line:

    {"exabgp": "5.0.0", "time": .., "type": "state"|"open"|"update"|.., "neighbor": {
        "address": {"local": .., "peer": ..}, "asn": {"local": .., "peer": ..}, "router-id": ..,
        "direction": "receive",           # open/update; `exabgp decode` writes "in"
        "state": "up", "reason": ..       # type state
        "open": {"router_id": .., "capabilities": {"64": {"name": "graceful restart", ..}}}
        "message": {"eor": {"afi": "ipv4", "safi": "unicast"}}
        "message": {"update": {"attribute": {..},
                               "announce": {"ipv4 unicast": {"<next hop>": [{"nlri": ..}]}},
                               "withdraw": {"ipv4 unicast": [{"nlri": ..}]}}}}}

Quirks this module absorbs, each seen in that source:
- the envelope's "router-id" is OUR router id; the peer's BGP Identifier is only in its OPEN,
  so `receive { open; }` must be on for tie-breaking, reflection and graceful restart;
- an IPv6 route with a global and a link-local next hop (a 32-byte MP_REACH next hop) is listed
  once under each, so the prefix appears twice; the global one is kept;
- with `api.compact` an NLRI is a bare string instead of {"nlri": ..};
- with ADD-PATH each NLRI carries "path-information": "0.0.0.1";
- in the Graceful Restart capability the labels are swapped: a family's Forwarding State bit
  (0x80, RFC 4724 §3) is shown as "restart", and the Restart State bit as "forwarding";
- `done`/`error` acknowledgements and `show` output share the stream: lines that do not start
  with "{" are not events.
"""

from __future__ import annotations

import functools
import ipaddress
import json
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from percale.bgpd.prefixes import parse_prefix
from percale.bgpd.rib import (
    AS_SET, Address, AsPathSegment, NLRI, Origin, Path, PathAttributes, Peer, Rib, as_address,
)

UNICAST_FAMILIES = {"ipv4 unicast": 4, "ipv6 unicast": 6}
_GR_FAMILIES = {"ipv4/unicast": 4, "ipv6/unicast": 6}
_RECEIVED = ("receive", "in")

# FRR's `bgp graceful-restart stalepath-time` default: how long a re-established peer may keep
# stale paths before its End-of-RIB (RFC 4724 §4.2 allows such a bound; without one a peer
# that never sends End-of-RIB keeps them forever, as GoBGP did in reference/exabgp.md §1.7).
DEFAULT_STALE_TIME = 360.0


class MalformedMessage(ValueError):
    """A line that looked like an ExaBGP event but is not one this module can read. The caller
    should log it with the line and go on: one bad line must not stop the reader (a stalled
    reader stalls ExaBGP, reference/exabgp.md §1.1)."""


# ---------------------------------------------------------------- events


@dataclass(frozen=True)
class PeerState:
    """`type: state`: "connected", "up" or "down" (with ExaBGP's reason)."""

    peer: Peer
    state: str
    reason: str = ""


@dataclass(frozen=True)
class GracefulRestart:
    """The Graceful Restart Capability from a peer's OPEN (RFC 4724 §3)."""

    restart_time: int
    # IP version -> the family's Forwarding State bit
    families: Mapping[int, bool] = field(default_factory=dict)
    restarted: bool = False  # the Restart State bit


@dataclass(frozen=True)
class OpenReceived:
    peer: Peer
    router_id: ipaddress.IPv4Address
    hold_time: int
    graceful_restart: GracefulRestart | None


@dataclass(frozen=True)
class UpdateReceived:
    peer: Peer
    announced: tuple[Path, ...]
    withdrawn: tuple[NLRI, ...]


@dataclass(frozen=True)
class EndOfRib:
    peer: Peer
    afi: str
    safi: str

    @property
    def ip_version(self) -> int | None:
        """4 or 6 for unicast, None for a family the RIB does not carry."""
        return UNICAST_FAMILIES.get(f"{self.afi} {self.safi}")


Event = PeerState | OpenReceived | UpdateReceived | EndOfRib


# ---------------------------------------------------------------- parsing


def parse(line: str, peers: Mapping[Address, Peer] | None = None) -> Event | None:
    """One line of ExaBGP output -> an event, or None for anything else (acks, `show` output,
    keepalives, notifications, what we sent, families the RIB does not carry).

    `peers` maps a peer address to the Peer to put on paths (with the BGP Identifier from its
    OPEN); an address missing from it, or whose AS numbers differ, gets a Peer built from the
    envelope. Raises MalformedMessage for a "{" line that is not a readable event.
    """
    line = line.strip()
    if not line.startswith("{"):
        return None
    try:
        message = json.loads(line)
    except json.JSONDecodeError as exc:
        raise MalformedMessage(f"not JSON: {exc}") from None
    try:
        return _event(message, peers or {})
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise MalformedMessage(f"unreadable {message.get('type')!r} event: {exc!r}") from None


def _event(message: dict[str, Any], peers: Mapping[Address, Peer]) -> Event | None:
    kind = message.get("type")
    neighbor = message.get("neighbor")
    if not isinstance(neighbor, dict):
        return None  # e.g. {"type": "notification", "notification": "shutdown"}
    peer = _peer(neighbor, peers)
    if kind == "state":
        return PeerState(peer, neighbor["state"], neighbor.get("reason", ""))
    if neighbor.get("direction") not in _RECEIVED:
        return None
    if kind == "open":
        return _open(peer, neighbor["open"])
    if kind == "update":
        body = neighbor["message"]
        if "eor" in body:
            return EndOfRib(peer, body["eor"]["afi"], body["eor"]["safi"])
        return _update(peer, body["update"])
    return None


def _peer(neighbor: dict[str, Any], peers: Mapping[Address, Peer]) -> Peer:
    address = as_address(neighbor["address"]["peer"])
    asn = neighbor["asn"]
    known = peers.get(address)
    if known is not None and known.asn == asn["peer"] and known.local_asn == asn["local"]:
        return known
    return Peer(address, asn["peer"], asn["local"])


def _open(peer: Peer, body: dict[str, Any]) -> OpenReceived:
    graceful = None
    for capability in body.get("capabilities", {}).values():
        if isinstance(capability, dict) and capability.get("name") == "graceful restart":
            # ExaBGP's labels are swapped (see the module docstring): "restart" on a family is
            # its Forwarding State bit, "forwarding" in restart-flags is the Restart State bit.
            families = {
                _GR_FAMILIES[name]: "restart" in flags
                for name, flags in capability.get("address-family-flags", {}).items()
                if name in _GR_FAMILIES
            }
            graceful = GracefulRestart(
                restart_time=int(capability["time"]),
                families=families,
                restarted="forwarding" in capability.get("restart-flags", []),
            )
    return OpenReceived(peer, ipaddress.IPv4Address(body["router_id"]), int(body["hold_time"]), graceful)


def _update(peer: Peer, body: dict[str, Any]) -> UpdateReceived | None:
    withdrawn: list[NLRI] = []
    for family, entries in body.get("withdraw", {}).items():
        if family in UNICAST_FAMILIES:
            withdrawn.extend(_nlri(entry) for entry in entries)

    announced: list[Path] = []
    announce = {f: by_nh for f, by_nh in body.get("announce", {}).items() if f in UNICAST_FAMILIES}
    if announce:
        attributes = _attributes(body.get("attribute", {}))
        make = Path.with_attributes
        for by_next_hop in announce.values():
            if len(by_next_hop) == 1:
                (next_hop_text, entries), = by_next_hop.items()
                if next_hop_text != "null":  # no usable next hop: nothing to install
                    next_hop = _next_hop(next_hop_text)
                    # The bulk of a large table: every prefix of the UPDATE shares the next hop
                    # and the attributes, so a path is its prefix and two references.
                    network = parse_prefix
                    for entry in entries:
                        if isinstance(entry, str):  # api.compact
                            announced.append(make(network(entry), next_hop, peer, 0, attributes))
                        elif len(entry) == 1:  # {"nlri": ..}
                            announced.append(make(network(entry["nlri"]), next_hop, peer, 0,
                                                  attributes))
                        else:  # with "path-information" (ADD-PATH)
                            nlri = _nlri(entry)
                            announced.append(make(nlri.prefix, next_hop, peer, nlri.path_id,
                                                  attributes))
                continue
            chosen: dict[NLRI, Address] = {}
            for next_hop_text, entries in by_next_hop.items():
                if next_hop_text == "null":
                    continue  # no usable next hop: nothing to install
                next_hop = _next_hop(next_hop_text)
                for entry in entries:
                    nlri = _nlri(entry)
                    if nlri not in chosen or (chosen[nlri].is_link_local and not next_hop.is_link_local):
                        chosen[nlri] = next_hop
            announced.extend(
                make(nlri.prefix, next_hop, peer, nlri.path_id, attributes)
                for nlri, next_hop in chosen.items()
            )
    if not announced and not withdrawn:
        return None
    return UpdateReceived(peer, tuple(announced), tuple(withdrawn))


def _nlri(entry: dict[str, Any] | str) -> NLRI:
    if isinstance(entry, str):  # api.compact
        return NLRI(parse_prefix(entry))
    path_info = entry.get("path-information")
    path_id = int(ipaddress.IPv4Address(path_info)) if path_info else 0
    return NLRI(parse_prefix(entry["nlri"]), path_id)


@functools.lru_cache(maxsize=1024)
def _next_hop(text: str) -> Address:
    """One address object per next hop (a mesh has one per node): the RIB then shares one
    next-hop set between all of a node's prefixes, and compares them by identity."""
    return ipaddress.ip_address(text)


# Equal attribute sets from different UPDATEs share one object; bounded, and started again when
# full (a peer sending a distinct MED per prefix would otherwise grow it without end).
_ATTRIBUTE_SETS_KEPT = 1024
_attribute_sets: dict[PathAttributes, PathAttributes] = {}


def _attributes(attribute: dict[str, Any]) -> PathAttributes:
    """ExaBGP's "attribute" object -> the PathAttributes, parsed once per UPDATE."""
    out: dict[str, Any] = {}
    if "origin" in attribute:
        out["origin"] = Origin[attribute["origin"].upper()]
    if "as-path" in attribute:
        # {"0": {"element": "as-sequence", "value": [..]}, "1": ..}; confederation segments are
        # also labelled as-sequence by ExaBGP 5.0 and cannot be told apart here
        segments = sorted(attribute["as-path"].items(), key=lambda item: int(item[0]))
        out["as_path"] = tuple(
            AsPathSegment(AS_SET if seg["element"] == AS_SET else "as-sequence", tuple(seg["value"]))
            for _, seg in segments
        )
    if "med" in attribute:
        out["med"] = int(attribute["med"])
    if "local-preference" in attribute:
        out["local_pref"] = int(attribute["local-preference"])
    if "originator-id" in attribute:
        out["originator_id"] = ipaddress.IPv4Address(attribute["originator-id"])
    if "cluster-list" in attribute:
        out["cluster_list"] = tuple(ipaddress.IPv4Address(c) for c in attribute["cluster-list"])
    if "community" in attribute:
        out["communities"] = tuple(tuple(c) for c in attribute["community"])
    if "large-community" in attribute:
        out["large_communities"] = tuple(tuple(c) for c in attribute["large-community"])
    attributes = PathAttributes(**out)
    shared = _attribute_sets.get(attributes)
    if shared is None:
        if len(_attribute_sets) >= _ATTRIBUTE_SETS_KEPT:
            _attribute_sets.clear()
        shared = _attribute_sets[attributes] = attributes
    return shared


# ---------------------------------------------------------------- applying


def graceful_down(reason: str, graceful_restart: GracefulRestart | None) -> bool:
    """Whether a `state: down` keeps the peer's paths as stale (RFC 4724 §4.2).

    Only when the peer advertised the Graceful Restart Capability, and the session did not end
    with a NOTIFICATION (RFC 4724 applies to a TCP session that terminates; RFC 8538, which
    extends it to NOTIFICATIONs, needs the N bit ExaBGP 5.0 neither sends nor shows), and the
    neighbour was not removed from ExaBGP's configuration ("stop, message [removed]").
    ExaBGP's own shutdown ("stop, message [shutting down]") keeps them: that is our restart.
    """
    if graceful_restart is None:
        return False
    return not reason.startswith("notification") and "[removed]" not in reason


class RibFeed:
    """Applies ExaBGP's events to a Rib, remembering what it needs across events: each peer's
    BGP Identifier and Graceful Restart Capability, from its last OPEN."""

    def __init__(self, rib: Rib, *, stale_time: float = DEFAULT_STALE_TIME) -> None:
        self.rib = rib
        self.stale_time = stale_time
        self._peers: dict[Address, Peer] = {}
        self._graceful_restart: dict[Address, GracefulRestart | None] = {}
        self._open_seen: set[Address] = set()
        # Peers whose session is Established: ExaBGP also reports `down` for connection attempts
        # that never got there, and those end nothing (and must not sweep routes a restarting
        # peer's graceful restart is keeping).
        self._established: set[Address] = set()
        self._we_restarted: set[Address] = set()
        # Peers no longer configured whose session ExaBGP has not closed yet (a reload waits for
        # its turn): what they still send is not taken.
        self._removed: set[Address] = set()
        # Peers configured again while the session they were removed on is still up (ExaBGP's
        # reload that should have closed it never happened, or the peer came back within it).
        # Their paths were dropped and the peer will not send them again on that session: the
        # caller restarts it (and takes the address out of this set when it has).
        self.to_restart: set[Address] = set()

    def peer(self, address: str | Address) -> Peer | None:
        return self._peers.get(as_address(address))

    def speaker_restarted(self, now: float) -> None:
        """ExaBGP died and a new one started: it said `down` for none of its sessions, yet all
        of them ended. Treat each Established one as going down now (gracefully, if the peer
        offered graceful restart), so its routes are kept stale until it says End-of-RIB."""
        for address in sorted(self._established):
            peer = self._peers.get(address)
            if peer is not None:
                self.apply(PeerState(peer, "down", "ExaBGP restarted"), now)
                # It is our side that restarted: the peer's forwarding state is intact, whatever
                # its OPEN's F bit says, so its paths wait for its End-of-RIB.
                self._we_restarted.add(address)
        self._established.clear()

    def configured(self, addresses: Collection[str], now: float) -> bool:
        """The peers percale's configuration now names. A peer it no longer names loses its
        paths at once, without waiting for ExaBGP's reload to end the session: removing a peer
        is not a restart, so graceful restart keeps nothing. Returns whether any peer went.
        A peer named again before its session ended is put in `to_restart`."""
        wanted = {as_address(a) for a in addresses}
        self.to_restart |= wanted & self._removed & self._established
        self._removed -= wanted
        gone = (set(self._peers) | self._established) - wanted - self._removed
        for address in gone:
            self._removed.add(address)
            self.rib.peer_down(address, now, graceful=False)
        return bool(gone)

    def feed(self, line: str, now: float) -> Event | None:
        """Parse one line and apply it; returns the event (None if the line was not one)."""
        event = parse(line, self._peers)
        if event is not None:
            self.apply(event, now)
        return event

    def apply(self, event: Event, now: float) -> None:
        rib = self.rib
        if isinstance(event, (UpdateReceived, EndOfRib)) and event.peer.address in self._removed:
            return
        if isinstance(event, UpdateReceived):
            rib.update(event.peer, event.announced, event.withdrawn)
        elif isinstance(event, EndOfRib):
            if event.ip_version is not None:
                rib.end_of_rib(event.peer, event.ip_version)
        elif isinstance(event, OpenReceived):
            address = event.peer.address
            self._peers[address] = Peer(address, event.peer.asn, event.peer.local_asn, event.router_id)
            self._graceful_restart[address] = event.graceful_restart
            self._open_seen.add(address)
        elif isinstance(event, PeerState):
            self._state(event, now)

    def _state(self, event: PeerState, now: float) -> None:
        address = event.peer.address
        graceful_restart = self._graceful_restart.get(address)
        if event.state == "up":
            self._established.add(address)
            # With the new session's OPEN read, families whose Forwarding State bit is clear
            # lose their stale paths now (RFC 4724 §4.2); without it, nothing is known.
            preserved: Collection[int] | None = None
            if address in self._we_restarted:
                self._we_restarted.discard(address)
            elif address in self._open_seen:
                families = graceful_restart.families if graceful_restart else {}
                preserved = {version for version, forwarding in families.items() if forwarding}
            self.rib.peer_up(event.peer, now, preserved=preserved, stale_time=self.stale_time)
        elif event.state == "down":
            self._open_seen.discard(address)
            if address not in self._established:
                return
            self._established.discard(address)
            graceful = graceful_down(event.reason, graceful_restart)
            self.rib.peer_down(
                event.peer, now, graceful=graceful,
                restart_time=graceful_restart.restart_time if graceful_restart else 0.0,
                families=set(graceful_restart.families) if graceful_restart else None,
            )
