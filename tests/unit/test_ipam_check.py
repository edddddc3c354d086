"""The leak check on the memory datastore: each kind of problem is found, and nothing else is."""

from __future__ import annotations

import json

import pytest

from percale.ctl.ipam_check import check_lines
from percale.datastore import Key, MemoryDatastore
from percale.ipam.allocator import IPAM, tunnel_handle
from percale.ipam.check import ReportError, check, parse_report, report_document
from percale.ipam.gc import release_leaks, repair_handle
from tests.helpers.ipam_pods import (
    add_pod,
    allocate,
    endpoint,
    node,
    unreadable_endpoint,
    unreadable_node,
)
from tests.helpers.ipam_world import add_pool

pytestmark = pytest.mark.unit


@pytest.fixture
async def ipam():
    store = MemoryDatastore()
    await add_pool(store, "pool1", "10.0.0.0/24", blockSize=28)
    for name in ("node1", "node2"):
        await store.create(node(name))
    return IPAM(store)


async def add_tunnel(ipam: IPAM, name: str) -> str:
    """A VXLAN tunnel address, allocated and written to the Node as the agent does."""
    got = await ipam.auto_assign(name, handle_id=tunnel_handle(name), num4=1, use="Tunnel",
                                 attrs={"type": "vxlanTunnelAddress"})
    ip = str(got.ipv4[0].ip)
    current = await ipam.store.get(Key("Node", name))
    await ipam.store.update(node(name, ipv4VXLANTunnelAddr=ip), revision=current.revision)
    return ip


async def test_a_consistent_store_has_no_problems(ipam):
    a = await add_pod(ipam, "node1", "web")
    b = await add_pod(ipam, "node2", "db", num4=3)
    tunnel = await add_tunnel(ipam, "node1")
    report = await check(ipam.store)
    assert report.problems == 0
    assert report.allocation_count == 5
    assert sorted(report.in_use) == sorted(a + b + [tunnel])
    assert all(x.in_use and not x.borrowed for allocs in report.allocations.values() for x in allocs)
    assert report.handles_with_matches == 3
    assert report.allocations_by_node() == [("node2", 3), ("node1", 2)]
    [info] = report.allocations[a[0]]
    assert info.handle.startswith("k8s-pod-network.") and info.sequence_number is not None
    assert info.attributes["pod"] == "web" and info.node == "node1"
    assert [str(o) for o in info.owners] == ["Workload(default/node1-k8s-web-eth0)"]


async def test_an_allocation_without_an_endpoint_is_leaked(ipam):
    await add_pod(ipam, "node1", "web")
    [ip] = await allocate(ipam, "node1", "crashed-before-wep")
    report = await check(ipam.store)
    assert report.leaked_ips == [ip]
    [leak] = report.leaked
    assert leak.attributes["pod"] == "crashed-before-wep" and not leak.in_use
    assert report.problems == 1


async def test_a_tunnel_address_is_in_use_only_while_its_node_names_it(ipam):
    tunnel = await add_tunnel(ipam, "node1")
    assert (await check(ipam.store)).problems == 0
    # The node stops naming it (tunnel disabled, agent crashed before re-writing the spec).
    current = await ipam.store.get(Key("Node", "node1"))
    await ipam.store.update(node("node1"), revision=current.revision)
    assert (await check(ipam.store)).leaked_ips == [tunnel]
    # Another node naming it does not make it node1's again.
    current = await ipam.store.get(Key("Node", "node2"))
    await ipam.store.update(node("node2", ipv4VXLANTunnelAddr=tunnel), revision=current.revision)
    assert (await check(ipam.store)).leaked_ips == [tunnel]
    # Named by its node again, but the node is deleted: leaked.
    current = await ipam.store.get(Key("Node", "node1"))
    await ipam.store.update(node("node1", ipv4VXLANTunnelAddr=tunnel), revision=current.revision)
    assert (await check(ipam.store)).leaked_ips == []
    await ipam.store.delete(Key("Node", "node1"))
    assert (await check(ipam.store)).leaked_ips == [tunnel]


async def test_in_use_but_not_allocated_is_split_by_active_pool(ipam):
    await add_pool(ipam.store, "off", "10.9.0.0/24", disabled=True)
    await ipam.store.create(endpoint("node1", "ghost", ["10.0.0.200"]))       # active pool, no allocation
    await ipam.store.create(endpoint("node1", "outside", ["192.168.7.7"]))    # no pool at all
    await ipam.store.create(endpoint("node2", "old", ["10.9.0.5"]))           # disabled pool only
    report = await check(ipam.store)
    assert [ip for ip, _ in report.not_allocated] == ["10.0.0.200"]
    assert [ip for ip, _ in report.not_in_pool] == ["10.9.0.5", "192.168.7.7"]
    assert [str(o) for o in dict(report.not_in_pool)["10.9.0.5"]] == ["Workload(default/node2-k8s-old-eth0)"]
    assert report.active_pools == ["10.0.0.0/24"]
    assert report.problems == 3


