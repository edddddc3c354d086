"""Learned routes passed on to other peers as Calico's BIRD does: the rule and the ExaBGP
announcement (bgpd/pass_on.py), and the per-peer difference the relay sends (bgpd/relay.py)."""

from __future__ import annotations

import asyncio
import ipaddress

import pytest

from percale.bgpd.pass_on import Outgoing, Reflection, held_back, may_pass_on, pass_on
from percale.bgpd.peering import GLOBAL, MESH, Session
from percale.bgpd.communities import CommunityRule
from percale.bgpd.exabgp_json import RibFeed
from percale.bgpd.relay import Relay
from percale.bgpd.rib import AS_SET, AS_SEQUENCE, Path, Peer, Rib, reflect, reflects
from percale.bgpd.speaker import SpeakerError

pytestmark = pytest.mark.unit

LOCAL_AS, TOR_AS = 64512, 65000
MESH_PEER = Peer("10.0.0.2", LOCAL_AS, LOCAL_AS, "10.0.0.2")
TOR = Peer("10.0.0.254", TOR_AS, LOCAL_AS, "10.0.0.254")
OTHER_TOR = Peer("10.0.0.253", 65001, LOCAL_AS, "10.0.0.253")
BLOCK = "10.244.2.0/26"  # another node's block, learned over the mesh


def session(peer: Peer, **overrides) -> Session:
    fields = dict(name=f"Global_{peer.address}", kind=MESH if peer.ibgp else GLOBAL, family=4,
                  peer_address=str(peer.address), peer_port=179, peer_as=peer.asn,
                  local_as=LOCAL_AS, local_address="10.0.0.1")
    return Session(**(fields | overrides))


def test_a_mesh_route_goes_to_an_ebgp_peer_with_our_as_and_our_address():
    best = Path(BLOCK, "10.0.0.2", MESH_PEER, local_pref=100, med=5, originator_id="10.0.0.9",
                cluster_list=["244.0.0.1"])
    assert pass_on(best, session(TOR)) == (
        f"announce route {BLOCK} next-hop self origin igp as-path [ {LOCAL_AS} ]")


def test_keeping_the_next_hop_sends_the_originating_node():
    best = Path(BLOCK, "10.0.0.2", MESH_PEER)
    assert pass_on(best, session(TOR, keep_next_hop=True)) == (
        f"announce route {BLOCK} next-hop 10.0.0.2 origin igp as-path [ {LOCAL_AS} ]")


def test_no_route_goes_back_to_its_source_and_ibgp_routes_stay_off_ibgp_peers():
    from_tor = Path(BLOCK, "10.0.0.254", TOR, as_path=(TOR_AS,))
    assert pass_on(from_tor, session(TOR)) is None
    assert pass_on(Path(BLOCK, "10.0.0.2", MESH_PEER), session(MESH_PEER)) is None
    other_mesh = Peer("10.0.0.3", LOCAL_AS, LOCAL_AS, "10.0.0.3")
    assert pass_on(Path(BLOCK, "10.0.0.2", MESH_PEER), session(other_mesh)) is None


def test_an_ebgp_route_reaches_the_mesh_as_learned_and_other_ebgp_peers_prepended():
    best = Path(BLOCK, "10.0.0.254", TOR, as_path=(TOR_AS, 65100), med=7,
                communities=[(65000, 1)], large_communities=[(65000, 2, 3)])
    assert pass_on(best, session(MESH_PEER)) == (
        f"announce route {BLOCK} next-hop 10.0.0.254 origin igp as-path [ {TOR_AS} 65100 ] "
        "med 7 community [ 65000:1 ] large-community [ 65000:2:3 ]")
    assert pass_on(best, session(MESH_PEER, next_hop_self=True)).startswith(
        f"announce route {BLOCK} next-hop self ")
    assert pass_on(best, session(OTHER_TOR)) == (
        f"announce route {BLOCK} next-hop self origin igp as-path [ {LOCAL_AS} {TOR_AS} 65100 ] "
        "community [ 65000:1 ] large-community [ 65000:2:3 ]")


def test_an_as_set_keeps_its_parentheses():
    best = Path(BLOCK, "10.0.0.254", TOR, as_path=((AS_SEQUENCE, (TOR_AS,)), (AS_SET, (1, 2))))
    assert pass_on(best, session(OTHER_TOR)).endswith(f"as-path [ {LOCAL_AS} {TOR_AS} ] ( 1 2 )")


