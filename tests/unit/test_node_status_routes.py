"""What the NodeStatus record says about the agent and its routes (Calico's CalicoNodeStatus
status.agent and status.routes), from a real RIB: the router ID and ExaBGP's boot and
reconfiguration times; the routes the node programs (FIB: its own blocks' blackholes, and each
next hop of every learned prefix, with the peer it came from) and the paths it holds but did not
choose (RIB); a large table capped per family."""

from __future__ import annotations

from datetime import datetime, timezone
from types import SimpleNamespace

import pytest

from percale.bgpd.announcements import Announcements
from percale.bgpd.peers import PeerStatus
from percale.bgpd.peering import GLOBAL, MESH, Session
from percale.bgpd.rib import Path, Peer, Rib
from percale.datastore import Key, MemoryDatastore
from percale.bgpd.status import MAX_ROUTES_PER_FAMILY, routes_of, status_record, view_of
from percale.node.status import NodeStatusPublisher

pytestmark = pytest.mark.unit

BOOT = datetime(2026, 5, 1, 23, 30, 0, tzinfo=timezone.utc)
RELOAD = datetime(2026, 5, 1, 23, 35, 0, tzinfo=timezone.utc)
NOW = datetime(2026, 5, 1, 23, 40, 0, tzinfo=timezone.utc)

MESH_B = Peer("10.99.0.2", 64512, 64512, "10.99.0.2")
MESH_C = Peer("10.99.0.3", 64512, 64512, "10.99.0.3")
TOR = Peer("10.99.0.254", 64600, 64512, "10.99.0.254")
MESH_B6 = Peer("fd00:99::2", 64512, 64512, "10.99.0.2")


def session(kind: str, address: str, peer_as: int = 64512) -> Session:
    family = 6 if ":" in address else 4
    return Session(name=f"x_{address}", kind=kind, family=family, peer_address=address,
                   peer_port=179, peer_as=peer_as, local_as=64512,
                   local_address="fd00:99::1" if family == 6 else "10.99.0.1")


def controller(rib: Rib | None, own_blocks: frozenset[str] = frozenset()) -> SimpleNamespace:
    """The parts of a BGPController the status reads: ExaBGP running, a mesh with two nodes
    (and one over IPv6) and a top-of-rack router."""
    sessions = [session(MESH, "10.99.0.2"), session(MESH, "10.99.0.3"),
                session(GLOBAL, "10.99.0.254", 64600), session(MESH, "fd00:99::2")]
    return SimpleNamespace(
        speaker=SimpleNamespace(process=SimpleNamespace(returncode=None),
                                started_at=BOOT.timestamp(), reconfigured_at=RELOAD.timestamp()),
        peers={s.peer_address: PeerStatus(s, "up", "Established") for s in sessions},
        rib=rib, router_id="10.99.0.1",
        desired=Announcements(own_blocks, frozenset()))


def learned_rib() -> Rib:
    rib = Rib(router_id="10.99.0.1", pools=["10.244.0.0/16", "fd00:10:244::/64"],
              own_blocks=["10.244.1.0/26"])
    # One prefix from two mesh peers alike: ECMP, both next hops in the kernel.
    rib.update(MESH_B, [Path("10.244.2.0/26", "10.99.0.2", MESH_B)])
    rib.update(MESH_C, [Path("10.244.2.0/26", "10.99.0.3", MESH_C),
                        Path("10.244.3.0/26", "10.99.0.3", MESH_C, local_pref=50)])
    # 10.244.3.0/26 from the router too: its path beats the mesh path's low local preference,
    # and the mesh path stays in the RIB as a backup.
    rib.update(TOR, [Path("10.244.3.0/26", "10.99.0.254", TOR, as_path=(64600,)),
                     Path("10.244.4.0/26", "10.99.0.254", TOR, as_path=(64600,))])
    # Outside every pool: import policy refuses it, so the record leaves it out too.
    rib.update(TOR, [Path("192.168.7.0/24", "10.99.0.254", TOR, as_path=(64600,))])
    rib.update(MESH_B6, [Path("fd00:10:244::40/122", "fd00:99::2", MESH_B6)])
    return rib


def route(entry) -> tuple:
    learned = entry.learned_from
    return (entry.type, entry.destination, entry.gateway, learned.source_type, learned.peer_ip)


