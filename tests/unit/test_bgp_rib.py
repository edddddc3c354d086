"""The pure RIB: decision process, ECMP, import policy, graceful restart, reflection, changes.

The property test at the end keeps its own model of which paths survive (announce, withdraw,
session loss with and without graceful restart, End-of-RIB, expiry) and checks that the RIB,
updated incrementally, always wants the same FIB as a fresh RIB given only the survivors.
"""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from percale.bgpd.rib import (
    NLRI, AsPathSegment, FibChanges, Origin, Path, PathAttributes, Peer, Rib, reflect, select,
)

pytestmark = pytest.mark.unit

ROUTER_ID = "10.0.0.1"
POOLS = ["10.244.0.0/16", "fd00:244::/48"]
OWN_BLOCK = "10.244.1.0/26"

A = Peer("10.0.0.2", 64512, 64512, "10.0.0.2")   # iBGP mesh peer
B = Peer("10.0.0.3", 64512, 64512, "10.0.0.3")   # iBGP mesh peer
R1 = Peer("10.0.0.11", 64512, 64512, "10.0.0.11")  # route reflectors
R2 = Peer("10.0.0.12", 64512, 64512, "10.0.0.12")
E = Peer("192.0.2.1", 65001, 64512, "192.0.2.1")  # eBGP top-of-rack
E2 = Peer("192.0.2.2", 65002, 64512, "192.0.2.2")

P = "10.244.2.0/26"


def ip(text):
    return ipaddress.ip_address(text)


def net(text):
    return ipaddress.ip_network(text)


def hops(*texts):
    return frozenset(ip(t) for t in texts)


def make_rib(**kw) -> Rib:
    kw.setdefault("pools", POOLS)
    kw.setdefault("own_blocks", [OWN_BLOCK])
    kw.setdefault("own_addresses", [ROUTER_ID, "fd00::1"])
    return Rib(router_id=ROUTER_ID, **kw)


def path(peer: Peer, prefix: str = P, next_hop: str | None = None, **attrs) -> Path:
    return Path(prefix, next_hop or str(peer.address), peer, **attrs)


def announce(rib: Rib, *paths: Path) -> None:
    for p in paths:
        rib.update(p.peer, [p])


def fib(rib: Rib) -> dict:
    return dict(rib.fib)


# ---------------------------------------------------------------- announce, withdraw


def test_an_announced_route_is_in_the_fib_with_its_next_hop():
    rib = make_rib()
    announce(rib, path(A))
    assert fib(rib) == {net(P): hops("10.0.0.2")}
    assert rib.best(P).peer == A


def test_withdraw_removes_the_route():
    rib = make_rib()
    announce(rib, path(A))
    rib.update(A, withdrawn=[P])
    assert fib(rib) == {}
    assert rib.adj_rib_in(A) == {}


def test_a_later_announcement_replaces_the_peers_earlier_path():
    rib = make_rib()
    announce(rib, path(A, next_hop="10.0.0.2"), path(A, next_hop="10.0.0.9"))
    assert fib(rib) == {net(P): hops("10.0.0.9")}
    assert len(rib.adj_rib_in(A)) == 1


def test_withdrawn_and_announced_in_one_update_counts_as_announced():
    """RFC 4271 §9: treat it as though WITHDRAWN ROUTES did not contain the prefix."""
    rib = make_rib()
    rib.update(A, [path(A)], [P])
    assert net(P) in rib.fib


def test_withdrawing_an_unknown_route_is_harmless():
    rib = make_rib()
    rib.update(A, withdrawn=[P, NLRI(net(P), 7)])
    assert fib(rib) == {} and not rib.changes()


def test_a_path_from_another_peer_is_refused():
    with pytest.raises(ValueError, match="not from"):
        make_rib().update(A, [path(B)])


def test_ipv6_routes():
    rib = make_rib()
    announce(rib, path(A, "fd00:244::40/122", "fd00::2"))
    assert fib(rib) == {net("fd00:244::40/122"): hops("fd00::2")}


def test_an_ipv6_link_local_next_hop_is_best_but_not_installed():
    """It names no interface, which the kernel needs; refused by the FIB it took the whole
    batch with it (every other route of a peer's table). The path stays the best one; in a
    multipath set only the global next hops are installed."""
    rib = make_rib()
    announce(rib, path(A, "fd00:244::40/122", "fe80::3"), path(A, "fd00:244::80/122", "fd00::2"))
    assert fib(rib) == {net("fd00:244::80/122"): hops("fd00::2")}
    assert rib.best("fd00:244::40/122").next_hop == ip("fe80::3")
    announce(rib, path(B, "fd00:244::40/122", "fd00::3"))
    assert fib(rib)[net("fd00:244::40/122")] == hops("fd00::3")


# ---------------------------------------------------------------- decision process


