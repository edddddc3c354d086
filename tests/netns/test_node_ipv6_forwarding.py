"""IPv6 forwarding is the IPv6 pods' business: percale-node turned it on at every start, and with
forwarding on the kernel ignores router advertisements, so an IPv4-only node whose own IPv6
default route and addresses come from them lost both when they expired (felix writes it only
with IPv6 support). Now it is on where an IPv6 pool is, at start or when one is made."""

from __future__ import annotations

import pytest

from tests.helpers.bgp_lab import wait_for
from tests.helpers.cni_node import CNINode
from tests.helpers.ipam_world import add_pool
from tests.helpers.store import with_store
from tests.netns.conftest import POOL, reset_store

pytestmark = pytest.mark.netns

FORWARDING = "/proc/sys/net/ipv6/conf/all/forwarding"


def test_ipv6_forwarding_is_on_only_once_an_ipv6_pool_exists(etcd_server):
    reset_store(etcd_server.endpoint, {"pods": {"cidr": POOL}})
    node = CNINode(etcd_server.unix_endpoint).start()
    try:
        def forwarding() -> str:
            return node.exec("cat", FORWARDING).stdout.strip()

        assert node.exec("cat", "/proc/sys/net/ipv4/ip_forward").stdout.strip() == "1"
        assert forwarding() == "0"  # a new namespace's default, left alone on an IPv4-only node

        async def create(store) -> None:
            await add_pool(store, "pods6", "fd00:10:244::/48")

        with_store(etcd_server.endpoint, create)
        assert wait_for(lambda: forwarding() == "1", 10), forwarding()
        node.stop_agent()
        node.exec("sh", "-c", f"echo 0 > {FORWARDING}")
        node.start_agent()  # an IPv6 pool at start: on before CNI is served
        assert forwarding() == "1"
    finally:
        node.stop()
