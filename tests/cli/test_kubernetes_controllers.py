"""percale-controllers on the Kubernetes datastore, with its own least-privilege identity: when a
Kubernetes Node is deleted (and its Pods with it), the addresses its pods held go back in the
next round, without waiting for the leak grace period, also when it went before the first round;
another node's stay."""

from __future__ import annotations

import subprocess
import time
from datetime import datetime, timedelta, timezone

import pytest

from percale.api import ObjectMeta, WorkloadEndpoint, WorkloadEndpointSpec
from percale.api.workloadendpoint import workload_endpoint_name
from percale.ipam.allocator import IPAM
from tests.cli.test_controllers import CONTROLLERS
from tests.helpers.ipam_world import add_pool, assert_consistent
from tests.helpers.store import with_store

pytestmark = pytest.mark.cli


def test_a_deleted_node_gives_its_addresses_back(kube):
    for node in ("node-a", "node-b"):
        kube.node(node, None)
    pods = {"web-1": "node-a", "web-2": "node-a", "db-1": "node-b"}
    for pod, node in pods.items():
        kube.pod("default", pod, node=node)

    async def wire(store):
        await add_pool(store, "pods", "10.251.0.0/24")
        ipam = IPAM(store)
        for pod, node in pods.items():
            got = await ipam.auto_assign(node, handle_id=f"k8s-pod-network.{pod}", num4=1)
            name = workload_endpoint_name(node, "k8s", pod, "eth0")
            await store.create(WorkloadEndpoint(
                metadata=ObjectMeta(name=name, namespace="default"),
                spec=WorkloadEndpointSpec.model_validate({
                    "orchestrator": "k8s", "node": node, "pod": pod, "endpoint": "eth0",
                    "containerID": f"c-{pod}", "ipNetworks": [f"{got.ipv4[0].ip}/32"]})))

    async def holders(store):
        ipam = IPAM(store)
        return {pod: await ipam.ips_by_handle(f"k8s-pod-network.{pod}") for pod in pods}

    with_store(kube.admin, wire)
    controllers = kube.kubeconfig("percale-controllers", groups=("percale:controllers",))
    # The controllers run on while the node goes: a round saw it, so it is gone at once, however
    # young its allocations (for a node no round saw, see the next test).
    running = subprocess.Popen(
        [CONTROLLERS, "--datastore-type", "kubernetes", "--kubeconfig", controllers,
         "--rounds", "8", "--gc-interval", "1s"], stderr=subprocess.PIPE, text=True)
    time.sleep(2.5)
    assert all(with_store(kube.admin, holders).values()), "addresses in use were released"

    # The node goes, and its pods with it (Kubernetes' pod GC would delete them).
    kube.kubectl("delete", "pods", "web-1", "web-2", "-n", "default", "--force", "--grace-period=0")
    kube.kubectl("delete", "node", "node-a")
    _, err = running.communicate(timeout=60)
    assert running.returncode == 0 and "Traceback" not in err, err
    assert "node node-a is gone" in err
    held = with_store(kube.admin, holders)
    assert held["web-1"] == [] and held["web-2"] == [], held
    assert held["db-1"], "another node's address went too"
    with_store(kube.admin, assert_consistent)