@pytest.mark.parametrize(
    ("winner", "loser"),
    [
        # §9.1.1: highest LOCAL_PREF
        ({"local_pref": 200}, {"local_pref": 100}),
        ({"local_pref": 101}, {}),  # absent means 100
        # §9.1.2.2 a: shortest AS_PATH; an AS_SET counts as one
        ({"as_path": (65001,)}, {"as_path": (65001, 65002)}),
        ({"as_path": (AsPathSegment("as-sequence", (65001,)), AsPathSegment("as-set", (65002, 65003, 65004)))},
         {"as_path": (65001, 65005, 65006)}),
        # §9.1.2.2 b: lowest ORIGIN
        ({"origin": Origin.IGP}, {"origin": Origin.EGP}),
        ({"origin": "egp"}, {"origin": "incomplete"}),
        # §9.1.2.2 c: lowest MED from the same neighbour AS; absent MED is the lowest
        ({"as_path": (65001,), "med": 5}, {"as_path": (65001,), "med": 10}),
        ({"as_path": (65001,)}, {"as_path": (65001,), "med": 10}),
        ({"med": 5}, {"med": 10}),  # empty AS_PATH: both from our own AS
    ],
)
def test_decision_steps_in_rfc_4271_order(winner, loser):
    rib = make_rib()
    announce(rib, path(A, **loser), path(B, **winner))
    assert fib(rib) == {net(P): hops("10.0.0.3")}
    rib2 = make_rib()  # and whatever the order of arrival
    announce(rib2, path(B, **winner), path(A, **loser))
    assert fib(rib2) == {net(P): hops("10.0.0.3")}


def test_local_pref_outranks_as_path_length():
    rib = make_rib()
    announce(rib, path(A, as_path=(65001, 65002, 65003), local_pref=200), path(B, as_path=(65001,)))
    assert fib(rib) == {net(P): hops("10.0.0.2")}


def test_local_pref_from_an_external_peer_is_ignored():
    """RFC 4271 §5.1.5: a LOCAL_PREF received from an external peer MUST be ignored."""
    rib = make_rib()
    announce(rib, path(E, as_path=(65001,), local_pref=500), path(A, as_path=(65001,), local_pref=150))
    assert fib(rib) == {net(P): hops("10.0.0.2")}


def test_med_is_not_compared_between_different_neighbour_ases():
    rib = make_rib()
    announce(rib, path(A, as_path=(65001,), med=50), path(B, as_path=(65002,), med=1))
    assert fib(rib) == {net(P): hops("10.0.0.2", "10.0.0.3")}


def test_med_elimination_works_per_neighbour_as():
    """X and Y share a neighbour AS and Y's MED is lower; Z is alone in its AS. Y and Z remain."""
    rib = make_rib()
    C = Peer("10.0.0.4", 64512, 64512, "10.0.0.4")
    announce(rib, path(A, as_path=(65001,), med=10), path(B, as_path=(65001,), med=5),
             path(C, as_path=(65002,), med=7))
    assert fib(rib) == {net(P): hops("10.0.0.3", "10.0.0.4")}


def test_ebgp_is_preferred_over_ibgp():
    rib = make_rib()
    announce(rib, path(A, as_path=(65001,)), path(E, as_path=(65001,)))
    assert fib(rib) == {net(P): hops("192.0.2.1")}


def test_tie_break_lowest_router_id_then_peer_address():
    rib = make_rib()
    low_id_high_address = Peer("10.0.0.9", 64512, 64512, "1.1.1.1")
    announce(rib, path(A), path(low_id_high_address))
    assert rib.best(P).peer == low_id_high_address
    # both are equally good: both carry traffic
    assert rib.fib[net(P)] == hops("10.0.0.2", "10.0.0.9")

    same_id = Peer("10.0.0.8", 64512, 64512, "10.0.0.2")
    rib2 = make_rib()
    announce(rib2, path(A), path(same_id))
    assert rib2.best(P).peer == A  # §9.1.2.2 g: lowest peer address


def test_originator_id_stands_in_for_the_router_id_and_shorter_cluster_list_wins():
    """RFC 4456 §9."""
    rib = make_rib()
    announce(rib, path(R1, next_hop="10.0.0.5", originator_id="10.0.0.5"),
             path(R2, next_hop="10.0.0.6", originator_id="10.0.0.4"))
    assert rib.best(P).peer == R2
    rib2 = make_rib()
    announce(rib2, path(R1, next_hop="10.0.0.5", originator_id="10.0.0.5", cluster_list=["1.0.0.1", "1.0.0.2"]),
             path(R2, next_hop="10.0.0.5", originator_id="10.0.0.5", cluster_list=["1.0.0.1"]))
    assert rib2.best(P).peer == R2


def test_select_needs_a_path():
    with pytest.raises(ValueError):
        select([])


# ---------------------------------------------------------------- ECMP


def test_equal_paths_with_different_next_hops_make_a_multipath_route():
    rib = make_rib()
    announce(rib, path(A), path(B), path(E2, as_path=(65002, 65003)))  # the eBGP one is longer
    assert fib(rib) == {net(P): hops("10.0.0.2", "10.0.0.3")}


def test_ebgp_multipath_across_neighbour_ases():
    rib = make_rib()
    announce(rib, path(E, as_path=(65001, 65100)), path(E2, as_path=(65002, 65100)))
    assert fib(rib) == {net(P): hops("192.0.2.1", "192.0.2.2")}


def test_two_reflectors_passing_on_one_route_give_one_next_hop():
    rib = make_rib()
    reflected = {"next_hop": "10.0.0.5", "originator_id": "10.0.0.5", "cluster_list": ["244.0.0.1"]}
    announce(rib, path(R1, **reflected), path(R2, **reflected))
    assert fib(rib) == {net(P): hops("10.0.0.5")}
    rib.update(R1, withdrawn=[P])
    assert fib(rib) == {net(P): hops("10.0.0.5")}
    assert not rib.changes().changed


