"""Who peers with whom (bgpd/peering.py): the sessions Calico's confd would render for a node,
built from resources parsed the way `percalectl apply` parses them (calico.md §2.4, §2.8)."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest

from percale.bgpd.peering import (
    GLOBAL,
    MESH,
    NODE,
    SecretRef,
    Session,
    local_speaker,
    node_addresses,
    router_id,
    sessions_for,
    sessions_with_clashes,
)
from percale.api import BGPConfiguration, BGPPeer, Node, parse

pytestmark = pytest.mark.unit

API = "percale.io/v1"


def node(name: str, v4: str | None = None, v6: str | None = None, *, asn: int | None = None,
         rr: str | None = None, labels: dict[str, str] | None = None) -> Node:
    bgp = {"ipv4Address": v4, "ipv6Address": v6, "asNumber": asn, "routeReflectorClusterID": rr}
    meta: dict[str, Any] = {"name": name, "labels": labels or {}}
    spec = {"bgp": {k: v for k, v in bgp.items() if v is not None}} if any(bgp.values()) else {}
    return parse({"apiVersion": API, "kind": "Node", "metadata": meta, "spec": spec})


def peer(name: str, **spec: Any) -> BGPPeer:
    return parse({"apiVersion": API, "kind": "BGPPeer", "metadata": {"name": name}, "spec": spec})


def config(name: str = "default", **spec: Any) -> BGPConfiguration:
    return parse({"apiVersion": API, "kind": "BGPConfiguration", "metadata": {"name": name}, "spec": spec})


def by_name(sessions: list[Session]) -> dict[str, Session]:
    return {s.name: s for s in sessions}


# a: 10.0.0.9, b: 10.0.0.10, c: 10.0.0.2 — numerically b is highest, as text a is.
MESH3 = [node("a", "10.0.0.9/24"), node("b", "10.0.0.10/24"), node("c", "10.0.0.2/24")]


def test_three_node_mesh_names_and_defaults():
    sessions = sessions_for("a", MESH3, [], [])
    assert [s.name for s in sessions] == ["Mesh_10_0_0_2", "Mesh_10_0_0_10"]  # numeric order
    b = by_name(sessions)["Mesh_10_0_0_10"]
    assert b == Session(
        name="Mesh_10_0_0_10", kind=MESH, family=4, peer_address="10.0.0.10", peer_port=179,
        peer_as=64512, local_as=64512, local_address="10.0.0.9", passive=False, password=None,
        restart_time=120, peer_node="b",
    )


def test_mesh_passive_side_is_chosen_by_comparing_address_text():
    passive = {(n.metadata.name, s.peer_node): s.passive
               for n in MESH3 for s in sessions_for(n.metadata.name, MESH3, [], [])}
    # "10.0.0.10" < "10.0.0.9" as strings, although 10 > 9 as numbers: a connects to b.
    assert passive[("a", "b")] is False and passive[("b", "a")] is True
    assert passive[("b", "c")] is True and passive[("c", "b")] is False
    assert passive[("a", "c")] is False and passive[("c", "a")] is True
    # Every pair has exactly one active end.
    for (x, y), flag in passive.items():
        assert flag != passive[(y, x)]


def test_mesh_disabled_leaves_no_sessions():
    assert sessions_for("a", MESH3, [], [config(nodeToNodeMeshEnabled=False)]) == []


def test_unknown_node_or_node_without_bgp_has_no_sessions():
    assert sessions_for("zz", MESH3, [], []) == []
    nodes = [*MESH3, node("plain")]
    assert sessions_for("plain", nodes, [], []) == []
    assert len(sessions_for("a", nodes, [], [])) == 2  # a node without BGP is nobody's mesh peer


def test_mesh_uses_global_as_number_and_per_node_as():
    nodes = [node("a", "10.0.0.1/24", asn=65001), node("b", "10.0.0.2/24"), node("c", "10.0.0.3/24")]
    sessions = by_name(sessions_for("a", nodes, [], [config(asNumber=65100)]))
    assert sessions["Mesh_10_0_0_2"].local_as == 65001
    assert sessions["Mesh_10_0_0_2"].peer_as == 65100
    assert by_name(sessions_for("b", nodes, [], [config(asNumber=65100)]))["Mesh_10_0_0_1"].peer_as == 65001


# Route reflectors as calico.md §2.8 sets them up.
RR_NODES = [
    node("rr1", "10.0.0.1/24", rr="244.0.0.1", labels={"route-reflector": "true"}),
    node("rr2", "10.0.0.2/24", rr="244.0.0.1", labels={"route-reflector": "true"}),
    node("c1", "10.0.0.3/24"),
    node("c2", "10.0.0.4/24"),
]
PEER_WITH_RRS = peer("peer-with-rrs", nodeSelector="all()", peerSelector="route-reflector == 'true'")


def test_route_reflectors_with_mesh_off():
    configs = [config(nodeToNodeMeshEnabled=False)]

    client = sessions_for("c1", RR_NODES, [PEER_WITH_RRS], configs)
    assert [(s.name, s.kind, s.peer_node) for s in client] == [
        ("Node_10_0_0_1", NODE, "rr1"), ("Node_10_0_0_2", NODE, "rr2"),
    ]
    assert not any(s.route_reflector_client or s.passive for s in client)

    rr1 = by_name(sessions_for("rr1", RR_NODES, [PEER_WITH_RRS], configs))
    assert list(rr1) == ["Node_10_0_0_2", "Node_10_0_0_3", "Node_10_0_0_4"]
    # The other reflector shares the cluster ID: a plain iBGP peer, not a client.
    assert rr1["Node_10_0_0_2"].route_reflector_client is False
    assert rr1["Node_10_0_0_2"].cluster_id is None
    # The clients' sessions exist on the reflector through the automatic reverse peering.
    for name, peer_node in (("Node_10_0_0_3", "c1"), ("Node_10_0_0_4", "c2")):
        assert rr1[name].route_reflector_client is True
        assert rr1[name].cluster_id == "244.0.0.1"
        assert rr1[name].peer_node == peer_node
        assert rr1[name].local_address == "10.0.0.1"


def test_route_reflectors_while_mesh_is_still_on():
    """Step 2 of the recipe: clients keep meshing with each other and add the reflectors;
    reflectors stay out of the mesh."""
    client = sessions_for("c1", RR_NODES, [PEER_WITH_RRS], [])
    assert [(s.name, s.kind) for s in client] == [
        ("Node_10_0_0_1", NODE), ("Node_10_0_0_2", NODE), ("Mesh_10_0_0_4", MESH),
    ]
    assert [s.kind for s in sessions_for("rr1", RR_NODES, [PEER_WITH_RRS], [])] == [NODE] * 3


def test_reflector_with_a_different_cluster_id_treats_the_other_as_client():
    nodes = [node("rr1", "10.0.0.1/24", rr="244.0.0.1", labels={"route-reflector": "true"}),
             node("rr2", "10.0.0.2/24", rr="244.0.0.2", labels={"route-reflector": "true"})]
    (session,) = sessions_for("rr1", nodes, [PEER_WITH_RRS], [])
    assert session.route_reflector_client and session.cluster_id == "244.0.0.1"


def test_per_node_as_and_ebgp_tor_peer_by_node_selector_with_port():
    nodes = [node("a", "10.0.1.5/24", asn=65001, labels={"rack": "r1"}),
             node("b", "10.0.2.5/24", asn=65002, labels={"rack": "r2"})]
    tor = peer("tor-r1", nodeSelector="rack == 'r1'", peerIP="10.0.1.1:1179", asNumber=65000)
    a = by_name(sessions_for("a", nodes, [tor], []))
    assert a["Node_10_0_1_1_port_1179"] == Session(
        name="Node_10_0_1_1_port_1179", kind=NODE, family=4, peer_address="10.0.1.1",
        peer_port=1179, peer_as=65000, local_as=65001, local_address="10.0.1.5",
    )
    assert a["Mesh_10_0_2_5"].peer_as == 65002 and a["Mesh_10_0_2_5"].local_as == 65001
    assert list(by_name(sessions_for("b", nodes, [tor], []))) == ["Mesh_10_0_1_5"]


def test_global_peer_applies_to_every_node_and_the_peer_node_skips_itself():
    nodes = [*MESH3, node("d", "192.168.0.1/24")]
    route_server = peer("route-server", peerIP="192.168.0.1", asNumber=64512)
    for name in ("a", "b", "c"):
        s = by_name(sessions_for(name, nodes, [route_server], [config(nodeToNodeMeshEnabled=False)]))
        assert s["Global_192_168_0_1"].kind == GLOBAL
        assert s["Global_192_168_0_1"].peer_as == 64512
    # The peer is node d itself: d skips the session to its own address, and instead gets the
    # reverse side of every node's peering with it.
    d = sessions_for("d", nodes, [route_server], [config(nodeToNodeMeshEnabled=False)])
    assert [(s.name, s.kind, s.peer_node) for s in d] == [
        ("Node_10_0_0_2", NODE, "c"), ("Node_10_0_0_9", NODE, "a"), ("Node_10_0_0_10", NODE, "b"),
    ]


def test_global_peer_that_is_a_calico_node_follows_the_passive_rule():
    nodes = [node("a", "10.0.0.9/24"), node("b", "10.0.0.10/24")]
    to_a = peer("to-a", peerIP="10.0.0.9", asNumber=64512)
    off = [config(nodeToNodeMeshEnabled=False)]
    (from_b,) = sessions_for("b", nodes, [to_a], off)
    assert (from_b.name, from_b.passive) == ("Global_10_0_0_9", True)  # "10.0.0.9" > "10.0.0.10"
    # a gets the reverse peering as a node-specific session, which is always active.
    (from_a,) = sessions_for("a", nodes, [to_a], off)
    assert (from_a.name, from_a.kind, from_a.passive) == ("Node_10_0_0_10", NODE, False)
    assert from_a.peer_node == "b"


def test_node_scoped_peer_only_on_that_node():
    ext = peer("ext", node="a", peerIP="192.168.0.2", asNumber=65000)
    assert "Node_192_168_0_2" in by_name(sessions_for("a", MESH3, [ext], []))
    for name in ("b", "c"):
        assert "Node_192_168_0_2" not in by_name(sessions_for(name, MESH3, [ext], []))


def test_reverse_peering_between_nodes_unless_manual():
    off = [config(nodeToNodeMeshEnabled=False)]
    a_to_b = peer("a-to-b", node="a", peerIP="10.0.0.10", asNumber=64512)
    assert [s.name for s in sessions_for("a", MESH3, [a_to_b], off)] == ["Node_10_0_0_10"]
    assert [s.name for s in sessions_for("b", MESH3, [a_to_b], off)] == ["Node_10_0_0_9"]
    assert sessions_for("c", MESH3, [a_to_b], off) == []
    manual = peer("a-to-b", node="a", peerIP="10.0.0.10", asNumber=64512, reversePeering="Manual")
    assert sessions_for("b", MESH3, [manual], off) == []
    # An AS that is not b's means the peerIP is not node b: no reverse peering either.
    other_as = peer("a-to-b", node="a", peerIP="10.0.0.10", asNumber=65000)
    assert sessions_for("b", MESH3, [other_as], off) == []


def test_duplicates_collapse_to_mesh_then_global_then_node():
    to_b = peer("to-b", node="a", peerIP="10.0.0.10", asNumber=64512, ttlSecurity=1)
    sessions = sessions_for("a", MESH3, [to_b], [])
    assert [(s.name, s.ttl_security) for s in sessions] == [("Mesh_10_0_0_2", None), ("Mesh_10_0_0_10", None)]
    everywhere = peer("everywhere", peerIP="192.168.0.1", asNumber=65000)
    also_a = peer("also-a", node="a", peerIP="192.168.0.1", asNumber=65001)
    (session,) = sessions_for("a", MESH3, [also_a, everywhere], [config(nodeToNodeMeshEnabled=False)])
    assert (session.kind, session.peer_as) == (GLOBAL, 65000)


def test_two_bgppeers_at_one_address_on_two_ports_keep_the_global_one():
    """Calico renders Global_10_0_0_9 and Node_10_0_0_9_port_1790 side by side; ExaBGP keys a
    neighbour by peer address and refused both (its whole configuration: "duplicate peer
    definition"), so the node kept no session at all, the mesh included. One is kept, by
    Calico's precedence, and the other is reported, naming its BGPPeer."""
    nodes = [node("a", "10.0.0.1/24")]
    tor = peer("tor", peerIP="10.0.0.9", asNumber=64600)
    tor_bgp2 = peer("tor-bgp2", node="a", peerIP="10.0.0.9:1790", asNumber=64601)
    sessions, clashes = sessions_with_clashes("a", nodes, [tor_bgp2, tor], [])
    assert [(s.name, s.peer_port, s.bgp_peer) for s in sessions] == [
        ("Global_10_0_0_9", 179, "tor")]
    assert sessions_for("a", nodes, [tor_bgp2, tor], []) == sessions
    ((dropped, kept),) = clashes
    assert (dropped.name, kept.name) == ("Node_10_0_0_9_port_1790", "Global_10_0_0_9")
    told = str(clashes[0])
    assert "BGPPeer tor-bgp2" in told and "BGPPeer tor," in told and "10.0.0.9" in told


def test_the_mesh_keeps_a_nodes_address_that_a_bgppeer_names_on_another_port():
    nodes = [node("a", "10.0.0.1/24"), node("b", "10.0.0.2/24")]
    to_b = peer("b-second-port", node="a", peerIP="10.0.0.2:1790", asNumber=64600)
    sessions, clashes = sessions_with_clashes("a", nodes, [to_b], [])
    assert [(s.name, s.kind, s.peer_port) for s in sessions] == [("Mesh_10_0_0_2", MESH, 179)]
    assert [(c.dropped.name, c.dropped.bgp_peer) for c in clashes] == [
        ("Node_10_0_0_2_port_1790", "b-second-port")]
    assert "node-to-node mesh (node b)" in str(clashes[0])


def test_within_a_class_the_bgppeer_first_by_name_keeps_the_address():
    nodes = [node("a", "10.0.0.1/24")]
    # Not the port, nor the order given: the name decides.
    second = peer("b-tor", peerIP="10.0.0.9", asNumber=64600)
    first = peer("a-tor", peerIP="10.0.0.9:1790", asNumber=64601)
    sessions, clashes = sessions_with_clashes("a", nodes, [second, first], [])
    assert [(s.name, s.bgp_peer) for s in sessions] == [("Global_10_0_0_9_port_1790", "a-tor")]
    assert [c.dropped.bgp_peer for c in clashes] == ["b-tor"]
    # Node-specific ones likewise, below every global one.
    mine = [peer("z-mine", node="a", peerIP="10.0.0.8:1791", asNumber=64602),
            peer("y-mine", node="a", peerIP="10.0.0.8:1792", asNumber=64603)]
    sessions, clashes = sessions_with_clashes("a", nodes, mine, [])
    assert [s.bgp_peer for s in sessions] == ["y-mine"]
    assert [c.dropped.bgp_peer for c in clashes] == ["z-mine"]


def test_exabgp_is_never_given_two_neighbours_at_one_address():
    from percale.bgpd.agent import neighbors
    from percale.bgpd.exabgp_config import render

    nodes = [node("a", "10.0.0.1/24"), node("b", "10.0.0.2/24")]
    peers = [peer("tor", peerIP="10.0.0.9", asNumber=64600),
             peer("tor-bgp2", node="a", peerIP="10.0.0.9:1790", asNumber=64601),
             peer("b-second-port", node="a", peerIP="10.0.0.2:1790", asNumber=64600)]
    text = render("10.0.0.1", neighbors(sessions_for("a", nodes, peers, []), 179, None), "true")
    assert text.count("neighbor 10.0.0.9 {") == 1 and text.count("neighbor 10.0.0.2 {") == 1


def test_a_session_compares_equal_whichever_bgppeer_it_comes_from():
    # A renamed BGPPeer changes no setting of the session: nothing is reloaded for it.
    nodes = [node("a", "10.0.0.1/24")]
    (before,) = sessions_for("a", nodes, [peer("tor", peerIP="10.0.0.9", asNumber=64600)], [])
    (after,) = sessions_for("a", nodes, [peer("tor-1", peerIP="10.0.0.9", asNumber=64600)], [])
    assert before == after and (before.bgp_peer, after.bgp_peer) == ("tor", "tor-1")


def test_ipv6_sessions():
    nodes = [node("a", "10.0.0.1/24", "fd00::1/64"), node("b", "10.0.0.2/24", "fd00::a/64"),
             node("c", "10.0.0.3/24")]
    ipv6_peer = peer("v6-tor", peerIP="[fd00::ff]:1179", asNumber=65000)
    sessions = sessions_for("a", nodes, [ipv6_peer], [])
    assert [(s.family, s.name) for s in sessions] == [
        (4, "Mesh_10_0_0_2"), (4, "Mesh_10_0_0_3"),
        (6, "Mesh_fd00__a"), (6, "Global_fd00__ff_port_1179"),
    ]
    mesh6, tor6 = sessions[2], sessions[3]
    assert (mesh6.peer_address, mesh6.local_address, mesh6.passive) == ("fd00::a", "fd00::1", True)
    assert (tor6.peer_port, tor6.local_address) == (1179, "fd00::1")
    # c has no IPv6 address: no IPv6 speaker, and nobody's IPv6 peer.
    assert {s.family for s in sessions_for("c", nodes, [ipv6_peer], [])} == {4}


def test_peer_selector_makes_a_session_per_family_both_ends_have():
    nodes = [node("a", "10.0.0.1/24", "fd00::1/64", labels={"rr": "y"}),
             node("b", "10.0.0.2/24", "fd00::2/64"), node("c", "10.0.0.3/24")]
    to_a = peer("to-a", peerSelector="rr == 'y'")
    off = [config(nodeToNodeMeshEnabled=False)]
    assert [s.name for s in sessions_for("b", nodes, [to_a], off)] == ["Global_10_0_0_1", "Global_fd00__1"]
    assert [s.name for s in sessions_for("c", nodes, [to_a], off)] == ["Global_10_0_0_1"]
    assert [s.name for s in sessions_for("a", nodes, [to_a], off)] == [
        "Node_10_0_0_2", "Node_10_0_0_3", "Node_fd00__2",
    ]


def test_listen_port_override_for_one_node():
    configs = [config(listenPort=1790), config("node.b", listenPort=1179)]
    a = by_name(sessions_for("a", MESH3, [], configs))
    assert a["Mesh_10_0_0_10"].peer_port == 1179  # b's own port; mesh names carry none
    assert a["Mesh_10_0_0_2"].peer_port == 1790
    speaker = local_speaker("b", MESH3, configs)
    assert (speaker.listen_port, speaker.router_id, speaker.as_number) == (1179, "10.0.0.10", 64512)
    assert local_speaker("c", MESH3, configs).listen_port == 1790
    assert local_speaker("c", MESH3, []).listen_port == 179
    # peerSelector sessions name the port they dial.
    to_b = peer("to-b", node="a", peerSelector="kubernetes.io/hostname == 'b'")
    nodes = [node("a", "10.0.0.9/24"), node("b", "10.0.0.10/24", labels={"kubernetes.io/hostname": "b"})]
    configs = [config(nodeToNodeMeshEnabled=False, listenPort=1790), config("node.b", listenPort=1179)]
    (session,) = sessions_for("a", nodes, [to_b], configs)
    assert (session.name, session.peer_port) == ("Node_10_0_0_10_port_1179", 1179)


def test_peer_ip_without_port_that_is_a_node_uses_its_listen_port():
    nodes = [node("a", "10.0.0.9/24"), node("b", "10.0.0.10/24")]
    to_b = peer("to-b", node="a", peerIP="10.0.0.10", asNumber=64512)
    configs = [config(nodeToNodeMeshEnabled=False), config("node.b", listenPort=1179)]
    (session,) = sessions_for("a", nodes, [to_b], configs)
    assert (session.name, session.peer_port) == ("Node_10_0_0_10_port_1179", 1179)


def test_passwords_are_carried_as_secret_references():
    secret = {"secretKeyRef": {"name": "bgp-secrets", "key": "tor"}}
    tor = peer("tor", peerIP="192.168.0.1", asNumber=65000, password=secret)
    mesh_secret = {"secretKeyRef": {"name": "bgp-secrets", "key": "mesh"}}
    sessions = by_name(sessions_for("a", MESH3, [tor], [config(nodeMeshPassword=mesh_secret)]))
    assert sessions["Global_192_168_0_1"].password == SecretRef("bgp-secrets", "tor")
    assert sessions["Mesh_10_0_0_10"].password == SecretRef("bgp-secrets", "mesh")


def test_ttl_security_and_restart_times():
    tor = peer("tor", peerIP="192.168.0.1", asNumber=65000, ttlSecurity=1, maxRestartTime="1m30s",
               keepaliveTime="10s")
    sessions = by_name(sessions_for("a", MESH3, [tor], [config(nodeMeshMaxRestartTime="300s")]))
    g = sessions["Global_192_168_0_1"]
    assert (g.ttl_security, g.restart_time, g.keepalive_time) == (1, 90, 10)
    m = sessions["Mesh_10_0_0_2"]
    assert (m.ttl_security, m.restart_time, m.keepalive_time) == (None, 300, None)


def test_keep_original_next_hop_applies_to_ebgp_only():
    ebgp = peer("ebgp", peerIP="192.168.0.1", asNumber=65000, keepOriginalNextHop=True)
    ibgp = peer("ibgp", peerIP="192.168.0.2", asNumber=64512, keepOriginalNextHop=True)
    keep = peer("keep", peerIP="192.168.0.3", asNumber=64512, nextHopMode="Keep")
    self_ = peer("self", peerIP="192.168.0.4", asNumber=65000, nextHopMode="Self")
    sessions = sessions_for("a", MESH3, [ebgp, ibgp, keep, self_], [config(nodeToNodeMeshEnabled=False)])
    assert [(s.peer_address, s.keep_next_hop, s.next_hop_self) for s in sessions] == [
        ("192.168.0.1", True, False), ("192.168.0.2", False, False),
        ("192.168.0.3", True, False), ("192.168.0.4", False, True),
    ]


def test_local_as_override_and_source_address_none():
    tor = peer("tor", peerIP="192.168.0.1", asNumber=65000, localASNumber=65010, sourceAddress="None")
    (session,) = sessions_for("a", MESH3, [tor], [config(nodeToNodeMeshEnabled=False)])
    assert (session.local_as, session.local_address) == (65010, None)


def test_a_global_peering_with_another_node_without_a_source_address_is_never_passive():
    """ExaBGP listens for a neighbour only on its local-address: a passive session without one
    could neither connect nor be connected to (node b, 10.0.0.10, would wait for 10.0.0.9: Calico
    compares the address text)."""
    to_a = peer("to-a", peerIP="10.0.0.9", asNumber=64512, sourceAddress="None")
    (session,) = sessions_for("b", MESH3, [to_a], [config(nodeToNodeMeshEnabled=False)])
    assert (session.local_address, session.passive) == (None, False)
    with_source = peer("to-a", peerIP="10.0.0.9", asNumber=64512)
    (session,) = sessions_for("b", MESH3, [with_source], [config(nodeToNodeMeshEnabled=False)])
    assert (session.local_address, session.passive) == ("10.0.0.10", True)


def test_router_id_and_addresses():
    a = node("a", "10.0.0.9/24", "fd00::9/64")
    assert node_addresses(a) == {4: "10.0.0.9", 6: "fd00::9"}
    assert router_id(a) == "10.0.0.9"
    assert router_id(a, "192.0.2.1") == "192.0.2.1"
    v6_only = node("v6", v6="fd00::1/64")
    assert router_id(v6_only) is None
    digest = hashlib.sha256(b"v6").digest()[:4]
    hashed = router_id(v6_only, "hash")
    assert hashed.split(".")[1:] == [str(b) for b in digest[1:]]
    assert int(hashed.split(".")[0]) <= 223
    speaker = local_speaker("a", [a], [])
    assert (speaker.ipv4_address, speaker.ipv6_address, speaker.cluster_id) == ("10.0.0.9", "fd00::9", None)
    assert local_speaker("missing", [a], []) is None


def test_num_allowed_local_as_numbers_reaches_peer_ip_sessions_only():
    """confd copies numAllowedLocalASNumbers onto a peerIP peering (BIRD `allow local as N`);
    peerSelector and reverse peerings between percale nodes, and the mesh, never carry it."""
    nodes = [node("a", "10.0.0.1/24", labels={"rr": "yes"}), node("b", "10.0.0.2/24")]
    peers = [peer("tor", peerIP="10.0.0.254", asNumber=65000, numAllowedLocalASNumbers=2),
             peer("rr", peerSelector="rr == 'yes'", numAllowedLocalASNumbers=3)]
    no_mesh = [config(nodeToNodeMeshEnabled=False)]
    b = by_name(sessions_for("b", nodes, peers, no_mesh))
    assert b["Global_10_0_0_254"].allow_local_as == 2
    assert b["Global_10_0_0_1"].allow_local_as == 0  # by peerSelector
    a = by_name(sessions_for("a", nodes, peers, no_mesh))
    assert a["Node_10_0_0_2"].allow_local_as == 0  # the reverse of b's
    assert by_name(sessions_for("b", nodes, peers, []))["Mesh_10_0_0_1"].allow_local_as == 0
    assert by_name(sessions_for("b", nodes, [peer("tor", peerIP="10.0.0.254", asNumber=65000)],
                                []))["Global_10_0_0_254"].allow_local_as == 0


def test_reachable_by_gives_each_peer_ip_session_a_host_route_through_its_gateway():
    """BGPPeer reachableBy: confd's static route `<peerIP>/32 via <reachableBy>` for the peerIP
    peerings of this node (global and node-scoped), none for peerSelector ones or the mesh."""
    from percale.bgpd.peer_routes import peer_routes

    nodes = [node("a", "10.0.0.1/24", v6="fd00::1/64", labels={"rack": "1"}), node("b", "10.0.0.2/24")]
    peers = [peer("tor", peerIP="10.255.0.1", asNumber=65000, reachableBy="10.0.0.254"),
             peer("tor-bgp2", peerIP="10.255.0.1:1790", asNumber=65000, reachableBy="10.0.0.253"),
             peer("tor6", peerIP="fd00:255::1", asNumber=65000, reachableBy="fd00::fe"),
             peer("rack", node="a", peerIP="10.255.1.1", asNumber=65001, reachableBy="10.0.0.250"),
             peer("plain", peerIP="10.0.0.99", asNumber=65002)]
    sessions = sessions_for("a", nodes, peers, [])
    assert by_name(sessions)["Global_10_255_0_1"].reachable_by == "10.0.0.254"
    assert by_name(sessions)["Mesh_10_0_0_2"].reachable_by is None
    # The same address on two ports: one session (by BGPPeer name), whose gateway it is.
    assert peer_routes(sessions) == {"10.255.0.1/32": "10.0.0.254", "fd00:255::1/128": "fd00::fe",
                                     "10.255.1.1/32": "10.0.0.250"}
    # Node b gets no node-scoped route of a's, and the peerIP ones it shares.
    assert peer_routes(sessions_for("b", nodes, peers, [])) == {"10.255.0.1/32": "10.0.0.254"}


def test_bgp_log_level_from_log_severity_screen_node_config_first():
    import logging

    from percale.bgpd.log_level import bgp_log_level

    assert bgp_log_level("a", []) is None
    assert bgp_log_level("a", [config(logSeverityScreen="Warning")]) == logging.WARNING
    both = [config(logSeverityScreen="Warning"), config("node.a", logSeverityScreen="fatal")]
    assert bgp_log_level("a", both) == logging.CRITICAL
    assert bgp_log_level("b", both) == logging.WARNING
    # A node's configuration that leaves it unset (it sets its listenPort) defers to the global.
    assert bgp_log_level("a", [config(logSeverityScreen="Debug"), config("node.a", listenPort=1790)]) == logging.DEBUG