def test_a_prefix_only_goes_to_sessions_of_its_family():
    v6 = Peer("fd00::2", LOCAL_AS, LOCAL_AS, "10.0.0.2")
    best = Path("fd00:244::/122", "fd00::2", v6)
    assert pass_on(best, session(TOR)) is None
    assert pass_on(best, session(TOR, family=6, peer_address="fd00::254")) is not None


def test_only_a_node_with_two_sessions_one_of_them_ebgp_can_pass_anything_on():
    assert not may_pass_on([session(TOR)])
    assert not may_pass_on([session(MESH_PEER), session(Peer("10.0.0.3", LOCAL_AS, LOCAL_AS))])
    assert may_pass_on([session(MESH_PEER), session(TOR)])


def test_one_outgoing_route_gives_each_session_what_pass_on_would():
    """Outgoing builds each text once per form (eBGP with our AS and next-hop mode, iBGP,
    reflected) and shares it; every session still gets exactly what pass_on gives it alone."""
    clients = [Peer(f"10.0.0.{n}", LOCAL_AS, LOCAL_AS, f"10.0.0.{n}") for n in range(2, 6)]
    outside = [Peer("10.0.0.254", TOR_AS, LOCAL_AS, "10.0.0.254"),
               Peer("10.0.0.253", 65001, 64600, "10.0.0.253")]
    reflection = Reflection(ipaddress.IPv4Address("244.0.0.1"),
                            {clients[0].address, clients[1].address})
    sessions = [session(clients[0]), session(clients[1], next_hop_self=True),
                session(clients[2]), session(clients[3], next_hop_self=True),
                session(outside[0]), session(outside[0], keep_next_hop=True),
                session(outside[1], local_as=64600)]
    adding = (((64512, 7),), ())
    for best in (Path(BLOCK, "10.0.0.2", clients[0], communities=[(65000, 1)]),
                 Path(BLOCK, "10.0.0.4", clients[2]),  # a non-client's: to the clients only
                 Path(BLOCK, "10.0.0.254", outside[0], as_path=(TOR_AS,), local_pref=300)):
        route = Outgoing(best, reflection, adding)
        alone = [pass_on(best, s, reflection=reflection, adding=adding) for s in sessions]
        assert [route.to(s) for s in sessions] == alone
        assert len(set(alone)) > 2  # the sessions do differ
    # The same decision as reflect's, without building the reflected path.
    best = Path(BLOCK, "10.0.0.2", clients[0])
    for to in clients:
        assert reflects(best, to, cluster_id="244.0.0.1", clients=reflection.clients) is (
            reflect(best, to, cluster_id="244.0.0.1", clients=reflection.clients) is not None)


def test_held_back_inside_a_pool_that_disables_export():
    pools = [ipaddress.ip_network("10.245.0.0/16"), ipaddress.ip_network("fd00:245::/48")]
    assert held_back(ipaddress.ip_network("10.245.3.0/26"), pools)
    assert held_back(ipaddress.ip_network("fd00:245::/122"), pools)
    assert not held_back(ipaddress.ip_network(BLOCK), pools)
    assert not held_back(ipaddress.ip_network("10.0.0.0/8"), pools)  # wider than the pool


class Recorder:
    """ExaBGP as the relay sees it: the commands it was sent (`raw`), each as one command per
    neighbour it names (`commands`: `neighbor A , neighbor B announce ...` is two), and each
    neighbour's table of routes, known by prefix alone (ExaBGP's adj-rib-out)."""

    def __init__(self, refuse: bool = False):
        self.raw: list[str] = []
        self.commands: list[str] = []
        self.refuse = refuse
        self.tables: dict[str, dict[str, str]] = {}

    async def send(self, command: str, timeout: float = 30) -> None:
        if self.refuse:
            raise SpeakerError("refused")
        self.raw.append(command)
        words = command.split()
        peers = []
        while words[0] == "neighbor":
            peers.append(words[1])
            words = words[3:] if words[2] == "," else words[2:]
        rest = " ".join(words)
        verb, prefix = words[0], words[2]
        for peer in peers or list(self.tables) or ["*"]:
            one = f"neighbor {peer} {rest}" if peers else command
            self.commands.append(one)
            table = self.tables.setdefault(peer, {})
            if verb == "announce":
                table[prefix] = one
            else:
                table.pop(prefix, None)


def rib_with(*paths: Path) -> Rib:
    rib = Rib(router_id="10.0.0.1", pools=["10.244.0.0/16", "10.245.0.0/16"])
    rib.watch_best(True)
    for path in paths:
        rib.update(path.peer, [path])
    rib.changes()
    return rib


UP = {"10.0.0.2", "10.0.0.254"}


def catch_up(relay: Relay, rib: Rib, feed=None, up=UP) -> None:
    asyncio.run(relay.catch_up(rib, feed, up))