def test_add_path_keeps_several_paths_per_peer():
    """RFC 7911: a reflector sends each of several paths under its own path identifier."""
    rib = make_rib()
    announce(rib, path(R1, next_hop="10.0.0.5", path_id=1, originator_id="10.0.0.5"),
             path(R1, next_hop="10.0.0.6", path_id=2, originator_id="10.0.0.6"))
    assert fib(rib) == {net(P): hops("10.0.0.5", "10.0.0.6")}
    rib.update(R1, withdrawn=[NLRI(net(P), 1)])
    assert fib(rib) == {net(P): hops("10.0.0.6")}


# ---------------------------------------------------------------- import policy


@pytest.mark.parametrize(
    ("route", "reason"),
    [
        ({"originator_id": ROUTER_ID}, "ORIGINATOR_ID"),
        ({"next_hop": ROUTER_ID}, "next hop"),
        ({"prefix": OWN_BLOCK}, "one of our blocks"),
        ({"prefix": "192.168.0.0/24"}, "outside every IP pool"),
        ({"prefix": "10.0.0.0/8"}, "outside every IP pool"),  # covers a pool, is not inside one
        ({"prefix": "fd00:245::/122", "next_hop": "fd00::2"}, "outside every IP pool"),
        ({"prefix": "fd00:244::/122", "next_hop": "fd00::1"}, "next hop"),
        ({"as_path": (65001, 64512)}, "AS_PATH"),
    ],
)
def test_own_routes_and_routes_outside_the_pools_are_not_installed(route, reason):
    rib = make_rib()
    p = path(A, **route)
    rib.update(A, [p])
    assert fib(rib) == {}
    assert reason in rib.rejection(p)
    assert rib.adj_rib_in(A)  # kept unprocessed in the Adj-RIB-In, as RFC 4271 §3.2 has it
    assert not rib.changes()


def test_a_reflected_copy_of_our_route_does_not_displace_anothers():
    rib = make_rib()
    announce(rib, path(R1, next_hop="10.0.0.5", originator_id=ROUTER_ID), path(A))
    assert fib(rib) == {net(P): hops("10.0.0.2")}
    assert rib.candidates(P) == [path(A)]


def test_an_address_borrowed_from_our_block_is_routed_to_the_borrower():
    """Calico IPAM: another node borrowed 10.244.1.5 from our block and announces the /32."""
    rib = make_rib()
    announce(rib, path(B, "10.244.1.5/32"))
    assert fib(rib) == {net("10.244.1.5/32"): hops("10.0.0.3")}


def test_a_path_holding_our_cluster_id_has_looped():
    rib = make_rib(cluster_id="244.0.0.1")
    p = path(R1, next_hop="10.0.0.5", originator_id="10.0.0.5", cluster_list=["244.0.0.9", "244.0.0.1"])
    rib.update(R1, [p])
    assert fib(rib) == {}
    assert "CLUSTER_ID" in rib.rejection(p)


def test_a_new_router_id_or_cluster_id_judges_every_path_again():
    """A node made a route reflector (routeReflectorClusterID set) or given another BGP address
    while the agent runs: the loop checks use the new IDs at once, on paths held already."""
    rib = make_rib()
    looped = path(R1, next_hop="10.0.0.5", originator_id="10.0.0.5", cluster_list=["244.0.0.1"])
    rib.update(R1, [looped])
    assert fib(rib) == {net(P): hops("10.0.0.5")}
    rib.changes()
    rib.set_identity(ROUTER_ID, "244.0.0.1")
    assert fib(rib) == {} and "CLUSTER_ID" in rib.rejection(looped)
    rib.set_identity("10.0.0.5", None)  # now the path's originator: our own route come back
    assert fib(rib) == {} and "ORIGINATOR_ID" in rib.rejection(looped)
    rib.set_identity(ROUTER_ID, None)
    assert fib(rib) == {net(P): hops("10.0.0.5")}


def test_one_attributes_object_is_judged_against_each_peers_own_as():
    """A decoder shares one PathAttributes between paths; the RIB remembers its verdict on the
    last one it saw, which must not carry over to a peer with another local AS."""
    shared = PathAttributes.of(as_path=(65001, 64512))
    other_side = Peer("192.0.2.9", 65001, 64999, "192.0.2.9")  # we are AS 64999 on this session
    rib = make_rib()
    looped = Path.with_attributes(net(P), ip("192.0.2.1"), E, 0, shared)
    fine = Path.with_attributes(net("10.244.3.0/26"), ip("192.0.2.9"), other_side, 0, shared)
    rib.update(E, [looped])
    rib.update(other_side, [fine])
    assert fib(rib) == {net("10.244.3.0/26"): hops("192.0.2.9")}
    assert "AS_PATH" in rib.rejection(looped)
    assert rib.rejection(fine) is None
    assert "AS_PATH" in rib.rejection(looped)


def test_allow_own_as():
    rib = make_rib(allow_own_as=1)
    announce(rib, path(E, as_path=(65001, 64512)))
    assert net(P) in rib.fib


