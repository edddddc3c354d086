"""A BGPFilter import Accept lets in a route outside every IP pool (bgpd/filters.py, bgpd/rib.py):
the RIB refuses such routes by default (DESIGN.md item 4), where Calico's BIRD installs them (a
top-of-rack router's default route or external networks, reference/calico.md §2.5). Accept
overrides that one rule: own routes, loops, service CIDRs and own blocks stay refused. What it
lets in is installed, follows the filter live, and goes on to other peers only as an export
Accept sends it (bgpd/relay.py), as Calico's export filter passes on pool routes only."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest

from percale.bgpd.filters import import_accepting, import_verdicts
from percale.bgpd.peering import Session
from percale.bgpd.relay import Relay
from percale.bgpd.rib import Path, Peer, Rib

from tests.unit.test_bgp_filters import bgp_filter, rule
from tests.unit.test_bgp_pass_on import LOCAL_AS, MESH_PEER, Recorder, catch_up, session

pytestmark = pytest.mark.unit

TOR = Peer("10.0.0.254", 65000, LOCAL_AS, "10.0.0.254")
OTHER_TOR = Peer("10.0.0.253", 65001, LOCAL_AS, "10.0.0.253")
POOL, OWN_BLOCK, SERVICES = "10.244.0.0/16", "10.244.1.0/26", "10.96.0.0/12"
EXTERNAL, UNMATCHED, DEFAULT = "10.50.0.0/24", "198.51.100.0/24", "0.0.0.0/0"
ACCEPT_10_50 = rule("Accept", cidr="10.50.0.0/16", matchOperator="In")


def net(text: str):
    return ipaddress.ip_network(text)


def hops(*texts: str) -> frozenset:
    return frozenset(ipaddress.ip_address(t) for t in texts)


def make_rib() -> Rib:
    rib = Rib(router_id="10.0.0.1", pools=[POOL], own_blocks=[OWN_BLOCK],
              own_addresses=["10.0.0.1"], service_cidrs=[SERVICES])
    rib.watch_best(True)
    return rib


def filtered(rib: Rib, sessions: list[Session], filters: dict[str, Any]) -> None:
    """What the agent does with the sessions' BGPFilters (bgpd/agent.py)."""
    rib.set_import_filters(import_verdicts(sessions, filters), import_accepting(sessions, filters))


def tor_session(*names: str, peer: Peer = TOR) -> Session:
    return session(peer, filters=names)


def from_tor(prefix: str, peer: Peer = TOR, **attrs: Any) -> Path:
    return Path(prefix, str(peer.address), peer, **{"as_path": (peer.asn,), **attrs})


def test_only_sessions_with_an_import_accept_rule_of_their_family_accept():
    filters = {"accept": bgp_filter("accept", importV4=[ACCEPT_10_50]),
               "reject": bgp_filter("reject", importV4=[rule("Reject", cidr=POOL,
                                                             matchOperator="In")]),
               "six": bgp_filter("six", importV6=[rule("Accept")])}
    sessions = [tor_session("reject", "accept"), tor_session("reject", peer=OTHER_TOR),
                session(MESH_PEER, filters=("six",))]
    assert import_accepting(sessions, filters) == {"10.0.0.254"}
    verdicts = import_verdicts(sessions, filters)
    assert set(verdicts) == {"10.0.0.254", "10.0.0.253"}
    assert verdicts["10.0.0.254"](from_tor(EXTERNAL)) == "Accept"
    assert verdicts["10.0.0.254"](from_tor("10.244.9.0/26")) == "Reject"  # the first filter
    assert verdicts["10.0.0.254"](from_tor(UNMATCHED)) is None


def test_an_import_accept_installs_a_route_outside_the_pools_and_follows_the_filter_live():
    rib = make_rib()
    rib.update(TOR, [from_tor(EXTERNAL), from_tor(UNMATCHED), from_tor("10.244.9.0/26")])
    assert dict(rib.fib) == {net("10.244.9.0/26"): hops("10.0.0.254")}  # the default: pools only
    assert rib.rejection(from_tor(EXTERNAL)) == "outside every IP pool"
    rib.changes()

    filters = {"tor": bgp_filter("tor", importV4=[ACCEPT_10_50])}
    filtered(rib, [tor_session("tor")], filters)
    changes = rib.changes()
    assert dict(changes.added) == {net(EXTERNAL): hops("10.0.0.254")}
    assert rib.best(EXTERNAL) == from_tor(EXTERNAL) and rib.rejection(from_tor(EXTERNAL)) is None
    assert net(UNMATCHED) not in rib.fib  # no rule matched: the pool rule still decides
    assert rib.candidates(EXTERNAL) == [from_tor(EXTERNAL)]

    # Announced after the filter, withdrawn, announced again: as any route.
    rib.update(TOR, [from_tor("10.50.1.0/24")])
    rib.update(TOR, withdrawn=[EXTERNAL])
    assert set(rib.fib) == {net("10.244.9.0/26"), net("10.50.1.0/24")}
    rib.update(TOR, [from_tor(EXTERNAL)])
    rib.changes()

    # The rule changed to Reject, then the filter unnamed: gone at once, no route refresh.
    filters["tor"] = bgp_filter("tor", importV4=[rule("Reject", cidr="10.50.0.0/16",
                                                       matchOperator="In")])
    filtered(rib, [tor_session("tor")], filters)
    assert rib.changes().removed == {net(EXTERNAL), net("10.50.1.0/24")}
    filtered(rib, [tor_session("tor")], {"tor": bgp_filter("tor", importV4=[ACCEPT_10_50])})
    assert set(rib.changes().added) == {net(EXTERNAL), net("10.50.1.0/24")}
    filtered(rib, [tor_session()], filters)
    assert rib.changes().removed == {net(EXTERNAL), net("10.50.1.0/24")}
    assert set(rib.fib) == {net("10.244.9.0/26")}


