"""percale nodes against BIRD 2: BIRD as an eBGP top-of-rack router, as an iBGP route reflector
for two nodes with the mesh off, and with an MD5 password.

Each test builds its own lab: a router namespace holding BIRD and a bridge, and percale nodes
(CNINode: percale-node in its own namespace, pods wired by the real CNI plugins) joined to the
bridge with veth pairs. Everything is configured through the datastore, as in a cluster.
"""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime

import pytest

from percale.datastore.contract import Key
from percale.datastore.errors import NotFound
from percale.dataplane.route_owners import RouteProtocol

from tests.helpers.bgp_lab import (
    BirdPeer,
    Router,
    bird_config,
    block_of,
    diagnose,
    far_block,
    far_blocks,
    resource,
    setup_store,
    wait_for,
)
from tests.helpers.cni_node import CNINode
from tests.helpers.store import with_store

pytestmark = pytest.mark.interop

NODE_AS, TOR_AS, CLUSTER_AS = 64513, 64600, 64512
PROTO_BGP = RouteProtocol.BGP


def ping(netns: str, ip, count: int = 3) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", "netns", "exec", netns, "ping", "-c", str(count), "-i", "0.2",
                           "-W", "2", str(ip)], capture_output=True, text=True, check=False)


def test_bird_as_ebgp_top_of_rack(etcd):
    """Node AS 64513, BIRD AS 64600: the node's block reaches BIRD with the node's address as
    next hop, and a route BIRD originates inside the pool lands in the node's kernel via BIRD."""
    router, node = Router(), CNINode(etcd.unix_endpoint)
    try:
        router.up()
        node.start()
        router.attach(node.netns, "10.99.0.1/24")
        tor_route = far_block(node.name)
        router.bird(bird_config(router.ip, [
            BirdPeer("node_a", router.ip, TOR_AS, "10.99.0.1", NODE_AS, export="static"),
        ], static=[tor_route]))
        setup_store(
            etcd,
            resource("Node", node.name, {"bgp": {"ipv4Address": "10.99.0.1/24", "asNumber": NODE_AS}}),
            resource("BGPPeer", "tor", {"nodeSelector": "all()", "peerIP": router.ip,
                                        "asNumber": TOR_AS, "keepaliveTime": "10s"}),
        )
        assert wait_for(lambda: router.bird_established("node_a"), 15), diagnose(router, node)
        # keepaliveTime 10s: ExaBGP offers a hold time of 30 s and sends a keepalive every 10 s,
        # as BIRD's `keepalive time 10` would (BIRD's own default hold time is 240 s).
        details = router.birdc("show protocols all node_a")
        assert re.search(r"Hold timer:\s+[\d.]+/30\b", details), details
        assert re.search(r"Keepalive timer:\s+[\d.]+/10\b", details), details

        _, pod_ip = node.add_pod()
        block = block_of(pod_ip)
        assert wait_for(lambda: block in router.bird_routes("node_a"), 10), diagnose(router, node)
        assert router.bird_routes("node_a")[block].via == "10.99.0.1"

        assert wait_for(lambda: node.routes(PROTO_BGP).get(tor_route) == router.ip, 10), (
            diagnose(router, node))
        # Only the pool route: the node's own block is not learned back.
        assert set(node.routes(PROTO_BGP)) == {tor_route}
    finally:
        node.stop()
        router.down()