def test_allow_own_as_is_per_peer_and_counts_occurrences_as_bird_does():
    """BGPPeer numAllowedLocalASNumbers (BIRD `allow local as N`): a path from that peer may hold
    our AS up to N times, in AS_SEQUENCEs and AS_SETs alike; other peers keep the loop check."""
    rib = make_rib()
    rib.set_allow_own_as({"192.0.2.1": 1})
    once = path(E, as_path=(65001, 64512))
    twice = path(E, "10.244.3.0/26", as_path=(65001, 64512, 65003, 64512))
    in_a_set = path(E, "10.244.4.0/26", as_path=[("as-sequence", (65001,)), ("as-set", (64512, 65009))])
    other_peer = path(E2, "10.244.5.0/26", as_path=(65002, 64512))
    announce(rib, once, twice, in_a_set, other_peer)
    assert set(rib.fib) == {net(P), net("10.244.4.0/26")}
    assert "AS_PATH" in rib.rejection(twice)
    assert "AS_PATH" in rib.rejection(other_peer)


def test_an_allowance_set_later_installs_what_the_peer_already_sent_and_its_removal_takes_it_out():
    """The refused path stays in the peer's Adj-RIB-In: raising the allowance needs no route
    refresh (ExaBGP passes such paths on; the RIB alone refuses them), and lowering it again
    removes the route."""
    rib = make_rib()
    looped = path(E, as_path=(65001, 64512))
    announce(rib, looped)
    assert rib.fib == {} and rib.adj_rib_in(E)[NLRI(net(P))] == looped
    rib.changes()
    rib.set_allow_own_as({"192.0.2.1": 1})
    assert rib.changes() == FibChanges(added={net(P): hops("192.0.2.1")})
    rib.set_allow_own_as({})
    assert rib.changes() == FibChanges(removed=frozenset({net(P)}))


def test_prefixes_inside_a_service_cidr_are_never_installed():
    """Every node announces the service CIDRs (a LoadBalancer range may well be an IP pool):
    what other nodes send of them is not routed, as Calico's kernel filter rejects them."""
    rib = make_rib(service_cidrs=["10.244.200.0/24"])
    announce(rib, path(A, "10.244.200.0/24"), path(B, "10.244.200.7/32"), path(A))
    assert set(rib.fib) == {net(P)}
    assert "service CIDR" in rib.rejection(path(A, "10.244.200.0/24"))
    rib.changes()
    rib.set_service_cidrs([])
    assert rib.changes() == FibChanges(added={net("10.244.200.0/24"): hops("10.0.0.2"),
                                              net("10.244.200.7/32"): hops("10.0.0.3")})
    rib.set_service_cidrs(["10.244.200.0/25"])
    assert rib.changes() == FibChanges(removed=frozenset({net("10.244.200.7/32")}))


def test_pools_can_be_changed_and_paths_are_judged_again():
    rib = make_rib()
    announce(rib, path(A, "192.168.0.0/26"), path(A))
    rib.changes()
    rib.set_pools(POOLS + ["192.168.0.0/16"])
    assert rib.changes() == FibChanges(added={net("192.168.0.0/26"): hops("10.0.0.2")})
    rib.set_pools(["192.168.0.0/16"])
    assert rib.changes() == FibChanges(removed=frozenset({net(P)}))


def test_own_blocks_and_addresses_can_be_changed():
    rib = make_rib()
    announce(rib, path(A), path(B, "10.244.3.0/26", next_hop="10.0.0.7"))
    rib.changes()
    rib.set_own_blocks([OWN_BLOCK, P])
    assert rib.changes() == FibChanges(removed=frozenset({net(P)}))
    rib.set_own_blocks([OWN_BLOCK])
    assert rib.changes() == FibChanges(added={net(P): hops("10.0.0.2")})
    rib.set_own_addresses([ROUTER_ID, "10.0.0.7"])
    assert rib.changes() == FibChanges(removed=frozenset({net("10.244.3.0/26")}))


# ---------------------------------------------------------------- graceful restart


def gr_rib():
    rib = make_rib()
    announce(rib, path(A), path(A, "10.244.3.0/26"), path(A, "fd00:244::/122", "fd00::2"))
    rib.changes()
    return rib


def test_without_graceful_restart_a_peers_routes_go_at_once():
    rib = gr_rib()
    rib.peer_down(A, now=100.0, graceful=False)
    assert fib(rib) == {}
    assert rib.changes().removed == {net(P), net("10.244.3.0/26"), net("fd00:244::/122")}
    assert rib.adj_rib_in(A) == {}
    assert rib.next_expiry() is None


def test_with_graceful_restart_routes_stay_stale_until_end_of_rib():
    rib = gr_rib()
    before = fib(rib)
    rib.peer_down(A, now=100.0, graceful=True, restart_time=120)
    assert fib(rib) == before and not rib.changes()
    assert rib.stale(A) == {NLRI(net(P)), NLRI(net("10.244.3.0/26")), NLRI(net("fd00:244::/122"))}
    assert rib.next_expiry() == 220.0

    rib.peer_up(A, now=110.0)
    announce(rib, path(A))  # re-announced: fresh again
    assert NLRI(net(P)) not in rib.stale(A)
    assert not rib.changes()

    rib.end_of_rib(A, 4)  # RFC 4724 §4.2: sweep what is still stale, for that family only
    assert rib.changes() == FibChanges(removed=frozenset({net("10.244.3.0/26")}))
    assert rib.stale(A) == {NLRI(net("fd00:244::/122"))}
    rib.end_of_rib(A, 6)
    assert fib(rib) == {net(P): hops("10.0.0.2")}
    assert rib.stale(A) == frozenset() and rib.next_expiry() is None


def test_stale_routes_are_swept_when_the_restart_time_passes():
    rib = gr_rib()
    rib.peer_down(A, now=100.0, graceful=True, restart_time=120)
    assert rib.expire(219.9) == [] and len(rib.fib) == 3
    assert rib.expire(220.0) == [A.address]
    assert fib(rib) == {}
    assert rib.next_expiry() is None


