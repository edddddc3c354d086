"""A BGPFilter import Accept against a real BIRD top-of-rack router: routes BIRD sends outside
every IP pool (an external network) stay out of the node's kernel by default (DESIGN.md item 4),
and reach it, via BIRD, while the BGPPeer's filter accepts them (bgpd/filters.py, bgpd/rib.py);
they leave when the filter goes. They are not passed on over the mesh: Calico's export filter
passes on pool routes only, and no export Accept asks for it."""

from __future__ import annotations

import time
from datetime import datetime

import pytest

from percale.datastore.contract import Key
from percale.dataplane.route_owners import RouteProtocol

from tests.helpers.bgp_lab import BirdPeer, bird_config, diagnose, far_block, resource, setup_store
from tests.helpers.bgp_lab import wait_for
from tests.helpers.store import with_store
from tests.interop.test_bird import two_nodes_on_a_router, write

pytestmark = pytest.mark.interop

TOR_AS, CLUSTER_AS = 64600, 64512
PROTO_BGP = RouteProtocol.BGP
EXTERNAL, UNMATCHED = "10.50.0.0/24", "198.51.100.0/24"  # outside the pool, 10.244.0.0/16


def delete(etcd, kind: str, name: str) -> None:
    async def work(store):
        await store.delete(Key(kind, name))

    with_store(etcd.endpoint, work)


def test_an_import_accept_installs_a_tor_route_outside_the_pools_until_the_filter_goes(etcd):
    with two_nodes_on_a_router(etcd) as (router, a, b):
        pool_route = far_block(a.name, b.name)
        router.bird(bird_config(router.ip, [
            BirdPeer("node_a", router.ip, TOR_AS, "10.99.0.1", CLUSTER_AS, export="static"),
        ], static=[pool_route, EXTERNAL, UNMATCHED], precise_since=True))
        setup_store(
            etcd,
            resource("Node", a.name, {"bgp": {"ipv4Address": "10.99.0.1/24"}}),
            resource("Node", b.name, {"bgp": {"ipv4Address": "10.99.0.2/24"}}),
            # The BGPPeer names a BGPFilter that does not exist yet: passed over, as confd does.
            resource("BGPPeer", "tor", {"node": a.name, "peerIP": router.ip, "asNumber": TOR_AS,
                                        "filters": ["tor"]}),
        )
        assert wait_for(lambda: router.bird_established("node_a"), 15), diagnose(router, a, b)
        # The pool route comes in (and goes on to b): what BIRD sends has arrived.
        assert wait_for(lambda: a.routes(PROTO_BGP).get(pool_route) == router.ip
                        and b.routes(PROTO_BGP).get(pool_route) == router.ip, 15), (
            diagnose(router, a, b))
        assert EXTERNAL not in a.routes(PROTO_BGP) and UNMATCHED not in a.routes(PROTO_BGP)
        since = datetime.fromisoformat(router.bird_since("node_a"))

        write(etcd, resource("BGPFilter", "tor", {"importV4": [
            {"action": "Accept", "cidr": "10.50.0.0/16", "matchOperator": "In"}]}))
        assert wait_for(lambda: a.routes(PROTO_BGP).get(EXTERNAL) == router.ip, 15), (
            diagnose(router, a, b))
        routed = a.exec("ip", "route", "get", "10.50.0.1").stdout
        assert f"via {router.ip}" in routed, routed
        assert UNMATCHED not in a.routes(PROTO_BGP)  # no rule matches it: still refused
        # Not passed on to the mesh: only pool routes go on without an export Accept.
        time.sleep(2)
        assert EXTERNAL not in b.routes(PROTO_BGP), diagnose(router, a, b)
        assert b.routes(PROTO_BGP).get(pool_route) == router.ip

        delete(etcd, "BGPFilter", "tor")  # the BGPPeer still names it
        assert wait_for(lambda: EXTERNAL not in a.routes(PROTO_BGP), 15), diagnose(router, a, b)
        assert a.routes(PROTO_BGP).get(pool_route) == router.ip
        later = datetime.fromisoformat(router.bird_since("node_a"))
        assert abs((later - since).total_seconds()) < 0.1  # the session stayed up throughout
