"""BGPFilter rules, judged as Calico's confd renders them into BIRD filter functions (pure).

A BGPPeer names BGPFilters in `filters`; on that peer's session each filter's rules for the
direction and family (importV4, exportV6, ...) are tried in order, filter after filter, and the
first rule that matches decides: Accept or Reject. BIRD calls the filters' functions before its
own policy, so:

- import: Reject drops the route; no rule matching leaves it to percale's own import policy
  (the RIB's: pools, loops, own routes, service CIDRs); Accept makes a route outside every IP
  pool a candidate too (a top-of-rack router's default route, an external network), which the
  RIB otherwise refuses: Calico's import and kernel filters end in `accept`, and BIRD installs
  such routes; percale does only when asked (DESIGN.md item 4). Accept overrides that one rule:
  own routes, loops, service CIDRs and the node's own blocks stay refused. Such a route reaches
  the kernel as any BGP route, and goes on to no other peer unless an export Accept sends it
  (Calico's export filter passes on pool routes only; bgpd/relay.py);
- export: Reject keeps the route from that peer; Accept sends it even where Calico's own export
  filter (calico_export_to_bgp_peers) would not: inside a pool with disableBGPExport, a
  more-specific of an own block, and without the prefixAdvertisements' communities, which that
  filter adds; no rule matching leaves Calico's filter to decide. BGP's own rules still hold (a
  route learned over iBGP goes to no iBGP peer unless reflected, none goes back to its source).

What a rule matches, as BIRD reads the rendered condition:
- cidr with matchOperator: Equal `net = cidr`, NotEqual `net != cidr`, In `net ~ cidr` (inside
  it, itself included), NotIn its negation; with prefixLength the CIDR becomes the prefix set
  `[cidr{min,max}]`: the lengths default to the CIDR's own and the family's longest;
- source RemotePeers: the route was learned from a BGP peer (the node's own never are);
- peerType: the session is eBGP or iBGP;
- communities: the route carries the community (the node's own carry none at that point);
- asPathPrefix: the route's AS_PATH begins with those AS numbers; on export to an eBGP peer
  the path BIRD's filter sees already starts with our AS (Calico's BIRD prepends it before the
  filter runs): `[our AS, ...as learned]`, or `[our AS]` for the node's own routes.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Literal

from percale.bgpd.peering import Session
from percale.bgpd.prefixes import Prefix, inside
from percale.bgpd.rib import Path

if TYPE_CHECKING:
    from percale.api import BGPFilter

Direction = Literal["import", "export"]
Verdict = Literal["Accept", "Reject"] | None


def verdict(filters: Sequence[BGPFilter], direction: Direction, prefix: Prefix, *,
            ibgp: bool, path: Path | None = None, local_as: int | None = None) -> Verdict:
    """What the session's `filters` say of a route to `prefix`: `path` is the learned route
    (None: one of the node's own), `ibgp` whether the session is iBGP, `local_as` our AS on it
    (for the AS_PATH an eBGP export is judged by). None: no rule matched."""
    prepend = local_as if direction == "export" and not ibgp else None
    for bgp_filter in filters:
        for rule in _rules(bgp_filter, direction, prefix.version):
            if _matches(rule, prefix, ibgp, path, prepend):
                return rule.action
    return None


def _rules(bgp_filter: BGPFilter, direction: Direction, version: int) -> Iterable:
    spec = bgp_filter.spec
    if direction == "import":
        return spec.import_v4 if version == 4 else spec.import_v6
    return spec.export_v4 if version == 4 else spec.export_v6


def _matches(rule, prefix: Prefix, ibgp: bool, path: Path | None, prepend: int | None) -> bool:
    if rule.cidr is not None and not _cidr_matches(rule, prefix):
        return False
    if rule.source == "RemotePeers" and path is None:
        return False
    if rule.peer_type is not None and (rule.peer_type == "iBGP") != ibgp:
        return False
    if rule.communities is not None:
        if path is None:
            return False
        parts = tuple(int(p) for p in rule.communities.values[0].split(":"))
        held = path.communities if len(parts) == 2 else path.large_communities
        if parts not in held:
            return False
    if rule.as_path_prefix:
        asns = [asn for segment in path.as_path for asn in segment.asns] if path else []
        if prepend is not None:
            asns.insert(0, prepend)
        if asns[:len(rule.as_path_prefix)] != [int(a) for a in rule.as_path_prefix]:
            return False
    return True


def _cidr_matches(rule, prefix: Prefix) -> bool:
    network = ipaddress.ip_network(rule.cidr)
    if network.version != prefix.version:
        return False  # BIRD compares no IPv4 prefix with an IPv6 one
    operator = rule.match_operator
    if operator in ("Equal", "NotEqual"):
        return (prefix == network) == (operator == "Equal")
    within = inside(prefix, network)
    if rule.prefix_length is not None:
        low = max(network.prefixlen, rule.prefix_length.min or 0)
        high = min(network.max_prefixlen, network.max_prefixlen
                   if rule.prefix_length.max is None else rule.prefix_length.max)
        within = within and low <= prefix.prefixlen <= high
    return within == (operator == "In")


def session_filters(session: Session, filters: Mapping[str, BGPFilter]) -> tuple[BGPFilter, ...]:
    """The BGPFilters `session`'s BGPPeer names, in order; a name with no BGPFilter behind it is
    passed over, as confd does."""
    return tuple(filters[name] for name in session.filters if name in filters)


def rules_key(found: Sequence[BGPFilter]) -> tuple[str, ...]:
    """What a session's verdicts depend on, comparable between configurations: a change of it
    makes what was judged by those filters due again."""
    return tuple(repr(f.spec) for f in found)


def _has_rules(found: Sequence[BGPFilter], direction: Direction, version: int) -> bool:
    return any(_rules(f, direction, version) for f in found)


def import_verdicts(sessions: Iterable[Session], filters: Mapping[str, BGPFilter]
                    ) -> dict[str, Callable[[Path], Verdict]]:
    """For each session whose filters have import rules of its family, their verdict on a path
    (the RIB's per-peer import filter, `Rib.set_import_filters`)."""
    verdicts: dict[str, Callable[[Path], Verdict]] = {}
    for session in sessions:
        found = session_filters(session, filters)
        if _has_rules(found, "import", session.family):
            ibgp = session.peer_as == session.local_as
            verdicts[session.peer_address] = functools.partial(_import_verdict, found, ibgp)
    return verdicts


def import_accepting(sessions: Iterable[Session], filters: Mapping[str, BGPFilter]
                     ) -> frozenset[str]:
    """The sessions whose filters have an import Accept rule of their family: only their paths
    outside every IP pool can be candidates, so the RIB asks only them about such prefixes."""
    return frozenset(
        s.peer_address for s in sessions
        if any(r.action == "Accept" for f in session_filters(s, filters)
               for r in _rules(f, "import", s.family)))


def _import_verdict(found: tuple[BGPFilter, ...], ibgp: bool, path: Path) -> Verdict:
    return verdict(found, "import", path.prefix, ibgp=ibgp, path=path)


def export_tables(sessions: Iterable[Session], filters: Mapping[str, BGPFilter],
                  want: Mapping[str, str], withheld: Iterable[str]
                  ) -> dict[str, dict[str, str]] | None:
    """What each session is told of the node's own prefixes, when any session's filters have
    export rules (None: every session gets `want`, prefix -> attributes). A rule that rejects
    keeps the prefix from that session; one that accepts sends it, with our address as next hop
    and no added communities (Calico's own export filter, which adds them and withholds pools
    with disableBGPExport, is not run then), `withheld` prefixes included."""
    sessions = list(sessions)
    found_of = {s.peer_address: session_filters(s, filters) for s in sessions}
    if not any(_has_rules(found_of[s.peer_address], "export", s.family) for s in sessions):
        return None
    candidates = [(p, ipaddress.ip_network(p)) for p in sorted({*want, *withheld})]
    tables: dict[str, dict[str, str]] = {}
    for session in sessions:
        found = found_of[session.peer_address]
        ibgp = session.peer_as == session.local_as
        table: dict[str, str] = {}
        for text, prefix in candidates:
            if prefix.version != session.family:
                continue
            said = verdict(found, "export", prefix, ibgp=ibgp,
                           local_as=session.local_as) if found else None
            if said == "Accept":
                table[text] = "next-hop self"
            elif said is None and text in want:
                table[text] = want[text]
        tables[session.peer_address] = table
    return tables
