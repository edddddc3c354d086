"""The keeper of the pods' host routes (node/pod_routes.py): which routes of protocol 201 a round
adds and removes (`plan`, pure), and a round of PodRoutes over a real view of a memory datastore
with the kernel replaced by a table in memory. The kernel itself: tests/netns/test_pod_routes.py."""

from __future__ import annotations

import asyncio
import ipaddress

import pytest

from percale.api import WorkloadEndpoint
from percale.api.workloadendpoint import workload_endpoint_name
from percale.dataplane import pod_network
from percale.dataplane.pod_network import HostRoutes
from percale.datastore import MemoryDatastore
from percale.datastore.cache import Cache, CachedDatastore
from percale.node.pod_routes import PodRoutes, Repair, endpoint_routes, plan

pytestmark = pytest.mark.unit

A, B, C = (ipaddress.ip_network(a) for a in ("10.244.0.1/32", "10.244.0.2/32", "fd00::3/128"))
LINKS = {"lo": (1, True), "pclaaa": (10, True), "pclbbb": (11, True), "pcldown": (12, False)}


def found(*routes: tuple, links: dict | None = None) -> HostRoutes:
    return HostRoutes(frozenset(routes), LINKS if links is None else links)


def test_a_missing_route_is_added_through_the_endpoints_veth():
    assert plan({A: "pclaaa", C: "pclaaa"}, found(), busy=()) == Repair(add=((A, 10), (C, 10)))


def test_routes_as_wanted_need_nothing():
    assert not plan({A: "pclaaa", B: "pclbbb"}, found((A, 10), (B, 11)), busy=())


def test_a_route_no_endpoint_wants_is_removed():
    """A pod whose endpoint went while the agent was down: its address stays routed to its
    veth, and the next pod given the address cannot be wired (configure refuses it)."""
    assert plan({A: "pclaaa"}, found((A, 10), (B, 11)), busy=()) == Repair(remove=((B, 11),))


def test_a_route_through_another_veth_than_the_endpoints_is_moved():
    assert plan({A: "pclbbb"}, found((A, 10)), busy=()) == Repair(remove=((A, 10),),
                                                                  add=((A, 11),))


def test_a_veth_an_add_is_wiring_is_left_alone_both_ways():
    """An ADD routes its pod before its endpoint is stored: that route is no stale one. And an
    endpoint of the pod's older container names the same veth: its address is not the pod's
    any more."""
    assert not plan({}, found((A, 10)), busy={"pclaaa"})
    assert not plan({B: "pclaaa"}, found(), busy={"pclaaa"})
    assert plan({B: "pclaaa"}, found((A, 10)), busy={"pclbbb"}) == Repair(remove=((A, 10),),
                                                                          add=((B, 10),))


def test_no_route_through_a_veth_that_is_gone_or_down():
    """A DEL takes the veth down before it deletes it; the kernel refuses a route through a
    link that is down anyway."""
    assert not plan({A: "pclgone", B: "pcldown"}, found(), busy=())


def test_a_route_through_an_interface_gone_since_the_routes_were_read_is_left():
    assert not plan({}, found((A, 99)), busy=())


def test_nothing_is_removed_when_removing_is_not_safe():
    assert plan({B: "pclbbb"}, found((A, 10)), busy=(), may_remove=False) == Repair(add=((B, 11),))


def endpoint(node: str, pod: str, addresses: list[str], veth: str | None,
             container: str = "c1") -> WorkloadEndpoint:
    return WorkloadEndpoint.model_validate({
        "metadata": {"name": workload_endpoint_name(node, "k8s", pod, "eth0"),
                     "namespace": "default"},
        "spec": {"orchestrator": "k8s", "node": node, "containerID": container, "pod": pod,
                 "endpoint": "eth0", "ipNetworks": addresses, "interfaceName": veth,
                 "profiles": ["kns.default"]}})


def test_only_this_nodes_endpoints_with_a_veth_want_routes():
    endpoints = [endpoint("node1", "web", ["10.244.0.1/32", "fd00::3/128"], "pclaaa"),
                 endpoint("node2", "db", ["10.244.0.2/32"], "pclbbb"),
                 endpoint("node1", "half", ["10.244.0.9/32"], None)]
    assert endpoint_routes(endpoints, "node1") == {A: "pclaaa", C: "pclaaa"}