def test_a_node_deleted_before_the_first_round_is_collected_in_it(kube):
    """The Node went, its Pods with it, while percale-controllers was down or moving (often
    because the deleted node ran it): no round saw it. With --leak-grace-period 0 (leaks on
    nodes that exist are never collected) the first round frees its pods' addresses, its
    tunnel address, its block and its affinity, as Calico's kube-controllers does; they were
    never freed. Another node's stay."""
    for node in ("node-a", "node-b"):
        kube.node(node, None)
    pods = {"web-1": "node-a", "db-1": "node-b"}
    for pod, node in pods.items():
        kube.pod("default", pod, node=node)
    handles = [f"k8s-pod-network.{pod}" for pod in pods] + ["vxlan-tunnel-addr-node-a"]

    async def wire(store):
        await add_pool(store, "pods", "10.253.0.0/24")
        # Stamped two minutes ago, as a node's allocations are from before it went: older than
        # the margin that covers an ADD in flight on a node without a Node.
        ipam = IPAM(store, clock=lambda: datetime.now(timezone.utc) - timedelta(minutes=2))
        for pod, node in pods.items():
            got = await ipam.auto_assign(node, handle_id=f"k8s-pod-network.{pod}", num4=1)
            name = workload_endpoint_name(node, "k8s", pod, "eth0")
            await store.create(WorkloadEndpoint(
                metadata=ObjectMeta(name=name, namespace="default"),
                spec=WorkloadEndpointSpec.model_validate({
                    "orchestrator": "k8s", "node": node, "pod": pod, "endpoint": "eth0",
                    "containerID": f"c-{pod}", "ipNetworks": [f"{got.ipv4[0].ip}/32"]})))
        await ipam.auto_assign("node-a", handle_id="vxlan-tunnel-addr-node-a", num4=1,
                               use="Tunnel", attrs={"type": "vxlanTunnelAddress"})

    async def state(store):
        ipam = IPAM(store)
        held = {handle: await ipam.ips_by_handle(handle) for handle in handles}
        blocks = sorted(kv.value.spec.affinity for kv in (await store.list("IPAMBlock")).items)
        affinities = sorted(kv.value.spec.node
                            for kv in (await store.list("BlockAffinity")).items)
        return held, blocks, affinities

    with_store(kube.admin, wire)
    kube.kubectl("delete", "pods", "web-1", "-n", "default", "--force", "--grace-period=0")
    kube.kubectl("delete", "node", "node-a")
    controllers = kube.kubeconfig("percale-controllers", groups=("percale:controllers",))
    done = subprocess.run(
        [CONTROLLERS, "--datastore-type", "kubernetes", "--kubeconfig", controllers,
         "--rounds", "1", "--gc-interval", "0.1s", "--leak-grace-period", "0"],
        capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    assert "node node-a is gone" in done.stderr, done.stderr
    held, blocks, affinities = with_store(kube.admin, state)
    assert held["k8s-pod-network.web-1"] == [] and held["vxlan-tunnel-addr-node-a"] == [], held
    assert held["k8s-pod-network.db-1"], "another node's address went too"
    assert (blocks, affinities) == (["host:node-b"], ["node-b"])
    with_store(kube.admin, assert_consistent)


def test_a_node_or_pod_that_cannot_be_read_switches_no_gc_off(kube):
    """A Node annotated `percale.io/ASNumber: "65001a"` or a Pod annotated
    `percale.io/workloadEndpoint: oops` failed every round: anyone allowed to annotate a pod
    turned off the cluster's GC. Now the rounds go on and free other leaks; what the bad
    objects may own is held back, and they are logged by name."""
    for node in ("node-a", "node-b"):
        kube.node(node, None)
    kube.pod("tenant-a", "mine", node="node-a")
    owners = {"crashed": ("node-a", "default"), "on-b": ("node-b", "default"),
              "mine": ("node-a", "tenant-a")}

    async def allocate(store):
        await add_pool(store, "pods", "10.252.0.0/24")
        ipam = IPAM(store)
        for pod, (node, namespace) in owners.items():
            await ipam.auto_assign(node, handle_id=f"k8s-pod-network.{pod}", num4=1,
                                   attrs={"pod": pod, "namespace": namespace})

    async def holders(store):
        ipam = IPAM(store)
        return {pod: await ipam.ips_by_handle(f"k8s-pod-network.{pod}") for pod in owners}

    with_store(kube.admin, allocate)
    # Annotated once the addresses are given: the allocator cannot read node-b either.
    kube.kubectl("annotate", "node", "node-b", "percale.io/ASNumber=65001a")
    kube.kubectl("annotate", "pod", "mine", "-n", "tenant-a", "percale.io/workloadEndpoint=oops")
    controllers = kube.kubeconfig("percale-controllers", groups=("percale:controllers",))
    done = subprocess.run(
        [CONTROLLERS, "--datastore-type", "kubernetes", "--kubeconfig", controllers,
         "--rounds", "3", "--gc-interval", "0.5s", "--leak-grace-period", "0.1s"],
        capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    assert "round failed" not in done.stderr, done.stderr
    assert "Node(node-b)" in done.stderr
    assert "WorkloadEndpoint(tenant-a/node--a-k8s-mine-eth0)" in done.stderr
    held = with_store(kube.admin, holders)
    assert held["crashed"] == [], held
    assert held["on-b"] and held["mine"], "an address whose owner could not be read was freed"