def test_a_peer_on_a_loopback_is_reached_through_its_reachable_by_gateway(etcd):
    """BIRD peers from its loopback 10.255.0.1, which the node has no route to. The BGPPeer's
    reachableBy 10.99.0.254 gives the node a host route of its own (RouteProtocol.PEER), as
    Calico's `route 10.255.0.1/32 via 10.99.0.254` does, and the session comes up over it. A
    gateway on no connected network is refused by the kernel and said in the agent's log, naming
    reachableBy, and the route stays as it was (a route is replaced whole or not at all);
    without reachableBy the route goes."""
    router, node = Router(), CNINode(etcd.unix_endpoint)
    try:
        router.up()
        node.start()
        router.attach(node.netns, "10.99.0.1/24")
        router.exec(router.ns, "ip", "addr", "add", "10.255.0.1/32", "dev", "lo")
        router.bird(bird_config(router.ip, [
            BirdPeer("node_a", "10.255.0.1", TOR_AS, "10.99.0.1", NODE_AS, export="none",
                     multihop=True),
        ]))
        setup_store(
            etcd,
            resource("Node", node.name, {"bgp": {"ipv4Address": "10.99.0.1/24", "asNumber": NODE_AS}}),
            resource("BGPPeer", "tor", {"peerIP": "10.255.0.1", "asNumber": TOR_AS,
                                        "reachableBy": "10.99.0.254"}),
        )
        peer_routes = lambda: node.routes(RouteProtocol.PEER)  # noqa: E731
        assert wait_for(lambda: peer_routes() == {"10.255.0.1/32": "10.99.0.254"}, 15), (
            diagnose(router, node))
        assert wait_for(lambda: router.bird_established("node_a"), 20), diagnose(router, node)

        update_spec(etcd, "BGPPeer", "tor", reachable_by="10.98.0.1")
        assert wait_for(lambda: "the kernel refused the route to BGP peer 10.255.0.1/32 via its "
                        "reachableBy 10.98.0.1" in (node.workdir / "agent.log").read_text(), 15), (
            diagnose(router, node))
        assert peer_routes() == {"10.255.0.1/32": "10.99.0.254"}
        assert router.bird_established("node_a")

        update_spec(etcd, "BGPPeer", "tor", reachable_by="10.99.0.254")
        assert wait_for(lambda: peer_routes() == {"10.255.0.1/32": "10.99.0.254"}, 15)
        update_spec(etcd, "BGPPeer", "tor", reachable_by=None)
        assert wait_for(lambda: peer_routes() == {}, 15), diagnose(router, node)
    finally:
        node.stop()
        router.down()


@contextmanager
def two_nodes_on_a_router(etcd) -> Iterator[tuple[Router, CNINode, CNINode]]:
    """A router's segment (BIRD not started yet) with nodes a at 10.99.0.1 and b at 10.99.0.2,
    all stopped and removed afterwards."""
    router = Router()
    a, b = CNINode(etcd.unix_endpoint), CNINode(etcd.unix_endpoint)
    try:
        router.up()
        a.start(), b.start()
        router.attach(a.netns, "10.99.0.1/24")
        router.attach(b.netns, "10.99.0.2/24")
        yield router, a, b
    finally:
        a.stop()
        b.stop()
        router.down()


def test_bird_as_route_reflector_for_two_nodes(etcd):
    """Mesh off, each node peers only with BIRD (`rr client`): each node's block reaches the
    other's kernel with the originating node as next hop, and pods ping across."""
    with two_nodes_on_a_router(etcd) as (router, a, b):
        router.bird(bird_config(router.ip, [
            BirdPeer("node_a", router.ip, CLUSTER_AS, "10.99.0.1", CLUSTER_AS, rr_client=True),
            BirdPeer("node_b", router.ip, CLUSTER_AS, "10.99.0.2", CLUSTER_AS, rr_client=True),
        ]))
        setup_store(
            etcd,
            resource("BGPConfiguration", "default", {"nodeToNodeMeshEnabled": False}),
            resource("Node", a.name, {"bgp": {"ipv4Address": "10.99.0.1/24"}}),
            resource("Node", b.name, {"bgp": {"ipv4Address": "10.99.0.2/24"}}),
            resource("BGPPeer", "rr", {"peerIP": router.ip, "asNumber": CLUSTER_AS}),
        )
        assert wait_for(lambda: router.bird_established("node_a") and router.bird_established("node_b"),
                        15), diagnose(router, a, b)
        # The mesh is off: neither node has a session with the other.
        for node, other in ((a, "10.99.0.2"), (b, "10.99.0.1")):
            assert f"neighbor {other} " not in (node.workdir / "bgp" / "exabgp.conf").read_text()

        pod_a, ip_a = a.add_pod()
        pod_b, ip_b = b.add_pod()
        block_a, block_b = block_of(ip_a), block_of(ip_b)
        assert block_a != block_b
        # Reflected with the next hop unchanged: the originating node, not the reflector.
        assert wait_for(lambda: a.routes(PROTO_BGP).get(block_b) == "10.99.0.2"
                        and b.routes(PROTO_BGP).get(block_a) == "10.99.0.1", 15), diagnose(router, a, b)
        assert router.bird_routes()[block_a].via == "10.99.0.1"
        assert router.bird_routes()[block_b].via == "10.99.0.2"

        there = ping(pod_a, ip_b)
        assert there.returncode == 0, there.stdout
        back = ping(pod_b, ip_a)
        assert back.returncode == 0, back.stdout