class Kernel:
    """The kernel's routes of protocol 201 and its links, as pod_network reads and repairs them."""

    def __init__(self, routes: set, links: dict) -> None:
        self.routes, self.links = routes, links
        self.reads = 0

    def read(self) -> HostRoutes:
        self.reads += 1
        return HostRoutes(frozenset(self.routes), dict(self.links))

    def repair(self, remove, add) -> dict:
        self.routes -= set(remove)
        self.routes |= set(add)
        return {}


@pytest.fixture
def kernel(monkeypatch):
    table = Kernel(set(), dict(LINKS))
    monkeypatch.setattr(pod_network, "read_host_routes", table.read)
    monkeypatch.setattr(pod_network, "repair_host_routes", table.repair)
    return table


async def view_of(store: MemoryDatastore) -> tuple[Cache, CachedDatastore, asyncio.Task]:
    cache = Cache(store, ("WorkloadEndpoint",), node="node1")
    following = asyncio.create_task(cache.run())
    await cache.wait_synced()
    return cache, CachedDatastore(store, cache), following


async def test_a_round_puts_back_removed_routes_and_removes_those_nobody_wants(kernel):
    store = MemoryDatastore()
    await store.create(endpoint("node1", "web", ["10.244.0.1/32"], "pclaaa"))
    await store.create(endpoint("node2", "db", ["10.244.0.2/32"], "pclbbb"))
    kernel.routes |= {(B, 11)}  # node1 has no endpoint for it: left by a pod gone meanwhile
    cache, view, following = await view_of(store)
    try:
        routes = PodRoutes(cache, view, "node1", adding={})
        assert await routes.reconcile() == Repair(remove=((B, 11),), add=((A, 10),))
        assert kernel.routes == {(A, 10)}
        assert not await routes.reconcile()  # one dump and one read of the view: nothing else
        assert kernel.reads == 2
    finally:
        following.cancel()


async def test_an_endpoint_this_agent_just_wrote_is_wanted_before_the_watch_brings_it(kernel):
    """The ADD writes through the view; its route must not look stale in between."""
    store = MemoryDatastore()
    cache, view, following = await view_of(store)
    try:
        following.cancel()  # the watch brings nothing from now on
        await asyncio.gather(following, return_exceptions=True)
        await view.create(endpoint("node1", "web", ["10.244.0.1/32"], "pclaaa"))
        kernel.routes |= {(A, 10)}
        assert not await PodRoutes(cache, view, "node1", adding={}).reconcile()
        assert kernel.routes == {(A, 10)}
    finally:
        following.cancel()


async def test_an_adds_veth_is_left_alone(kernel):
    store = MemoryDatastore()
    cache, view, following = await view_of(store)
    kernel.routes |= {(A, 10)}
    try:
        adding = {"pclaaa": 1}
        routes = PodRoutes(cache, view, "node1", adding=adding)
        assert not await routes.reconcile()
        del adding["pclaaa"]  # that ADD failed and gave up its veth, or never stored its endpoint
        assert await routes.reconcile() == Repair(remove=((A, 10),))
    finally:
        following.cancel()


async def test_without_the_endpoints_kind_nothing_is_removed(kernel):
    """Followed as empty while its CRD is missing, the kind wants no route at all."""
    store = MemoryDatastore()
    cache, view, following = await view_of(store)
    kernel.routes |= {(A, 10)}
    try:
        cache.not_installed.add("WorkloadEndpoint")
        assert not await PodRoutes(cache, view, "node1", adding={}).reconcile()
        assert kernel.routes == {(A, 10)}
    finally:
        following.cancel()


async def test_the_first_round_waits_for_the_view(kernel):
    store = MemoryDatastore()
    await store.create(endpoint("node1", "web", ["10.244.0.1/32"], "pclaaa"))
    kernel.routes |= {(A, 10)}
    cache = Cache(store, ("WorkloadEndpoint",), node="node1")
    routes = PodRoutes(cache, CachedDatastore(store, cache), "node1", adding={}, resync=60)
    running = asyncio.create_task(routes.run())
    await asyncio.sleep(0.05)
    assert kernel.reads == 0  # an empty view would have removed every pod's route
    following = asyncio.create_task(cache.run())
    try:
        for _ in range(100):
            if kernel.reads:
                break
            await asyncio.sleep(0.01)
        assert kernel.reads == 1 and kernel.routes == {(A, 10)}
    finally:
        running.cancel()
        following.cancel()
        await asyncio.gather(running, following, return_exceptions=True)