def test_a_re_announced_route_survives_expiry():
    rib = gr_rib()
    rib.peer_down(A, now=0.0, graceful=True, restart_time=30)
    rib.update(A, [path(A, "10.244.3.0/26")])
    rib.expire(30.0)
    assert fib(rib) == {net("10.244.3.0/26"): hops("10.0.0.2")}


def test_a_withdrawn_stale_route_goes():
    rib = gr_rib()
    rib.peer_down(A, now=0.0, graceful=True, restart_time=30)
    rib.update(A, withdrawn=[P])
    assert net(P) not in rib.fib and NLRI(net(P)) not in rib.stale(A)


def test_stale_paths_still_carry_traffic_beside_fresh_ones():
    """RFC 4724 §4.2: no difference between stale and other routing information in forwarding."""
    rib = gr_rib()
    announce(rib, path(B))
    rib.peer_down(A, now=0.0, graceful=True, restart_time=30)
    assert rib.fib[net(P)] == hops("10.0.0.2", "10.0.0.3")


def test_consecutive_restarts_delete_routes_still_stale_from_the_first():
    """RFC 4724 §4.2: "a route (from the peer) previously marked as stale MUST be deleted"."""
    rib = gr_rib()
    rib.peer_down(A, now=0.0, graceful=True, restart_time=30)
    rib.peer_up(A, now=5.0)
    announce(rib, path(A))
    rib.peer_down(A, now=6.0, graceful=True, restart_time=30)
    assert fib(rib) == {net(P): hops("10.0.0.2")}
    assert rib.stale(A) == {NLRI(net(P))}
    assert rib.next_expiry() == 36.0


def test_only_families_in_the_graceful_restart_capability_are_kept():
    rib = gr_rib()
    rib.peer_down(A, now=0.0, graceful=True, restart_time=30, families={4})
    assert set(rib.fib) == {net(P), net("10.244.3.0/26")}


def test_forwarding_state_not_preserved_sweeps_at_session_up():
    """RFC 4724 §4.2: a family whose Forwarding State bit is clear in the new capability loses
    its stale routes as soon as the session is back."""
    rib = gr_rib()
    rib.peer_down(A, now=0.0, graceful=True, restart_time=30)
    rib.peer_up(A, now=1.0, preserved={6})
    assert set(rib.fib) == {net("fd00:244::/122")}
    rib.peer_up(A, now=1.0, preserved=set())
    assert fib(rib) == {}


def test_the_stale_timer_replaces_the_restart_timer_once_the_session_is_back():
    rib = gr_rib()
    rib.peer_down(A, now=0.0, graceful=True, restart_time=30)
    rib.peer_up(A, now=10.0, stale_time=360)
    assert rib.expire(30.0) == []
    assert rib.next_expiry() == 370.0


def test_end_of_rib_from_a_peer_that_never_restarted_is_harmless():
    rib = gr_rib()
    rib.end_of_rib(A)
    rib.peer_up(A, now=0.0, preserved=set())
    assert len(rib.fib) == 3


# ---------------------------------------------------------------- changes


def test_changes_report_added_changed_removed_once():
    rib = make_rib()
    announce(rib, path(A), path(A, "10.244.3.0/26"))
    assert rib.changes() == FibChanges(added={net(P): hops("10.0.0.2"), net("10.244.3.0/26"): hops("10.0.0.2")})
    assert not rib.changes()
    announce(rib, path(B))
    rib.update(A, withdrawn=["10.244.3.0/26"])
    assert rib.changes() == FibChanges(changed={net(P): hops("10.0.0.2", "10.0.0.3")},
                                       removed=frozenset({net("10.244.3.0/26")}))


def test_a_change_undone_before_it_is_read_is_not_reported():
    rib = make_rib()
    announce(rib, path(A))
    rib.changes()
    rib.update(A, withdrawn=[P])
    announce(rib, path(A))
    assert not rib.changes()


def test_changes_in_parts_add_up_to_the_whole_in_the_order_they_happened():
    blocks = [f"10.244.{i}.0/26" for i in range(10, 20)]
    whole, parted = make_rib(), make_rib()
    for rib in (whole, parted):
        announce(rib, *(path(A, b) for b in blocks))
        rib.changes()
        rib.peer_down(A, 0.0, graceful=False)  # a flush: ten removals
        announce(rib, path(B, blocks[3]))       # and one prefix back, by another peer
    expected = whole.changes()
    parts = []
    while parted.pending:
        parts.append(parted.changes(limit=4))
    assert [len(p.added) + len(p.changed) + len(p.removed) for p in parts] == [4, 4, 2]
    # in order: the first part is the first four prefixes the flush touched
    assert sorted(map(str, parts[0].removed)) == blocks[:3]
    assert parts[0].changed == {net(blocks[3]): hops("10.0.0.3")}
    assert frozenset().union(*(p.removed for p in parts)) == expected.removed
    assert {k: v for p in parts for k, v in p.changed.items()} == dict(expected.changed)
    assert not parted.pending and not parted.changes(limit=4)


# ---------------------------------------------------------------- route reflection


CLUSTER = "244.0.0.1"
CLIENTS = {A.address, B.address}