def bird_as_path(router: Router, prefix: str) -> str:
    """The AS_PATH of BIRD's preferred route to `prefix` ('' when it has none)."""
    found = re.search(r"BGP\.as_path:(.*)", router.birdc(f"show route {prefix} all", check=False))
    return found.group(1).strip() if found else ""


def bird_attribute(router: Router, prefix: str, name: str) -> str:
    """An attribute of BIRD's preferred route to `prefix` (`show route all`: BGP.community ...),
    '' when it has none."""
    found = re.search(rf"BGP\.{name}:(.*)", router.birdc(f"show route {prefix} all", check=False))
    return found.group(1).strip() if found else ""


def test_prefix_advertisement_communities_reach_bird_and_follow_the_configuration(etcd):
    """BGPConfiguration prefixAdvertisements: the node's block carries the communities of the
    advertisements that cover it, by name or by value, standard and large; a change of them
    reaches BIRD with the session left up."""
    router, node = Router(), CNINode(etcd.unix_endpoint)
    try:
        router.up()
        node.start()
        router.attach(node.netns, "10.99.0.1/24")
        router.bird(bird_config(router.ip, [
            BirdPeer("node_a", router.ip, TOR_AS, "10.99.0.1", NODE_AS, export="none"),
        ], precise_since=True))
        setup_store(
            etcd,
            resource("BGPConfiguration", "default", {
                "communities": [{"name": "pods", "value": "65000:100"}],
                "prefixAdvertisements": [
                    {"cidr": "10.244.0.0/16", "communities": ["pods", "65000:1:2"]},
                    {"cidr": "10.96.0.0/12", "communities": ["7:7"]}]}),
            resource("Node", node.name, {"bgp": {"ipv4Address": "10.99.0.1/24", "asNumber": NODE_AS}}),
            resource("BGPPeer", "tor", {"nodeSelector": "all()", "peerIP": router.ip,
                                        "asNumber": TOR_AS}),
        )
        assert wait_for(lambda: router.bird_established("node_a"), 15), diagnose(router, node)
        _, pod_ip = node.add_pod()
        block = block_of(pod_ip)
        assert wait_for(lambda: block in router.bird_routes("node_a"), 10), diagnose(router, node)
        assert bird_attribute(router, block, "community") == "(65000,100)"
        assert bird_attribute(router, block, "large_community") == "(65000, 1, 2)"
        since = router.bird_since("node_a")

        update_spec(etcd, "BGPConfiguration", "default", prefix_advertisements=[
            parse_advertisement({"cidr": "10.244.0.0/16", "communities": ["65001:7"]})])
        assert wait_for(lambda: bird_attribute(router, block, "community") == "(65001,7)", 10), (
            diagnose(router, node))
        assert bird_attribute(router, block, "large_community") == ""
        # The session stayed up (BIRD recomputes the time it prints, off by microseconds).
        later = datetime.fromisoformat(router.bird_since("node_a"))
        assert abs((later - datetime.fromisoformat(since)).total_seconds()) < 0.1
    finally:
        node.stop()
        router.down()


def parse_advertisement(document: dict):
    from percale.api.bgp import PrefixAdvertisement
    return PrefixAdvertisement.model_validate(document)


def update_spec(etcd, kind: str, name: str, **spec) -> None:
    async def work(store):
        current = await store.get(Key(kind, name))
        new_spec = current.value.spec.model_copy(update=spec)
        await store.update(current.value.model_copy(update={"spec": new_spec}),
                           revision=current.revision)

    with_store(etcd.endpoint, work)