def passing_a_mesh_block_to_the_tor() -> tuple[Recorder, Relay, Rib]:
    """A node with the mesh and a ToR, which it has sent the mesh peer's block."""
    speaker = Recorder()
    relay = Relay(speaker)
    relay.configure([session(MESH_PEER), session(TOR)], [])
    rib = rib_with(Path(BLOCK, "10.0.0.2", MESH_PEER))
    catch_up(relay, rib)
    return speaker, relay, rib


def test_the_relay_sends_each_change_once_and_withdraws_what_goes():
    speaker = Recorder()
    relay = Relay(speaker)
    sessions = [session(MESH_PEER), session(TOR)]
    assert relay.configure(sessions, [])
    assert not relay.configure(sessions, [])  # nothing changed: no walk of the table due
    rib = rib_with(Path(BLOCK, "10.0.0.2", MESH_PEER))
    catch_up(relay, rib)
    assert speaker.commands == [
        f"neighbor 10.0.0.254 announce route {BLOCK} next-hop self origin igp as-path [ {LOCAL_AS} ]"]
    rib.update(MESH_PEER, [Path(BLOCK, "10.0.0.2", MESH_PEER)])  # the same route again
    catch_up(relay, rib)
    assert len(speaker.commands) == 1  # unchanged: not sent again
    # A new best path with the same next hop (the FIB sees no change): passed on as it is now.
    rib.update(MESH_PEER, [Path(BLOCK, "10.0.0.2", MESH_PEER, origin="incomplete")])
    assert not rib.changes()
    catch_up(relay, rib)
    assert speaker.commands[-1].endswith("origin incomplete as-path [ 64512 ]")
    rib.update(MESH_PEER, withdrawn=[BLOCK])
    catch_up(relay, rib)
    assert speaker.commands[-1] == f"neighbor 10.0.0.254 withdraw route {BLOCK}"
    assert relay.sent == {}


def test_a_route_that_moves_to_another_source_with_the_same_next_hop_is_followed():
    """Two ToRs send one prefix with the same third-party next hop; the first goes: the route
    now comes from the second, which must not be sent its own route, and the first gets it."""
    tor2 = Peer("10.0.0.253", TOR_AS, LOCAL_AS, "10.0.0.253")
    speaker = Recorder()
    relay = Relay(speaker)
    relay.configure([session(TOR), session(tor2)], [])
    rib = rib_with(Path(BLOCK, "10.0.0.9", TOR, as_path=(TOR_AS,)))
    rib.update(tor2, [Path(BLOCK, "10.0.0.9", tor2, as_path=(TOR_AS, 1))])
    rib.changes()
    up = {"10.0.0.254", "10.0.0.253"}
    catch_up(relay, rib, up=up)
    assert set(relay.sent) == {"10.0.0.253"}
    rib.update(TOR, withdrawn=[BLOCK])
    assert not rib.changes()  # the next hop stays 10.0.0.9
    catch_up(relay, rib, up=up)
    assert set(relay.sent) == {"10.0.0.254"}
    assert speaker.tables["10.0.0.253"] == {}


def test_own_prefixes_are_never_passed_on_nor_withdrawn_and_more_specifics_of_own_blocks_stay():
    speaker = Recorder()
    relay = Relay(speaker)
    relay.configure([session(MESH_PEER), session(TOR)], [])
    borrowed = "10.244.2.7/32"
    rib = rib_with(Path(BLOCK, "10.0.0.2", MESH_PEER))
    catch_up(relay, rib)
    assert BLOCK in speaker.tables["10.0.0.254"]
    # The block becomes ours (claimed while the old owner's withdrawal is on its way): the
    # announcer's announcement replaces the passed-on one, and the relay withdraws nothing.
    asyncio.run(speaker.send(f"announce route {BLOCK} next-hop self"))
    assert relay.set_own({BLOCK}, {BLOCK})
    rib.update(MESH_PEER, [Path(borrowed, "10.0.0.2", MESH_PEER)])
    rib.update(MESH_PEER, withdrawn=[BLOCK])
    catch_up(relay, rib)
    assert speaker.tables["10.0.0.254"] == {BLOCK: f"announce route {BLOCK} next-hop self"}
    assert relay.sent == {}  # nor the /32 another node borrowed from our block
    # No longer ours while the mesh peer announces it again: passed on once more.
    rib.update(MESH_PEER, [Path(BLOCK, "10.0.0.2", MESH_PEER)])
    asyncio.run(speaker.send(f"withdraw route {BLOCK}"))
    assert relay.set_own(set(), set())
    catch_up(relay, rib)
    assert speaker.tables["10.0.0.254"][BLOCK].startswith(f"neighbor 10.0.0.254 announce route {BLOCK}")
    assert borrowed in speaker.tables["10.0.0.254"]


