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
The whole table is walked for one peer when its session comes up or its own settings change,
and for all when what every session depends on changes (pools with disableBGPExport, the
cluster ID, a peer's client status, the communities) or a send failed.

The node's own announcements (bgpd/announcer.py) and what is passed on share ExaBGP's
per-neighbour table, where a route is known by its prefix alone: a withdrawal of a passed-on
route would take an own announcement of the same prefix with it. So a prefix the node
announces to a peer itself is never passed on to it nor withdrawn from it here; when it becomes
the node's own there, what was passed on for it is forgotten (the own announcement replaced
it), and when it stops being so, it is looked at again. Per peer: once a BGPFilter gives each
neighbour its own table, a peer whose filter keeps an own prefix away still holds what was
passed on for it, which is then withdrawn. More-specifics of the node's own blocks stay home too, as
calico_aggr() keeps them (another node's /32 borrowed from one of our blocks). So do routes
outside every IP pool, which the RIB holds only as a BGPFilter import Accept let them in
(`Rib.outside_pools`): calico_export_to_bgp_peers passes on pool routes only, so such a route
goes to a peer only as an export Accept of that peer's filters sends it.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Collection, Iterable, Mapping
from typing import TYPE_CHECKING

from percale.bgpd.communities import CommunityRule, communities_for
from percale.bgpd.exabgp_json import RibFeed
from percale.bgpd.filters import rules_key, session_filters, verdict
from percale.bgpd.pass_on import NO_COMMUNITIES, Outgoing, Reflection, held_back, may_pass_on
from percale.bgpd.peering import Session
from percale.bgpd.prefixes import Prefix
from percale.bgpd.rib import Peer, Rib
from percale.bgpd.seams import Speaker

if TYPE_CHECKING:
    from percale.api import BGPFilter

log = logging.getLogger("percale.bgpd.relay")

# One ExaBGP command carries a route to this many neighbours at most (`neighbor A , neighbor B
# announce route ...`): a reflector's clients get the same text, and ExaBGP answers each command
# in about 0.75 ms, so one per client was 0.4 s of waiting per claimed block with 500 clients.
NEIGHBOURS_PER_COMMAND = 50


class Relay:
    def __init__(self, speaker: Speaker) -> None:
        self.speaker = speaker
        self.sent: dict[str, dict[Prefix, str]] = {}  # peer -> prefix -> the announcement sent
        self._sessions: list[Session] = []
        self.active = False  # may_pass_on(sessions): the RIB should watch best paths for us
        self._held: tuple[Prefix, ...] = ()  # pools with disableBGPExport
        self._reflection: Reflection | None = None
        self._communities: tuple[CommunityRule, ...] = ()  # prefixAdvertisements
        self._own: frozenset[str] = frozenset()  # what the node announces itself
        # While the announcer tells each neighbour its own table (a session filters its
        # exports): per peer, what it was told of as ours; else None and `_own` is every peer's.
        self._own_of: dict[str, frozenset[str]] | None = None
        self._own_blocks: tuple[Prefix, ...] = ()
        self._shared: object = None  # what every session's routes depend on
        self._each: dict[str, tuple] = {}  # peer -> what its own routes depend on
        self._filters_of: dict[str, tuple[BGPFilter, ...]] = {}  # peer -> its BGPFilters
        # peer -> the peer as its session describes it, until the RIB knows its BGP Identifier
        self._described: dict[str, Peer] = {}
        # The peers whose routes must be worked out from the whole table; None: every peer.
        self._due: set[str] | None = set()
        self._resend: set[str] = set()  # peers whose sessions came up: sent everything again
        self._recheck: set[Prefix] = set()  # prefixes to look at again, the RIB aside
        self._blocks_changed: tuple[Prefix, ...] = ()  # own blocks gained or lost

    @property
    def behind(self) -> bool:
        """Whether anything is due besides the RIB's changes."""
        return (self._due is None or bool(self._due) or bool(self._recheck)
                or bool(self._blocks_changed))

    # -- what the agent tells it ---------------------------------------------------------------

    def configure(self, sessions: list[Session], no_export_pools: Iterable[str],
                  cluster_id: str | None = None,
                  filters: Mapping[str, BGPFilter] | None = None) -> bool:
        """Take the node's sessions, its pools with disableBGPExport and its cluster ID (None:
        it reflects nothing). Returns whether what may be passed on changed. A session whose
        own settings changed is worked out again alone: a node joining a reflector's cluster
        costs the reflector no walk of its table for the others. A new session needs nothing
        now: it is sent everything when it comes up (`session_up`)."""
        held = tuple(sorted({ipaddress.ip_network(c) for c in no_export_pools}, key=str))
        clients = frozenset(ipaddress.ip_address(s.peer_address) for s in sessions
                            if s.route_reflector_client)
        active = may_pass_on(sessions, reflecting=cluster_id is not None)
        filters_of = {s.peer_address: session_filters(s, filters or {}) for s in sessions}
        each = {s.peer_address: (s.family, s.peer_as, s.local_as, s.keep_next_hop, s.next_hop_self,
                                 rules_key(filters_of[s.peer_address]),
                                 s.route_reflector_client) for s in sessions}
        # What was sent to a peer no longer configured stays known: should it be configured
        # again before ExaBGP's reload drops it, ExaBGP still holds those routes for it.
        self._sessions, self._filters_of = sessions, filters_of
        self._described = {s.peer_address: Peer(s.peer_address, s.peer_as, s.local_as)
                           for s in sessions}
        shared = (held, cluster_id, active)
        changed = {a for a, settings in each.items()
                   if a in self._each and self._each[a] != settings}
        reflection = None if cluster_id is None else Reflection(
            ipaddress.IPv4Address(cluster_id), clients)
        if shared == self._shared and not changed:
            # A session added as a client is one now (it is sent everything when it comes up).
            self._each, self._reflection = each, reflection
            return False
        if shared != self._shared or any(self._each[a][-1] != each[a][-1] for a in changed):
            # A client becoming a non-client (or the reverse) changes what the others get.
            self._due = None
        elif self._due is not None:
            self._due |= changed
        self._shared, self._each, self._held, self.active = shared, each, held, active
        self._reflection = reflection
        return True

    def set_communities(self, rules: tuple[CommunityRule, ...]) -> bool:
        """Take the communities the node's prefixAdvertisements add to what it exports. Returns
        whether they changed; then every route passed on is due again."""
        if rules == self._communities:
            return False
        self._communities = rules
        self._due = None
        return True

    def set_own(self, prefixes: Collection[str], blocks: Collection[str],
                per_peer: Mapping[str, Collection[str]] | None = None) -> bool:
        """Take what the node announces itself (to every peer, or with `per_peer` to each peer
        its own table, as the announcer says it) and its own blocks. Returns whether anything
        is due. For each peer, a prefix that became its own is forgotten here (the own
        announcement took its place in ExaBGP), and one that stopped being so is looked at
        again."""
        own = frozenset(prefixes)
        own_of = None if per_peer is None else {p: frozenset(t) for p, t in per_peer.items()}
        own_blocks = tuple(sorted({ipaddress.ip_network(b) for b in blocks}, key=str))
        if own == self._own and own_of == self._own_of and own_blocks == self._own_blocks:
            return False
        peers = {s.peer_address for s in self._sessions} | set(self.sent)
        for peer in peers:
            before, after = self._own_table(peer), (own if own_of is None else own_of.get(peer, frozenset()))
            for prefix in after - before:
                self._forget(peer, ipaddress.ip_network(prefix))
            self._recheck.update(ipaddress.ip_network(p) for p in before - after)
        if own_blocks != self._own_blocks:
            self._blocks_changed += tuple(set(own_blocks) ^ set(self._own_blocks))
        self._own, self._own_of, self._own_blocks = own, own_of, own_blocks
        return True

    def session_up(self, peer: str) -> None:
        """`peer`'s session came up: it is sent everything, as ExaBGP may have kept nothing."""
        self._resend.add(peer)
        if self._due is not None:
            self._due.add(peer)

    def speaker_restarted(self) -> None:
        """A fresh ExaBGP has sent nobody anything (every session comes up again)."""
        self.sent.clear()

    # -- sending -------------------------------------------------------------------------------

    async def catch_up(self, rib: Rib, feed: RibFeed | None, up: Collection[str]) -> None:
        """Send the sessions that are `up` what changed: for the prefixes whose best path
        changed and those due a look, and the whole table to the peers due it. After a
        failure, everything is due again."""
        try:
            await self._catch_up(rib, feed, up)
        except BaseException:
            self._due = None
            raise

    async def _catch_up(self, rib: Rib, feed: RibFeed | None, up: Collection[str]) -> None:
        if not self.active or self._due is None:
            # Every prefix looked at now, for every peer due; or nothing to pass on (a
            # mesh-only node), and only what was sent before goes, once.
            rib.take_best_changes()
            self._recheck.clear()
            self._blocks_changed = ()
            if self._due is None or self._due:
                await self._whole_table(rib, feed, up, self._due)
            self._due = set()
            return
        prefixes = dict.fromkeys(rib.take_best_changes())
        prefixes.update(dict.fromkeys(self._recheck))
        if self._blocks_changed:
            changed_blocks, self._blocks_changed = self._blocks_changed, ()
            prefixes.update(dict.fromkeys(p for p in rib.fib if held_back(p, changed_blocks)))
        self._recheck = set()
        if prefixes:
            targets = self._targets(feed, up)
            outside = rib.accepts_outside_pools
            for prefix in prefixes:
                best = rib.best(prefix)
                held = self._held_back(prefix) or (
                    outside and best is not None and rib.outside_pools(prefix))
                route = None if best is None else Outgoing(best, self._reflection,
                                                           self._adding(prefix))
                key = str(prefix)
                plan: dict[str | None, list[str]] = {}  # what to send -> to whom
                for session, peer in targets:
                    address = session.peer_address
                    if self._own_prefix(address, key):
                        continue
                    text = None if route is None else self._decide(route, held, session, peer)
                    sent = self.sent.get(address)
                    if text != (sent.get(prefix) if sent else None):
                        plan.setdefault(text, []).append(address)
                for text, addresses in plan.items():
                    await self._send(addresses, prefix, text)
        if self._due:
            due, self._due = self._due, set()
            await self._whole_table(rib, feed, up, due)

    async def _whole_table(self, rib: Rib, feed: RibFeed | None, up: Collection[str],
                           due: set[str] | None) -> None:
        # Each prefix judged once, not once per session: a reflector has hundreds.
        candidates: list[tuple[str, Prefix, Outgoing, bool]] = []
        if self.active:
            outside = rib.accepts_outside_pools
            for prefix in rib.fib:
                best = rib.best(prefix)
                if best is not None:
                    candidates.append((str(prefix), prefix,
                                       Outgoing(best, self._reflection, self._adding(prefix)),
                                       self._held_back(prefix)
                                       or (outside and rib.outside_pools(prefix))))
            candidates.sort(key=lambda item: item[0])
        # What to send, per route and text, to whom: withdrawals first, each prefix once for
        # all the peers it goes to.
        withdrawals: dict[Prefix, list[str]] = {}
        announcements: dict[tuple[Prefix, str], list[str]] = {}
        done = []
        for session, peer in self._targets(feed, up):
            address = session.peer_address
            if due is not None and address not in due:
                continue
            resend = address in self._resend
            want: dict[Prefix, str] = {}
            for key, prefix, route, held in candidates:
                if self._own_prefix(address, key):
                    continue
                text = self._decide(route, held, session, peer)
                if text is not None:
                    want[prefix] = text
            sent = self.sent.get(address, {})
            for prefix in sent.keys() - want.keys():
                if self._own_prefix(address, str(prefix)):
                    self._forget(address, prefix)  # the own announcement took its place
                else:
                    withdrawals.setdefault(prefix, []).append(address)
            for prefix, text in want.items():
                if resend or sent.get(prefix) != text:
                    announcements.setdefault((prefix, text), []).append(address)
            done.append(address)
        for prefix in sorted(withdrawals, key=str):
            await self._send(withdrawals[prefix], prefix, None)
        for (prefix, text) in sorted(announcements, key=lambda item: str(item[0])):
            await self._send(announcements[(prefix, text)], prefix, text)
        self._resend.difference_update(done)

    def _targets(self, feed: RibFeed | None, up: Collection[str]) -> list[tuple[Session, Peer | None]]:
        """The sessions that are up, each with its peer as the RIB knows it (a reflector needs
        the peer's BGP Identifier), or as its session describes it until the RIB knows it."""
        if not self._reflection:
            return [(s, None) for s in self._sessions if s.peer_address in up]
        described = self._described
        targets = []
        for s in self._sessions:
            if s.peer_address in up:
                peer = described[s.peer_address]
                # Looked up by the parsed address: parsing 500 of them is most of a change's cost.
                known = feed.peer(peer.address) if feed is not None else None
                targets.append((s, known or peer))
        return targets

    def _own_table(self, peer: str) -> frozenset[str]:
        """What `peer` was told of as the node's own."""
        return self._own if self._own_of is None else self._own_of.get(peer, frozenset())

    def _own_prefix(self, peer: str, prefix: str) -> bool:
        own = self._own_table(peer)
        return bool(own) and prefix in own

    def _held_back(self, prefix: Prefix) -> bool:
        """Inside a pool with disableBGPExport, or more specific than one of our blocks."""
        return held_back(prefix, self._held) or (
            bool(self._own_blocks) and held_back(prefix, self._own_blocks))

    def _adding(self, prefix: Prefix) -> tuple:
        return communities_for(prefix, self._communities) if self._communities else NO_COMMUNITIES

    def _decide(self, route: Outgoing, held: bool, session: Session,
                peer: Peer | None) -> str | None:
        """What `session` gets of `route`: its BGPFilters first (bgpd/filters.py), then Calico's
        own export filter (`held`: a no-export pool, inside an own block, or outside every pool;
        the route's `adding`: the prefixAdvertisements' communities), which a filter's Accept
        skips."""
        found = self._filters_of.get(session.peer_address)
        if found:
            best = route.best
            said = verdict(found, "export", best.prefix, ibgp=session.peer_as == session.local_as,
                           path=best, local_as=session.local_as)
            if said == "Reject":
                return None
            if said == "Accept":
                if route.adding is not NO_COMMUNITIES:
                    route = Outgoing(best, self._reflection)
                return self._text(route, session, peer)
        return None if held else self._text(route, session, peer)

    def _text(self, route: Outgoing, session: Session, peer: Peer | None) -> str | None:
        try:
            return route.to(session, peer)
        except ValueError as err:
            # The sender's OPEN is not seen yet: the prefix is looked at again a moment later
            # (the agent's retry while `behind`).
            log.debug("%s", err)
            self._recheck.add(route.best.prefix)
            return None

    async def _send(self, addresses: list[str], prefix: Prefix, text: str | None) -> None:
        """`text` (None: the withdrawal of `prefix`) to each of `addresses`, a few tens of
        neighbours per command, each remembered as sent once ExaBGP has taken it."""
        for start in range(0, len(addresses), NEIGHBOURS_PER_COMMAND):
            chunk = addresses[start:start + NEIGHBOURS_PER_COMMAND]
            selector = " , ".join(f"neighbor {address}" for address in chunk)
            await self.speaker.send(f"{selector} withdraw route {prefix}" if text is None
                                    else f"{selector} {text}")
            for address in chunk:
                self._remember(address, prefix, text)

    def _remember(self, address: str, prefix: Prefix, text: str | None) -> None:
        if text is not None:
            self.sent.setdefault(address, {})[prefix] = text
        else:
            self._forget(address, prefix)

    def _forget(self, address: str, prefix: Prefix) -> None:
        sent = self.sent.get(address)
        if sent is not None:
            sent.pop(prefix, None)  # type: ignore[call-overload]
            if not sent:
                del self.sent[address]