async def test_handles_with_no_addresses_and_overstating_handles(ipam):
    await add_pod(ipam, "node1", "web")
    two = await add_pod(ipam, "node1", "db", num4=2)
    report = await check(ipam.store)
    db_handle = report.allocations[two[0]][0].handle
    block = report.allocations[two[0]][0].block
    # A crash between handle and block write: a new handle with a count and no address...
    await ipam._add_to_handle("k8s-pod-network.crashed", block, 1)
    # ... and one more counted on a handle that has addresses.
    await ipam._add_to_handle(db_handle, block, 1)
    report = await check(ipam.store)
    assert [h.id for h in report.leaked_handles] == ["k8s-pod-network.crashed"]
    [over] = report.overstated_handles
    assert over.id == db_handle and over.overstated == {block: (3, 2)}
    assert report.handles_with_matches == 2
    assert report.problems == 2


async def test_a_handle_mentioned_by_a_block_but_missing_is_shown_not_counted(ipam):
    [ip] = await add_pod(ipam, "node1", "web")
    handle = (await check(ipam.store)).allocations[ip][0].handle
    await ipam.store.delete(Key("IPAMHandle", handle))
    report = await check(ipam.store)
    assert report.missing_handles == [handle]
    assert report.problems == 0  # as in Calico


async def test_an_object_that_cannot_be_read_is_named_and_what_it_may_own_held_back(ipam):
    """A Node, a pod's endpoint or a handle that cannot be read used to fail the whole check
    (and every GC round with it). Now each is a problem named in the report, and an unused
    address it may own is held back: neither in use nor leaked, so no release frees it."""
    store = ipam.store
    await add_pod(ipam, "node1", "web")
    [leaked] = await allocate(ipam, "node1", "crashed")
    [on_node2] = await allocate(ipam, "node2", "lost")           # node2's spec may name it
    [in_tenant] = await allocate(ipam, "node1", "mine", namespace="tenant-a")
    [counted] = await allocate(ipam, "node1", "counted")
    before = await check(store)
    handle = before.allocations[counted][0].handle
    bad_node = unreadable_node(store, "node2")
    bad_endpoint = unreadable_endpoint(store, "node1", "mine", namespace="tenant-a")
    bad_handle = Key("IPAMHandle", handle)
    store.put_raw(bad_handle, json.dumps(
        {"apiVersion": "percale.io/v1", "kind": "IPAMHandle", "metadata": {"name": handle},
         "spec": {"handleID": handle, "block": "garbage"}}).encode())

    report = await check(store)
    assert report.leaked_ips == [leaked]
    assert {a.ip: a.unreadable_owner for a in report.held_back} == {
        on_node2: bad_node, in_tenant: bad_endpoint, counted: bad_handle}
    assert list(report.unreadable) == sorted([bad_node, bad_endpoint, bad_handle], key=str)
    assert "asNumber" in report.unreadable[bad_node]
    assert report.problems == 4  # the leak and the three objects
    assert "node2" in report.nodes  # unreadable, not gone
    assert report.missing_handles == []

    doc = json.loads(json.dumps(report_document(report, version="v0.1.0", generated_at="now")))
    assert set(doc["unreadable"]) == {"Node(node2)", f"IPAMHandle({handle})",
                                      f"WorkloadEndpoint(tenant-a/{bad_endpoint.name})"}
    assert doc["allocations"][on_node2][0]["heldBack"] == "Node(node2)"
    assert [a.ip for a in parse_report(doc).leaks()] == [leaked]
    # What percalectl ipam check prints: each object named, and what it holds back.
    lines = check_lines(report, show_all_ips=False, show_problem_ips=True)
    assert any(line.startswith("  Node(node2) cannot be read, skipping it: ") for line in lines)
    assert "Holding back 3 IPs that an object which cannot be read may use." in lines
    assert any(line.startswith(f"  {on_node2} held back for Node(node2); attrs ")
               for line in lines)

    # A report taken before they went bad: the re-check holds them back.
    result = await release_leaks(ipam, before.leaked, report)
    assert [a.ip for a in result.released] == [leaked]
    assert sorted(result.held_back) == sorted([on_node2, in_tenant, counted])