def test_the_relay_holds_back_no_export_pools_and_follows_the_settings():
    speaker = Recorder()
    relay = Relay(speaker)
    sessions = [session(MESH_PEER), session(TOR)]
    relay.configure(sessions, ["10.245.0.0/16"])
    rib = rib_with(Path(BLOCK, "10.0.0.2", MESH_PEER), Path("10.245.0.0/26", "10.0.0.2", MESH_PEER))
    catch_up(relay, rib)
    assert [c.split()[4] for c in speaker.commands] == [BLOCK]
    # The BGPPeer now keeps the next hop: that session alone is worked out again.
    assert relay.configure([session(MESH_PEER), session(TOR, keep_next_hop=True)], ["10.245.0.0/16"])
    catch_up(relay, rib)
    assert speaker.commands[-1].endswith("next-hop 10.0.0.2 origin igp as-path [ 64512 ]")
    assert len(speaker.commands) == 2


def test_a_session_that_comes_up_is_sent_everything_again_and_a_failure_leaves_the_relay_behind():
    speaker, relay, rib = passing_a_mesh_block_to_the_tor()
    assert not relay.behind
    relay.session_up("10.0.0.254")
    assert relay.behind
    catch_up(relay, rib)
    assert len(speaker.commands) == 2  # the same announcement once more, as ExaBGP may have lost it
    speaker.refuse = True
    rib.update(MESH_PEER, withdrawn=[BLOCK])
    with pytest.raises(SpeakerError):
        catch_up(relay, rib)
    assert relay.behind
    speaker.refuse = False
    catch_up(relay, rib)
    assert speaker.commands[-1] == f"neighbor 10.0.0.254 withdraw route {BLOCK}"
    assert not relay.behind


def test_well_known_communities_and_an_ebgp_peers_local_preference_stay_home():
    no_export = Path(BLOCK, "10.0.0.254", TOR, as_path=(TOR_AS,), communities=[(65535, 65281)])
    assert pass_on(no_export, session(OTHER_TOR)) is None
    assert pass_on(no_export, session(MESH_PEER)) is not None
    no_advertise = Path(BLOCK, "10.0.0.254", TOR, as_path=(TOR_AS,), communities=[(65535, 65282)])
    assert pass_on(no_advertise, session(MESH_PEER)) is None
    with_pref = Path(BLOCK, "10.0.0.254", TOR, as_path=(TOR_AS,), local_pref=300)
    assert "local-preference" not in pass_on(with_pref, session(MESH_PEER))


def test_prefix_advertisement_communities_are_added_to_what_is_passed_on():
    speaker = Recorder()
    relay = Relay(speaker)
    relay.configure([session(MESH_PEER), session(TOR)], [])
    rib = rib_with(Path(BLOCK, "10.0.0.2", MESH_PEER, communities=[(1, 1)]))
    catch_up(relay, rib)
    rule = CommunityRule(ipaddress.ip_network("10.244.0.0/16"), ((65000, 100), (1, 1)),
                         ((65000, 1, 2),))
    assert relay.set_communities((rule,))
    catch_up(relay, rib)
    assert speaker.commands[-1].endswith(
        "community [ 1:1 65000:100 ] large-community [ 65000:1:2 ]")


def test_a_reflector_passes_one_clients_block_to_the_others_and_looks_at_nothing_else():
    clients = [Peer(f"10.0.0.{n}", LOCAL_AS, LOCAL_AS, f"10.0.0.{n}") for n in range(2, 6)]
    sessions = [session(p, route_reflector_client=True, cluster_id="244.0.0.1") for p in clients]
    speaker = Recorder()
    relay = Relay(speaker)
    assert relay.configure(sessions, [], "244.0.0.1")
    rib = rib_with(*(Path(f"10.244.{n}.0/26", str(p.address), p) for n, p in enumerate(clients)))
    up = {str(p.address) for p in clients}
    feed = RibFeed(rib)
    catch_up(relay, rib, feed, up)
    assert len(speaker.commands) == 4 * 3  # each block to the three other clients
    assert len(speaker.raw) == 4  # in one command each
    assert ("neighbor 10.0.0.3 announce route 10.244.0.0/26 next-hop 10.0.0.2 origin igp "
            "originator-id 10.0.0.2 cluster-list [ 244.0.0.1 ]") in speaker.commands
    assert not any(c.startswith("neighbor 10.0.0.2 announce route 10.244.0.0/26")
                   for c in speaker.commands)
    # One more block on one client: three announcements, nothing else looked at or sent.
    speaker.commands.clear(), speaker.raw.clear()
    rib.update(clients[0], [Path("10.244.9.0/26", "10.0.0.2", clients[0])])
    catch_up(relay, rib, feed, up)
    assert sorted(c.split()[1] for c in speaker.commands) == ["10.0.0.3", "10.0.0.4", "10.0.0.5"]
    assert speaker.raw[-1].startswith(
        "neighbor 10.0.0.3 , neighbor 10.0.0.4 , neighbor 10.0.0.5 announce route 10.244.9.0/26 ")
    # nextHopMode Self towards one client: only that session's announcements change.
    speaker.commands.clear(), speaker.raw.clear()
    sessions[1] = session(clients[1], route_reflector_client=True, cluster_id="244.0.0.1",
                          next_hop_self=True)
    assert relay.configure(sessions, [], "244.0.0.1")
    catch_up(relay, rib, feed, up)
    assert {c.split()[1] for c in speaker.commands} == {"10.0.0.3"}
    assert all(" next-hop self " in c for c in speaker.commands)


