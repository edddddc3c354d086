"""A change of BGP configuration leaves the sessions it does not touch alone.

A percale node peers (eBGP, as with top-of-rack routers) with GoBGP and BIRD, each in its own
namespace on one L2 segment, each originating one route inside the pool. Then, through the
datastore, a third BGPPeer (a second GoBGP) is added, that peer's settings are changed, and it is
deleted. Each step reloads ExaBGP's configuration (bgpd/speaker.py reload); the sessions with the
first two peers must never be reset — judged by the peers themselves: GoBGP's count of OPEN
messages received and its uptime stamp, BIRD's Since time to the microsecond — and their routes
must never leave the node's kernel (watched with `ip monitor route` throughout).
"""

from __future__ import annotations

import subprocess
from datetime import datetime

import pytest

from percale.dataplane.route_owners import RouteProtocol

from percale.datastore import Key
from percale.ipam.pools import candidate_blocks
from tests.helpers.bgp_lab import (
    POOL,
    BirdPeer,
    Router,
    bird_config,
    diagnose,
    resource,
    setup_store,
    wait_for,
)
from tests.helpers.cni_node import CNINode
from tests.helpers.store import with_store

pytestmark = pytest.mark.interop

PROTO_BGP = RouteProtocol.BGP
NODE_AS = 64513
GOBGP_AS, BIRD_AS, THIRD_AS = 64600, 64601, 64602
NODE_IP = "10.99.0.1"


def gobgp_session(router: Router) -> tuple:
    """What changes when GoBGP's session with the node is reset: the OPENs it has received
    (one per session, counted across sessions) and when the session came up."""
    state = router.gobgp_neighbor(NODE_IP)
    return (state.get("state", {}).get("messages", {}).get("received", {}).get("open"),
            state.get("timers", {}).get("state", {}).get("uptime", {}).get("seconds"))


def bird_since(router: Router) -> datetime | None:
    """When BIRD's session with the node last changed state. BIRD prints the time computed
    afresh each time, off by a microsecond now and then, so compare these with a tolerance
    (`same_time`): a reset takes BIRD a second or more (its error wait and connect delay)."""
    text = router.bird_since("node")
    return datetime.fromisoformat(text) if text else None


def same_time(a: datetime | None, b: datetime | None) -> bool:
    return a is not None and b is not None and abs((a - b).total_seconds()) < 0.1


def pool_routes(node_name: str, count: int) -> list[str]:
    """`count` blocks of the pool far from the node's own first block, for routes the peers
    originate."""
    pool = resource("IPPool", "pods", {"cidr": POOL})
    blocks = [str(b) for b in candidate_blocks(pool, node_name)]
    return blocks[-count:]


def update_peer(etcd, name: str, **spec) -> None:
    async def work(store):
        current = await store.get(Key("BGPPeer", name))
        new_spec = current.value.spec.model_copy(update=spec)
        await store.update(current.value.model_copy(update={"spec": new_spec}),
                           revision=current.revision)

    with_store(etcd.endpoint, work)


def delete_peer(etcd, name: str) -> None:
    async def work(store):
        await store.delete(Key("BGPPeer", name))

    with_store(etcd.endpoint, work)


def create(etcd, *resources) -> None:
    async def work(store):
        for r in resources:
            await store.create(r)

    with_store(etcd.endpoint, work)