def test_reflection_sets_originator_id_and_prepends_the_cluster_id():
    original = path(A, local_pref=150, med=3, communities=((64512, 100),))
    sent = reflect(original, B, cluster_id=CLUSTER, clients=CLIENTS)
    assert sent.originator_id == A.router_id
    assert sent.cluster_list == (ip(CLUSTER),)
    assert sent.next_hop == original.next_hop
    assert (sent.local_pref, sent.med, sent.communities, sent.as_path) == (150, 3, ((64512, 100),), ())


def test_reflection_keeps_an_existing_originator_id_and_list():
    original = path(R1, next_hop="10.0.0.5", originator_id="10.0.0.5", cluster_list=["244.0.0.9"])
    sent = reflect(original, A, cluster_id=CLUSTER, clients=CLIENTS)
    assert sent.originator_id == ip("10.0.0.5")
    assert sent.cluster_list == (ip(CLUSTER), ip("244.0.0.9"))


@pytest.mark.parametrize(
    ("source", "to", "reflected"),
    [
        (A, B, True),     # client to client
        (A, R1, True),    # client to non-client
        (R1, A, True),    # non-client to client
        (R1, R2, False),  # non-client to non-client: they see it themselves (full mesh)
        (A, A, False),    # never back to where it came from
        (E, A, False),    # eBGP-learned: ordinary advertisement, not reflection
        (A, E, False),    # reflection stays inside the AS
    ],
)
def test_reflection_rules(source, to, reflected):
    assert (reflect(path(source), to, cluster_id=CLUSTER, clients=CLIENTS) is not None) is reflected


def test_a_route_that_already_passed_our_cluster_is_not_reflected():
    looped = path(R1, next_hop="10.0.0.5", originator_id="10.0.0.5", cluster_list=["244.0.0.9", CLUSTER])
    assert reflect(looped, A, cluster_id=CLUSTER, clients=CLIENTS) is None


def test_a_route_is_not_reflected_to_its_originator():
    originated_by_b = path(R1, next_hop="10.0.0.3", originator_id="10.0.0.3")
    assert reflect(originated_by_b, B, cluster_id=CLUSTER, clients=CLIENTS) is None


def test_reflection_needs_the_senders_bgp_identifier():
    anonymous = Peer("10.0.0.2", 64512, 64512)
    with pytest.raises(ValueError, match="BGP Identifier"):
        reflect(path(anonymous), B, cluster_id=CLUSTER, clients=CLIENTS)


# ---------------------------------------------------------------- property

PEERS = [A, B, E]
PREFIXES = ["10.244.2.0/26", "10.244.3.0/26", OWN_BLOCK, "10.244.1.5/32", "192.168.0.0/26", "fd00:244::/122"]
NEXT_HOPS = {4: ["10.0.0.2", "10.0.0.3", ROUTER_ID], 6: ["fd00::2", "fd00::3"]}

announce_op = st.tuples(
    st.just("announce"), st.sampled_from(PEERS), st.sampled_from(PREFIXES), st.sampled_from([0, 1]),
    st.integers(0, 2), st.sampled_from([None, 100, 200]), st.integers(0, 2),
    st.sampled_from([None, 0, 5]), st.sampled_from(list(Origin)), st.sampled_from([None, ROUTER_ID, "10.0.0.9"]),
)
withdraw_op = st.tuples(st.just("withdraw"), st.sampled_from(PEERS), st.sampled_from(PREFIXES), st.sampled_from([0, 1]))
down_op = st.tuples(st.just("down"), st.sampled_from(PEERS), st.booleans(), st.sampled_from([5, 20]),
                    st.sampled_from([None, frozenset({4})]))
up_op = st.tuples(st.just("up"), st.sampled_from(PEERS), st.sampled_from([None, frozenset(), frozenset({4}),
                                                                          frozenset({4, 6})]),
                  st.sampled_from([None, 10]))
eor_op = st.tuples(st.just("eor"), st.sampled_from(PEERS), st.sampled_from([None, 4, 6]))
tick_op = st.tuples(st.just("tick"), st.integers(0, 15))
pools_op = st.tuples(st.just("pools"), st.booleans())
operations = st.lists(st.one_of(announce_op, withdraw_op, down_op, up_op, eor_op, tick_op, pools_op), max_size=40)


class Model:
    """Which paths survive, by RFC 4271 and RFC 4724 §4.2, kept as plainly as possible."""

    def __init__(self):
        self.paths: dict = {}      # (peer address, NLRI) -> Path
        self.stale: set = set()    # (peer address, NLRI)
        self.deadline: dict = {}   # peer address -> time

    def drop(self, keys):
        for k in list(keys):
            self.paths.pop(k, None)
            self.stale.discard(k)

    def of(self, peer, stale_only=False):
        pool = self.stale if stale_only else self.paths
        return [k for k in pool if k[0] == peer.address]

    def settle(self, peer):
        if not self.of(peer, stale_only=True):
            self.deadline.pop(peer.address, None)


def build_path(peer, prefix, path_id, nh_index, local_pref, as_len, med, origin, originator):
    version = ipaddress.ip_network(prefix).version
    choices = NEXT_HOPS[version]
    return Path(prefix, choices[nh_index % len(choices)], peer, path_id, origin=origin,
                as_path=tuple(range(65100, 65100 + as_len)), med=med, local_pref=local_pref,
                originator_id=originator)