async def test_borrowed_addresses_are_marked(ipam):
    store = MemoryDatastore()
    await add_pool(store, "tiny", "10.1.0.0/28", blockSize=28)
    ipam = IPAM(store)
    await add_pod(ipam, "node1", "first")
    [borrowed] = await add_pod(ipam, "node2", "second")  # the pool's only block is node1's
    info = (await check(store)).allocations[borrowed][0]
    assert info.borrowed and info.node == "node2" and info.block_node == "node1"


async def test_the_json_report_has_calicos_shape_and_reads_back(ipam):
    [used] = await add_pod(ipam, "node1", "web")
    [leaked] = await allocate(ipam, "node2", "gone")
    block = (await check(ipam.store)).allocations[leaked][0].block
    await ipam._add_to_handle("k8s-pod-network.crashed", block, 1)
    report = await check(ipam.store)
    doc = json.loads(json.dumps(report_document(report, version="v0.1.0", generated_at="now")))
    assert set(doc) == {"version", "generatedAt", "allocations", "leakedHandles", "overstatedHandles"}
    assert list(doc["allocations"]) == [used, leaked]
    entry = doc["allocations"][leaked][0]
    assert entry["inUse"] is False and entry["owners"] == [] and entry["borrowed"] is False
    assert entry["pod"] == "gone" and entry["namespace"] == "default" and entry["node"] == "node2"
    assert entry["sequenceNumber"] == report.allocations[leaked][0].sequence_number
    assert entry["block"] == block and "type" not in entry
    assert doc["allocations"][used][0]["owners"] == ["Workload(default/node1-k8s-web-eth0)"]
    [h] = doc["leakedHandles"]
    assert h["ID"] == "k8s-pod-network.crashed" and h["Revision"] and h["block"] == {block: 1}
    parsed = parse_report(doc)
    assert [(a.ip, a.sequence_number) for a in parsed.leaks()] == [(leaked, entry["sequenceNumber"])]


@pytest.mark.parametrize("doc, where", [
    ([], "the document"),
    ({"version": "v1"}, "allocations"),
    ({"version": "v1", "allocations": {"x": [{"ip": "10.0.0.1"}]}}, "allocations.x.0.inUse"),
    ({"version": "v1", "allocations": {"x": [{"ip": "nonsense", "inUse": False}]}}, "nonsense"),
])
def test_a_malformed_report_says_where(doc, where):
    with pytest.raises(ReportError, match=where.replace(".", r"\.")):
        parse_report(doc)


async def test_release_after_a_recheck_skips_what_changed_since_the_report(ipam):
    a, b, c = [(await allocate(ipam, "node1", f"p{i}"))[0] for i in range(3)]
    report = await check(ipam.store)
    # Since the report: a got its endpoint late; b was freed and handed to a new pod.
    await ipam.store.create(endpoint("node1", "p0", [a]))
    await ipam.release_ips([b])
    await ipam.assign_ip("node1", b, handle_id="k8s-pod-network.new")
    result = await release_leaks(ipam, report.leaked, await check(ipam.store))
    assert [x.ip for x in result.released] == [c]
    assert sorted(result.changed) == sorted([a, b])
    assert (await ipam.get_allocation(b)).handle_id == "k8s-pod-network.new"


async def test_the_sequence_number_guards_the_last_instant(ipam):
    [ip] = await allocate(ipam, "node1", "p")
    stale = await check(ipam.store)
    await ipam.release_ips([ip])
    await ipam.assign_ip("node1", ip, handle_id=stale.allocations[ip][0].handle)  # same handle!
    # Even handed a re-check that is already out of date, the release refuses: the block's
    # sequence number for the address moved on.
    result = await release_leaks(ipam, stale.leaked, stale)
    assert result.released == [] and result.changed == [ip]
    assert await ipam.get_allocation(ip) is not None


async def test_handle_repair_only_when_unchanged_since_the_report(ipam):
    [ip] = await add_pod(ipam, "node1", "web")
    block = (await check(ipam.store)).allocations[ip][0].block
    await ipam._add_to_handle("k8s-pod-network.crashed", block, 1)
    await ipam._add_to_handle("k8s-pod-network.busy", block, 1)
    report = await check(ipam.store)
    crashed, busy = (next(h for h in report.leaked_handles if h.id == name)
                     for name in ("k8s-pod-network.crashed", "k8s-pod-network.busy"))
    await ipam._add_to_handle("k8s-pod-network.busy", block, 1)  # an allocation in flight
    fresh = await check(ipam.store)
    assert (await repair_handle(ipam, crashed, fresh)).outcome == "deleted"
    assert (await repair_handle(ipam, busy, fresh)).outcome == "skipped"
    assert [h.id for h in (await check(ipam.store)).leaked_handles] == ["k8s-pod-network.busy"]
