"""A disabled IPPool hands out no new address, and its running pods keep their routes: Calico's
kernel filter never looks at `disabled` (calico.md §1.1: existing addresses stay; disabling is
step one of migrating pods off a pool, while they still run). percale's RIB took only enabled
pools as installable, and disabling a pool cut every pod of it off from the other nodes."""

from __future__ import annotations

import ipaddress
import json
import subprocess

import pytest

from percale.dataplane.route_owners import RouteProtocol
from percale.datastore import Key
from tests.helpers.bgp_lab import wait_for
from tests.helpers.cni_node import CNINode, meshed_pair
from tests.helpers.store import with_store

pytestmark = pytest.mark.interop


def _learned(node: CNINode, address) -> bool:
    routes = json.loads(node.exec("ip", "-j", "route", "show", "proto",
                                  str(RouteProtocol.BGP)).stdout or "[]")
    return any(address in ipaddress.ip_network(r["dst"]) for r in routes)


def _ping(netns: str, address) -> bool:
    return subprocess.run(["ip", "netns", "exec", netns, "ping", "-c1", "-W2", str(address)],
                          capture_output=True).returncode == 0


def _set_disabled(endpoint: str, disabled: bool) -> None:
    async def change(store):
        current = await store.get(Key("IPPool", "pods"))
        spec = current.value.spec.model_copy(update={"disabled": disabled})
        await store.update(current.value.model_copy(update={"spec": spec}),
                           revision=current.revision)
    with_store(endpoint, change)


def test_the_pods_of_a_disabled_pool_keep_their_routes_between_nodes(etcd):
    a, b = meshed_pair(etcd.endpoint, etcd.unix_endpoint)
    try:
        (netns_a, ip_a), (netns_b, ip_b) = a.add_pod(), b.add_pod()
        assert wait_for(lambda: _learned(a, ip_b) and _learned(b, ip_a), 30)
        _set_disabled(etcd.endpoint, True)
        # Long enough for both agents to take the change (they settle within milliseconds).
        assert not wait_for(lambda: not (_learned(a, ip_b) and _learned(b, ip_a)), 3)
        assert _ping(netns_a, ip_b) and _ping(netns_b, ip_a)
    finally:
        a.stop()
        b.stop()