@settings(max_examples=300, deadline=None)
@given(operations)
def test_incremental_fib_equals_a_fresh_decision_over_the_surviving_paths(ops):
    extra_pool = ["192.168.0.0/16"]
    pools = list(POOLS)
    rib = make_rib(pools=pools)
    model = Model()
    applied: dict = {}
    now = 0.0
    for op in ops:
        kind, args = op[0], op[1:]
        if kind == "announce":
            p = build_path(*args)
            rib.update(p.peer, [p])
            model.paths[(p.peer.address, p.nlri)] = p
            model.stale.discard((p.peer.address, p.nlri))
            model.settle(p.peer)
        elif kind == "withdraw":
            peer, prefix, path_id = args
            nlri = NLRI(net(prefix), path_id)
            rib.update(peer, withdrawn=[nlri])
            model.drop([(peer.address, nlri)])
            model.settle(peer)
        elif kind == "down":
            peer, graceful, restart_time, families = args
            rib.peer_down(peer, now, graceful=graceful, restart_time=restart_time, families=families)
            if not graceful:
                model.drop(model.of(peer))
            else:
                model.drop(model.of(peer, stale_only=True))
                if families is not None:
                    model.drop([k for k in model.of(peer) if k[1].prefix.version not in families])
                model.stale |= set(model.of(peer))
                model.deadline[peer.address] = now + restart_time
            model.settle(peer)
        elif kind == "up":
            peer, preserved, stale_time = args
            rib.peer_up(peer, now, preserved=preserved, stale_time=stale_time)
            if model.of(peer, stale_only=True):
                if preserved is not None:
                    model.drop([k for k in model.of(peer, True) if k[1].prefix.version not in preserved])
                if stale_time is not None and peer.address in model.deadline:
                    model.deadline[peer.address] = now + stale_time
            model.settle(peer)
        elif kind == "eor":
            peer, version = args
            rib.end_of_rib(peer, version)
            model.drop([k for k in model.of(peer, True) if version in (None, k[1].prefix.version)])
            model.settle(peer)
        elif kind == "tick":
            now += args[0]
            rib.expire(now)
            for address, deadline in list(model.deadline.items()):
                if deadline <= now:
                    model.drop([k for k in model.stale if k[0] == address])
                    del model.deadline[address]
        elif kind == "pools":
            pools = POOLS + extra_pool if args[0] else list(POOLS)
            rib.set_pools(pools)

        # the changes, applied one batch at a time, rebuild the FIB exactly
        delta = rib.changes()
        for prefix, next_hops in delta.added.items():
            assert prefix not in applied
            applied[prefix] = next_hops
        for prefix, next_hops in delta.changed.items():
            assert applied[prefix] != next_hops
            applied[prefix] = next_hops
        for prefix in delta.removed:
            del applied[prefix]
        assert applied == dict(rib.fib)
        assert len(rib.fib) == len(applied) and all(prefix in rib.fib for prefix in applied)
        # no prefix without paths outlives changes()
        assert set(rib._destinations) == {k[1].prefix for k in model.paths}

        # the survivors are what the model says
        for peer in PEERS:
            assert dict(rib.adj_rib_in(peer)) == {k[1]: v for k, v in model.paths.items() if k[0] == peer.address}
            assert rib.stale(peer) == {k[1] for k in model.stale if k[0] == peer.address}
        assert rib.next_expiry() == min(model.deadline.values(), default=None)

        # and a fresh RIB given only the survivors decides the same FIB
        fresh = make_rib(pools=pools)
        for peer in PEERS:
            fresh.update(peer, [v for k, v in model.paths.items() if k[0] == peer.address])
        assert dict(rib.fib) == dict(fresh.fib)
        for prefix in rib.fib:
            assert rib.best(prefix) == fresh.best(prefix)


# ---------------------------------------------------------------- the shapes that keep it small


def test_a_path_normalises_what_it_is_given_and_is_immutable():
    p = Path(P, "10.0.0.2", A, 3, origin="egp", as_path=(65001, 65002), med=5, local_pref=200,
             originator_id="10.0.0.9", cluster_list=["1.0.0.1"], communities=[(64512, 1)])
    assert p.prefix == net(P) and p.next_hop == ip("10.0.0.2") and p.path_id == 3
    assert p.origin is Origin.EGP and p.as_path == (AsPathSegment("as-sequence", (65001, 65002)),)
    assert (p.med, p.local_pref) == (5, 200)
    assert p.originator_id == ip("10.0.0.9") and p.cluster_list == (ip("1.0.0.1"),)
    assert p.communities == ((64512, 1),) and p.large_communities == ()
    assert p.nlri == NLRI(net(P), 3)
    with pytest.raises(AttributeError):
        p.next_hop = ip("10.0.0.3")
    with pytest.raises(AttributeError):
        del p.prefix
    assert "next_hop=IPv4Address('10.0.0.2')" in repr(p) and "med=5" in repr(p)


def test_a_path_from_shared_parts_equals_one_made_field_by_field():
    attributes = PathAttributes.of(origin="igp", local_pref=100, as_path=(65001,))
    shared = Path.with_attributes(net(P), ip("10.0.0.2"), A, 0, attributes)
    plain = Path(P, "10.0.0.2", A, origin=Origin.IGP, local_pref=100, as_path=(65001,))
    assert shared == plain and hash(shared) == hash(plain) and {shared: 1}[plain] == 1
    assert shared.attributes is attributes
    assert shared != Path(P, "10.0.0.2", A, local_pref=101, as_path=(65001,))
    assert shared != Path(P, "10.0.0.2", B, local_pref=100, as_path=(65001,))