def test_routes_are_what_the_node_programs_and_the_paths_it_holds_in_reserve():
    routes = routes_of(controller(learned_rib(), frozenset({"10.244.1.0/26", "fd00:10:244::/122"})))
    assert [route(r) for r in routes.routes_v4] == [
        ("FIB", "10.244.1.0/26", None, "Static", None),  # own block: blackholed here
        ("FIB", "10.244.2.0/26", "10.99.0.2", "NodeMesh", "10.99.0.2"),
        ("FIB", "10.244.2.0/26", "10.99.0.3", "NodeMesh", "10.99.0.3"),
        ("RIB", "10.244.3.0/26", "10.99.0.3", "NodeMesh", "10.99.0.3"),
        ("FIB", "10.244.3.0/26", "10.99.0.254", "BGPPeer", "10.99.0.254"),
        ("FIB", "10.244.4.0/26", "10.99.0.254", "BGPPeer", "10.99.0.254"),
    ]
    assert [route(r) for r in routes.routes_v6] == [
        ("FIB", "fd00:10:244::/122", None, "Static", None),
        ("FIB", "fd00:10:244::40/122", "fd00:99::2", "NodeMesh", "fd00:99::2"),
    ]


def test_a_large_table_is_capped_per_family_lowest_destinations_first():
    rib = Rib(router_id="10.99.0.1", pools=["10.0.0.0/8"])
    prefixes = [f"10.{i // 256}.{i % 256}.0/24" for i in range(2000)]
    rib.update(TOR, [Path(p, "10.99.0.254", TOR, as_path=(64600,)) for p in reversed(prefixes)])
    routes = routes_of(controller(rib))
    assert len(routes.routes_v4) == MAX_ROUTES_PER_FAMILY
    assert [r.destination for r in routes.routes_v4] == prefixes[:MAX_ROUTES_PER_FAMILY]
    assert routes.routes_v6 == []
    assert len(routes_of(controller(rib), limit=5).routes_v4) == 5


def test_no_rib_yet_no_routes():
    routes = routes_of(controller(None))
    assert (routes.routes_v4, routes.routes_v6) == ([], [])


def test_the_agent_entries_carry_the_router_id_and_exabgps_times():
    bgp = controller(learned_rib())
    record = status_record(["Agent", "BGP", "Routes"], view_of(bgp), NOW, routes_of(bgp))
    for daemon in (record.agent.bgp_v4, record.agent.bgp_v6):
        assert daemon.state == "Ready"
        assert daemon.router_id == "10.99.0.1"
        assert daemon.last_boot_time == "2026-05-01T23:30:00Z"
        assert daemon.last_reconfiguration_time == "2026-05-01T23:35:00Z"
    assert record.bgp.number_established_v6 == 1
    assert len(record.routes.routes_v4) == 5
    # On the wire, in Calico's words.
    wire = record.model_dump(by_alias=True, exclude_none=True)
    assert wire["agent"]["bgpV4"]["routerID"] == "10.99.0.1"
    assert wire["routes"]["routesV4"][0] == {
        "type": "FIB", "destination": "10.244.2.0/26", "gateway": "10.99.0.2",
        "learnedFrom": {"sourceType": "NodeMesh", "peerIP": "10.99.0.2"}}


def test_routes_only_for_a_record_that_asks_for_them():
    bgp = controller(learned_rib())
    assert status_record(["Agent", "BGP"], view_of(bgp), NOW, routes_of(bgp)).routes is None
    # Asked for, with nothing learned yet: an empty list, not a missing section.
    empty = status_record(["Routes"], view_of(bgp), NOW)
    assert empty.routes is not None and empty.routes.routes_v4 == []


async def test_the_agents_own_record_asks_for_routes_and_gets_them():
    store = MemoryDatastore()
    bgp = controller(learned_rib(), frozenset({"10.244.1.0/26"}))
    await NodeStatusPublisher(store, "node1", bgp).publish(view_of(bgp))
    stored = (await store.get(Key("NodeStatus", "node1"))).value
    assert stored.spec.classes == ["Agent", "BGP", "Routes"]
    assert stored.status.agent.bgp_v4.router_id == "10.99.0.1"
    assert [r.destination for r in stored.status.routes.routes_v4] == [
        "10.244.1.0/26", "10.244.2.0/26", "10.244.2.0/26", "10.244.3.0/26", "10.244.3.0/26",
        "10.244.4.0/26"]
    assert [r.destination for r in stored.status.routes.routes_v6] == ["fd00:10:244::40/122"]