def test_accept_overrides_only_the_pool_rule():
    rib = make_rib()
    everything = {"tor": bgp_filter("tor", importV4=[rule("Accept")])}
    filtered(rib, [tor_session("tor")], everything)
    refused = {
        SERVICES: from_tor(SERVICES),
        OWN_BLOCK: from_tor(OWN_BLOCK),
        "192.0.2.0/24": from_tor("192.0.2.0/24", as_path=(65000, LOCAL_AS)),  # AS loop
        "192.0.3.0/24": Path("192.0.3.0/24", "10.0.0.1", TOR),  # our own next hop
        "192.0.4.0/24": from_tor("192.0.4.0/24", originator_id="10.0.0.1"),
    }
    rib.update(TOR, [*refused.values(), from_tor(DEFAULT)])
    assert dict(rib.fib) == {net(DEFAULT): hops("10.0.0.254")}
    assert "service CIDR" in rib.rejection(refused[SERVICES])
    assert "our blocks" in rib.rejection(refused[OWN_BLOCK])
    assert "AS_PATH" in rib.rejection(refused["192.0.2.0/24"])
    assert "our addresses" in rib.rejection(refused["192.0.3.0/24"])
    assert "ORIGINATOR_ID" in rib.rejection(refused["192.0.4.0/24"])
    # Another peer's path to the same prefix: its session has no filter, it stays refused.
    rib.update(OTHER_TOR, [from_tor(DEFAULT, OTHER_TOR)])
    assert rib.candidates(DEFAULT) == [from_tor(DEFAULT)]
    assert rib.fib[net(DEFAULT)] == hops("10.0.0.254")


def test_accepted_paths_from_two_peers_go_through_the_decision_process():
    rib = make_rib()
    accept = {"tor": bgp_filter("tor", importV4=[rule("Accept")])}
    filtered(rib, [tor_session("tor"), tor_session("tor", peer=OTHER_TOR)], accept)
    rib.update(TOR, [from_tor(DEFAULT)])
    rib.update(OTHER_TOR, [Path(DEFAULT, "10.0.0.253", OTHER_TOR, as_path=(65001, 1))])
    assert rib.best(DEFAULT).peer == TOR  # the shorter AS_PATH
    rib.update(TOR, withdrawn=[DEFAULT])
    assert rib.fib[net(DEFAULT)] == hops("10.0.0.253")


def test_a_pool_that_comes_to_cover_an_accepted_route_makes_it_due_for_passing_on():
    rib = make_rib()
    filtered(rib, [tor_session("tor")], {"tor": bgp_filter("tor", importV4=[ACCEPT_10_50])})
    rib.update(TOR, [from_tor(EXTERNAL)])
    rib.take_best_changes()
    assert rib.outside_pools(EXTERNAL)
    rib.set_pools([POOL, "10.50.0.0/16"])
    assert not rib.outside_pools(EXTERNAL)
    assert rib.take_best_changes() == [net(EXTERNAL)]  # same best path, now a pool route
    rib.set_pools([POOL])
    assert rib.take_best_changes() == [net(EXTERNAL)]
    assert net(EXTERNAL) in rib.fib


def test_an_accepted_route_goes_on_to_other_peers_only_as_an_export_accept_sends_it():
    speaker = Recorder()
    relay = Relay(speaker)
    accept = bgp_filter("tor", importV4=[ACCEPT_10_50])
    filters = {"tor": accept}
    sessions = [session(MESH_PEER), tor_session("tor"), session(OTHER_TOR)]
    relay.configure(sessions, [], filters=filters)
    rib = make_rib()
    filtered(rib, sessions, filters)
    rib.update(TOR, [from_tor(EXTERNAL), from_tor("10.244.9.0/26")])
    up = {"10.0.0.2", "10.0.0.254", "10.0.0.253"}
    catch_up(relay, rib, up=up)
    # The pool route goes to the mesh and the other eBGP peer; the external one to nobody.
    assert {p for table in relay.sent.values() for p in table} == {net("10.244.9.0/26")}
    assert set(relay.sent) == {"10.0.0.2", "10.0.0.253"}

    # An export Accept on the other ToR's session sends it there.
    filters["out"] = bgp_filter("out", exportV4=[rule("Accept", cidr=EXTERNAL,
                                                      matchOperator="Equal")])
    sessions[2] = tor_session("out", peer=OTHER_TOR)
    assert relay.configure(sessions, [], filters=filters)
    catch_up(relay, rib, up=up)
    assert net(EXTERNAL) in relay.sent["10.0.0.253"]
    assert net(EXTERNAL) not in relay.sent["10.0.0.2"]

    # The import Accept unnamed: withdrawn from the peer it was sent to.
    sessions[1] = tor_session()
    relay.configure(sessions, [], filters=filters)
    filtered(rib, sessions, filters)
    catch_up(relay, rib, up=up)
    assert net(EXTERNAL) not in relay.sent["10.0.0.253"]
    assert speaker.commands[-1] == f"neighbor 10.0.0.253 withdraw route {EXTERNAL}"