def test_replace_changes_only_what_it_is_told():
    p = path(A, med=7)
    q = p.replace(originator_id="10.0.0.2", cluster_list=(ip("1.0.0.1"),))
    assert (q.prefix, q.next_hop, q.peer, q.med) == (p.prefix, p.next_hop, p.peer, 7)
    assert q.originator_id == ip("10.0.0.2") and q.cluster_list == (ip("1.0.0.1"),)
    assert p.originator_id is None  # the original is untouched
    with pytest.raises(TypeError):
        p.replace(colour="blue")


def test_prefixes_with_the_same_next_hops_share_one_set():
    rib = make_rib()
    announce(rib, *(path(A, f"10.244.{i}.0/26") for i in range(2, 40)))
    announce(rib, path(A, "10.244.50.0/26"), path(B, "10.244.50.0/26"),
             path(A, "10.244.51.0/26"), path(B, "10.244.51.0/26"))
    single = {id(rib.fib[net(f"10.244.{i}.0/26")]) for i in range(2, 40)}
    assert len(single) == 1
    assert rib.fib[net("10.244.50.0/26")] is rib.fib[net("10.244.51.0/26")]
    assert rib.fib[net("10.244.50.0/26")] == hops("10.0.0.2", "10.0.0.3")


def test_a_prefix_with_one_path_keeps_no_dict_for_it():
    rib = make_rib()
    announce(rib, path(A))
    assert rib._destinations[net(P)].paths == path(A)
    announce(rib, path(B))
    assert isinstance(rib._destinations[net(P)].paths, dict)
    rib.update(A, withdrawn=[P])
    assert rib._destinations[net(P)].paths == path(B)
    assert rib.best(P) == path(B) and rib.candidates(P) == [path(B)]


def test_the_fib_is_a_live_read_only_mapping():
    rib = make_rib()
    view = rib.fib
    announce(rib, path(A), path(A, "10.244.3.0/26"), path(A, "192.168.0.0/26"))  # the last: no pool
    assert len(view) == 2 and set(view) == {net(P), net("10.244.3.0/26")}
    assert view == {net(P): hops("10.0.0.2"), net("10.244.3.0/26"): hops("10.0.0.2")}
    assert net("192.168.0.0/26") not in view and view.get(net("192.168.0.0/26")) is None
    with pytest.raises(KeyError):
        view[net("10.244.9.0/26")]
    assert dict(view.items()) == dict(view) and list(view.values()) == [hops("10.0.0.2")] * 2
    rib.update(A, withdrawn=[P])
    assert len(view) == 1 and net(P) not in view  # before changes() forgets the destination
    rib.changes()
    assert list(view) == [net("10.244.3.0/26")]
    with pytest.raises(TypeError):
        view[net(P)] = hops("10.0.0.2")  # type: ignore[index]


def test_the_adj_rib_in_is_keyed_by_nlri_with_or_without_a_path_identifier():
    rib = make_rib()
    announce(rib, path(R1, next_hop="10.0.0.5", path_id=1), path(R1, next_hop="10.0.0.6", path_id=2),
             path(R1, "10.244.3.0/26", next_hop="10.0.0.5"), path(A))
    assert dict(rib.adj_rib_in(R1)) == {
        NLRI(net(P), 1): path(R1, next_hop="10.0.0.5", path_id=1),
        NLRI(net(P), 2): path(R1, next_hop="10.0.0.6", path_id=2),
        NLRI(net("10.244.3.0/26")): path(R1, "10.244.3.0/26", next_hop="10.0.0.5"),
    }
    assert dict(rib.adj_rib_in(A)) == {NLRI(net(P)): path(A)}
    rib.peer_down(R1, now=0.0, graceful=True, restart_time=10)
    assert rib.stale(R1) == {NLRI(net(P), 1), NLRI(net(P), 2), NLRI(net("10.244.3.0/26"))}
    assert rib.stale(A) == frozenset()
    rib.peer_down(R1, now=1.0, graceful=False)
    assert fib(rib) == {net(P): hops("10.0.0.2")} and rib.adj_rib_in(R1) == {}


def test_a_peer_is_known_by_its_address_not_by_the_object():
    """RibFeed makes a new Peer per line until the peer's OPEN is read: equal peers, other objects."""
    def again():
        return Peer("10.0.0.2", 64512, 64512, "10.0.0.2")

    rib = make_rib()
    rib.update(again(), [path(again()), path(again(), "10.244.3.0/26")])
    rib.update(again(), [path(again(), next_hop="10.0.0.9")])  # replaces, does not add
    assert len(rib.adj_rib_in("10.0.0.2")) == 2 and rib.candidates(P) == [path(A, next_hop="10.0.0.9")]
    announce(rib, path(B), path(again(), "10.244.3.0/26", path_id=4))
    rib.update(again(), withdrawn=[NLRI(net("10.244.3.0/26"), 4)])
    assert len(rib.candidates("10.244.3.0/26")) == 1
    rib.peer_down(ipaddress.ip_address("10.0.0.2"), now=0.0, graceful=True, restart_time=5)
    assert rib.stale("10.0.0.2") == {NLRI(net(P)), NLRI(net("10.244.3.0/26"))}
    rib.end_of_rib("10.0.0.2")
    assert fib(rib) == {net(P): hops("10.0.0.3")} and rib.adj_rib_in(again()) == {}