def test_a_node_passes_the_mesh_blocks_on_to_its_ebgp_peer_and_back(etcd):
    """Only node a peers with BIRD (eBGP), beside the mesh with b. As Calico's BIRD does, a passes
    on what it learns inside the pools: b's block reaches BIRD from a, with a's address as next
    hop and our AS prepended (b's own address with keepOriginalNextHop); BIRD's pool route
    reaches b over the mesh through a, its next hop BIRD's; when b leaves the mesh, a withdraws
    b's block from BIRD."""
    with two_nodes_on_a_router(etcd) as (router, a, b):
        tor_route = far_block(a.name, b.name)
        router.bird(bird_config(router.ip, [
            BirdPeer("node_a", router.ip, TOR_AS, "10.99.0.1", CLUSTER_AS, export="static"),
        ], static=[tor_route]))
        setup_store(
            etcd,
            resource("Node", a.name, {"bgp": {"ipv4Address": "10.99.0.1/24"}}),
            resource("Node", b.name, {"bgp": {"ipv4Address": "10.99.0.2/24"}}),
            resource("BGPPeer", "tor", {"node": a.name, "peerIP": router.ip, "asNumber": TOR_AS}),
        )
        assert wait_for(lambda: router.bird_established("node_a"), 15), diagnose(router, a, b)

        _, ip_a = a.add_pod()
        _, ip_b = b.add_pod()
        block_a, block_b = block_of(ip_a), block_of(ip_b)
        assert wait_for(lambda: {block_a, block_b} <= set(router.bird_routes("node_a")), 15), (
            diagnose(router, a, b))
        assert router.bird_routes("node_a")[block_b].via == "10.99.0.1"
        assert bird_as_path(router, block_b) == str(CLUSTER_AS)
        # BIRD's route: learned by a over eBGP, passed to b over the mesh with BIRD's next hop.
        assert wait_for(lambda: b.routes(PROTO_BGP).get(tor_route) == router.ip, 15), (
            diagnose(router, a, b))

        update_spec(etcd, "BGPPeer", "tor", keep_original_next_hop=True)
        assert wait_for(lambda: getattr(router.bird_routes("node_a").get(block_b), "via", None)
                        == "10.99.0.2", 15), diagnose(router, a, b)
        assert router.bird_routes("node_a")[block_a].via == "10.99.0.1"  # a's own, as before

        # b leaves the mesh (no BGP address): a no longer has its block to pass on.
        update_spec(etcd, "Node", b.name, bgp=None)
        assert wait_for(lambda: block_b not in router.bird_routes("node_a"), 15), (
            diagnose(router, a, b))
        assert block_a in router.bird_routes("node_a")


def write(etcd, *resources) -> None:
    """Create each resource, or replace it if it exists."""
    async def work(store):
        for r in resources:
            try:
                current = await store.get(Key.of(r))
            except NotFound:
                await store.create(r)
            else:
                await store.update(r, revision=current.revision)

    with_store(etcd.endpoint, work)