def test_a_session_added_as_a_client_is_reflected_to_at_once():
    """A reflector with one client and one non-client gains a second client: routes from the
    non-client go to it once its session is up (it is a client now, though nothing else of the
    configuration changed)."""
    client, other = (Peer(f"10.0.0.{n}", LOCAL_AS, LOCAL_AS, f"10.0.0.{n}") for n in (2, 3))
    non_client = Peer("10.0.0.9", LOCAL_AS, LOCAL_AS, "10.0.0.9")
    rr = dict(route_reflector_client=True, cluster_id="244.0.0.1")
    sessions = [session(client, **rr), session(non_client)]
    speaker = Recorder()
    relay = Relay(speaker)
    relay.configure(sessions, [], "244.0.0.1")
    rib = rib_with(Path("10.244.9.0/26", "10.0.0.9", non_client))
    feed = RibFeed(rib)
    catch_up(relay, rib, feed, {"10.0.0.2", "10.0.0.9"})
    assert [c.split()[1] for c in speaker.commands] == ["10.0.0.2"]
    speaker.commands.clear()
    relay.configure([*sessions, session(other, **rr)], [], "244.0.0.1")
    relay.session_up("10.0.0.3")
    catch_up(relay, rib, feed, {"10.0.0.2", "10.0.0.3", "10.0.0.9"})
    assert [c.split()[1] for c in speaker.commands] == ["10.0.0.3"]


def test_a_node_without_anything_to_pass_on_keeps_no_list_of_changes():
    relay = Relay(Recorder())
    relay.configure([session(MESH_PEER), session(Peer("10.0.0.3", LOCAL_AS, LOCAL_AS))], [])
    assert not relay.active
    rib = Rib(router_id="10.0.0.1", pools=["10.244.0.0/16"])
    rib.watch_best(relay.active)
    rib.update(MESH_PEER, [Path(BLOCK, "10.0.0.2", MESH_PEER)])
    assert rib.take_best_changes() == []


def test_a_prefix_that_becomes_our_own_is_withdrawn_where_a_filter_keeps_our_own_away():
    """Per-neighbour tables: the ToR's filter rejects our own routes, so the own announcement
    does not replace the passed-on route there: the relay withdraws it."""
    speaker, relay, rib = passing_a_mesh_block_to_the_tor()
    assert BLOCK in speaker.tables["10.0.0.254"]
    assert relay.set_own({BLOCK}, {BLOCK}, {"10.0.0.2": {BLOCK}, "10.0.0.254": set()})
    rib.update(MESH_PEER, withdrawn=[BLOCK])
    catch_up(relay, rib)
    assert BLOCK not in speaker.tables["10.0.0.254"]


def test_when_nothing_can_be_passed_on_any_more_what_was_sent_is_withdrawn_once():
    speaker, relay, rib = passing_a_mesh_block_to_the_tor()
    assert BLOCK in speaker.tables["10.0.0.254"]
    # The ToR's BGPPeer now says our AS: iBGP only, nothing to pass on.
    assert relay.configure([session(MESH_PEER), session(TOR, peer_as=LOCAL_AS)], [])
    assert not relay.active
    catch_up(relay, rib)
    assert speaker.tables["10.0.0.254"] == {} and relay.sent == {}
    sent = len(speaker.commands)
    relay.set_own({"10.244.9.0/26"}, {"10.244.9.0/26"})  # a block claimed: nothing to look at
    catch_up(relay, rib)
    assert len(speaker.commands) == sent and not relay.behind