def test_adding_changing_and_deleting_a_peer_leaves_the_other_sessions_up(etcd):
    gobgp = Router(address="10.99.0.254/24")
    bird = Router(address="10.99.0.253/24")
    third = Router(address="10.99.0.252/24")
    node = CNINode(etcd.unix_endpoint)
    monitor: subprocess.Popen | None = None
    try:
        for router in (gobgp, bird, third):
            router.up()
        gobgp.join(bird)
        gobgp.join(third)
        node.start()
        gobgp.attach(node.netns, f"{NODE_IP}/24")
        route_gobgp, route_bird, route_third = pool_routes(node.name, 3)

        gobgp.gobgp([(NODE_IP, NODE_AS)], asn=GOBGP_AS)
        gobgp.exec(gobgp.ns, "gobgp", "global", "rib", "add", "-a", "ipv4", route_gobgp)
        bird.bird(bird_config(bird.ip, [BirdPeer("node", bird.ip, BIRD_AS, NODE_IP, NODE_AS,
                                                 export="static")],
                              static=[route_bird], precise_since=True))
        third.gobgp([(NODE_IP, NODE_AS)], asn=THIRD_AS)
        third.exec(third.ns, "gobgp", "global", "rib", "add", "-a", "ipv4", route_third)

        setup_store(
            etcd,
            resource("Node", node.name, {"bgp": {"ipv4Address": f"{NODE_IP}/24", "asNumber": NODE_AS}}),
            resource("BGPPeer", "gobgp", {"peerIP": gobgp.ip, "asNumber": GOBGP_AS}),
            resource("BGPPeer", "bird", {"peerIP": bird.ip, "asNumber": BIRD_AS}),
        )

        def learned() -> dict:
            return node.routes(PROTO_BGP)

        assert wait_for(lambda: gobgp.gobgp_established(NODE_IP) and bird.bird_established("node"),
                        30), diagnose(gobgp, node) + diagnose(bird)
        assert wait_for(lambda: learned().get(route_gobgp) == gobgp.ip
                        and learned().get(route_bird) == bird.ip, 20), diagnose(gobgp, node)

        # From here on, every change to the node's BGP routes is recorded.
        log = open(node.workdir / "monitor.log", "w")
        monitor = subprocess.Popen(["ip", "netns", "exec", node.netns, "ip", "monitor", "route"],
                                   stdout=log, stderr=subprocess.STDOUT)
        # `ip monitor` is listening once it has seen a change: add and remove a marker until
        # one shows up (a busy machine may start it late).
        def marked() -> bool:
            node.exec("ip", "route", "add", "blackhole", "198.51.100.0/24", check=False)
            node.exec("ip", "route", "del", "blackhole", "198.51.100.0/24", check=False)
            return "198.51.100.0/24" in (node.workdir / "monitor.log").read_text()
        assert wait_for(marked, 10, interval=0.3)

        untouched = (gobgp_session(gobgp), bird_since(bird))
        assert None not in untouched[0] and untouched[1], untouched

        def unchanged(step: str) -> None:
            now = (gobgp_session(gobgp), bird_since(bird))
            assert now[0] == untouched[0] and same_time(now[1], untouched[1]), (
                f"{step}: a session that did not change was reset: {untouched} -> {now}\n"
                + diagnose(gobgp, node) + diagnose(bird))
            assert gobgp.gobgp_established(NODE_IP) and bird.bird_established("node"), step
            assert learned().get(route_gobgp) == gobgp.ip and learned().get(route_bird) == bird.ip

        # 1. A third peer is added: it comes up, its route is installed, the others stay.
        create(etcd, resource("BGPPeer", "third", {"peerIP": third.ip, "asNumber": THIRD_AS}))
        assert wait_for(lambda: third.gobgp_established(NODE_IP)
                        and learned().get(route_third) == third.ip, 30), diagnose(third, node)
        first_third = gobgp_session(third)
        unchanged("adding a peer")

        # 2. The third peer's settings change (its graceful-restart time): that session, and
        #    only that one, is set up again.
        update_peer(etcd, "third", max_restart_time="1m0s")
        assert wait_for(lambda: gobgp_session(third)[0] is not None
                        and gobgp_session(third)[0] > first_third[0]
                        and third.gobgp_established(NODE_IP), 30), (
            f"{first_third} -> {gobgp_session(third)}\n" + diagnose(third, node))
        assert wait_for(lambda: learned().get(route_third) == third.ip, 20), diagnose(third, node)
        unchanged("changing a peer")

        # 3. The third peer is deleted: its session ends and its route leaves the kernel.
        delete_peer(etcd, "third")
        assert wait_for(lambda: not third.gobgp_established(NODE_IP)
                        and route_third not in learned(), 30), diagnose(third, node)
        unchanged("deleting a peer")

        # Throughout, neither untouched peer's route was withdrawn from the kernel, even briefly.
        monitor.terminate()
        monitor.wait(10)
        deleted = [line for line in (node.workdir / "monitor.log").read_text().splitlines()
                   if line.startswith("Deleted") and (route_gobgp in line or route_bird in line)]
        assert deleted == [], deleted
    finally:
        if monitor is not None and monitor.poll() is None:
            monitor.kill()
            monitor.wait()
        node.stop()
        for router in (gobgp, bird, third):
            router.down()