def test_bgp_filters_on_a_tor_session_and_none_on_the_mesh(etcd):
    """Node a peers with BIRD through a BGPPeer naming a BGPFilter, and with b over the mesh.
    Import: a route BIRD sends that a rule rejects reaches neither a's kernel nor b (a passes on
    the other). Export: a rule rejecting b's block keeps it from BIRD while a's own block goes;
    one rejecting a's own block keeps that from BIRD while b still learns it over the mesh. With
    the filter gone from the BGPPeer, everything flows again; no session restarts."""
    with two_nodes_on_a_router(etcd) as (router, a, b):
        kept, rejected = far_blocks(2, a.name, b.name)
        router.bird(bird_config(router.ip, [
            BirdPeer("node_a", router.ip, TOR_AS, "10.99.0.1", CLUSTER_AS, export="static"),
        ], static=[kept, rejected], precise_since=True))
        setup_store(
            etcd,
            resource("Node", a.name, {"bgp": {"ipv4Address": "10.99.0.1/24"}}),
            resource("Node", b.name, {"bgp": {"ipv4Address": "10.99.0.2/24"}}),
        )
        _, ip_a = a.add_pod()
        _, ip_b = b.add_pod()
        block_a, block_b = block_of(ip_a), block_of(ip_b)

        def tor_filter(export_rejects: str) -> object:
            return resource("BGPFilter", "tor", {
                "importV4": [{"action": "Reject", "cidr": rejected, "matchOperator": "Equal"}],
                "exportV4": [{"action": "Reject", "cidr": export_rejects, "matchOperator": "Equal"}]})

        write(etcd, tor_filter(block_b), resource("BGPPeer", "tor", {
            "node": a.name, "peerIP": router.ip, "asNumber": TOR_AS, "filters": ["tor"]}))
        assert wait_for(lambda: router.bird_established("node_a"), 15), diagnose(router, a, b)
        assert wait_for(lambda: block_a in router.bird_routes("node_a")
                        and b.routes(PROTO_BGP).get(kept) == router.ip, 15), diagnose(router, a, b)
        assert block_b not in router.bird_routes("node_a")
        assert rejected not in a.routes(PROTO_BGP) and rejected not in b.routes(PROTO_BGP)
        since = datetime.fromisoformat(router.bird_since("node_a"))

        # The rule now rejects a's own block: BIRD loses it and gets b's; b keeps a's.
        write(etcd, tor_filter(block_a))
        assert wait_for(lambda: block_b in router.bird_routes("node_a")
                        and block_a not in router.bird_routes("node_a"), 15), diagnose(router, a, b)
        assert b.routes(PROTO_BGP).get(block_a) == "10.99.0.1"

        # No filter on the BGPPeer: both blocks go, the rejected route comes in.
        update_spec(etcd, "BGPPeer", "tor", filters=None)
        assert wait_for(lambda: {block_a, block_b} <= set(router.bird_routes("node_a"))
                        and a.routes(PROTO_BGP).get(rejected) == router.ip, 15), (
            diagnose(router, a, b))
        later = datetime.fromisoformat(router.bird_since("node_a"))
        assert abs((later - since).total_seconds()) < 0.1  # the session stayed up throughout


def test_md5_password_with_bird(etcd, tmp_path):
    """A BGPPeer password from a secret (percale-node --secrets-dir <dir>/<name>/<key>): the
    session comes up with BIRD holding the same password, stays down while BIRD's differs,
    and comes back when they agree again."""
    secrets = tmp_path / "secrets"
    (secrets / "bgp-passwords").mkdir(parents=True)
    (secrets / "bgp-passwords" / "tor").write_text("s3cr3t-tor\n")
    router = Router()
    node = CNINode(etcd.unix_endpoint, agent_args=["--secrets-dir", str(secrets)])

    def config(password: str) -> str:
        return bird_config(router.ip, [BirdPeer("node_a", router.ip, TOR_AS, "10.99.0.1", NODE_AS,
                                                password=password)])

    try:
        router.up()
        node.start()
        router.attach(node.netns, "10.99.0.1/24")
        router.bird(config("s3cr3t-tor"))
        setup_store(
            etcd,
            resource("Node", node.name, {"bgp": {"ipv4Address": "10.99.0.1/24", "asNumber": NODE_AS}}),
            resource("BGPPeer", "tor", {
                "nodeSelector": "all()", "peerIP": router.ip, "asNumber": TOR_AS,
                "password": {"secretKeyRef": {"name": "bgp-passwords", "key": "tor"}}}),
        )
        assert wait_for(lambda: router.bird_established("node_a"), 15), diagnose(router, node)
        # The password is in ExaBGP's configuration and on the socket (TCP-MD5, RFC 2385).
        assert 'md5-password "s3cr3t-tor";' in (node.workdir / "bgp" / "exabgp.conf").read_text()
        sockets = node.exec("ss", "-tni", "state", "established", "( sport = :179 or dport = :179 )").stdout
        assert "md5keys" in sockets, sockets

        router.bird_reconfigure(config("not-the-password"))
        assert wait_for(lambda: not router.bird_established("node_a"), 10), diagnose(router, node)
        # Both sides keep trying (BIRD every second); none of it gets through.
        deadline = time.monotonic() + 6
        while time.monotonic() < deadline:
            assert not router.bird_established("node_a"), "up with the wrong password"
            time.sleep(0.2)

        router.bird_reconfigure(config("s3cr3t-tor"))
        assert wait_for(lambda: router.bird_established("node_a"), 15), diagnose(router, node)
    finally:
        node.stop()
        router.down()
