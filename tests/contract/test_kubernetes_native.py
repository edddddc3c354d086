"""Node and WorkloadEndpoint on the Kubernetes datastore are Kubernetes' own Node and Pod
(datastore/kube_native.py), which others write too: the kubelet reports a Pod's status and
heartbeats its Node, controllers annotate Nodes. These tests race percale's writes and watches
against such writes on a real kube-apiserver, forcing each race by running the other write at
the worst moment (wrapping the store's client, as a reviewer's probes did)."""

from __future__ import annotations

import asyncio
import json

import pytest

from percale.api import parse
from percale.api.workloadendpoint import workload_endpoint_name
from percale.datastore import Key, NotFound
from percale.datastore.cache import Cache
from percale.datastore.kubernetes import KubeDatastore

pytestmark = pytest.mark.contract


def endpoint(namespace: str, pod: str, ip: str = "10.0.0.5/32"):
    return parse({
        "apiVersion": "percale.io/v1", "kind": "WorkloadEndpoint",
        "metadata": {"name": workload_endpoint_name("node1", "k8s", pod, "eth0"),
                     "namespace": namespace},
        "spec": {"node": "node1", "pod": pod, "endpoint": "eth0", "orchestrator": "k8s",
                 "ipNetworks": [ip]},
    })


def write_pod_status(kube, namespace: str, name: str, **status) -> None:
    """What the kubelet does: rewrite the Pod's status (which bumps its resourceVersion)."""
    pod = json.loads(kube.kubectl("get", "pod", "-n", namespace, name, "-o", "json").stdout)
    pod["status"] = {**(pod.get("status") or {}), **status}
    kube.kubectl("replace", "--subresource=status", "-f", "-", input=json.dumps(pod))


async def until(check, timeout: float = 20) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "not within the time"
        await asyncio.sleep(0.1)


@pytest.fixture
async def store(kube):
    ds = KubeDatastore(kube.admin)
    yield ds
    await ds.close()


async def test_an_endpoint_removed_after_the_views_list_leaves_the_view(kube, store):
    """The view lists, then watches from the list's revision; a CNI DEL just after the list
    removes the endpoint's annotation. That Pod's first event in the watch is a MODIFIED with no
    endpoint, and the watch, knowing nothing of the Pod before, used to drop it (and the Pod's
    DELETED after it): the view kept a dead endpoint, and the policy agent its rules."""
    kube.pod("wep-resume", "web1", node="node1")
    kube.pod("wep-resume", "web2", node="node1")
    removed = await store.create(endpoint("wep-resume", "web1"))
    kept = await store.create(endpoint("wep-resume", "web2", "10.0.0.6/32"))
    listed = await store.list("WorkloadEndpoint", namespace="wep-resume")
    assert [kv.key for kv in listed.items] == [removed.key, kept.key]

    await store.delete(removed.key)
    events = store.watch("WorkloadEndpoint", revision=listed.revision, namespace="wep-resume")
    got = await asyncio.wait_for(anext(events), 10)
    await events.aclose()
    assert (got.type, got.key) == ("DELETED", removed.key)

    cache = Cache(store, ["WorkloadEndpoint"])
    task = asyncio.create_task(cache.run())
    try:
        await cache.wait_synced()
        assert set(cache.items("WorkloadEndpoint")) == {kept.key}
        await store.delete(kept.key)
        await until(lambda: not cache.items("WorkloadEndpoint"))
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_finished_pod_has_no_endpoint(kube, store):
    """A Pod that has run to its end (Succeeded, Failed) keeps its annotations, but its
    addresses are released and may be another pod's: as Calico's conversion, percale reports
    no endpoint for it, and a watcher hears the endpoint deleted."""
    kube.pod("wep-done", "job1", node="node1")
    kube.pod("wep-done", "job2", node="node1")
    done = await store.create(endpoint("wep-done", "job1", "10.0.0.9/32"))
    failed = await store.create(endpoint("wep-done", "job2", "10.0.0.10/32"))
    cache = Cache(store, ["WorkloadEndpoint"])
    task = asyncio.create_task(cache.run())
    try:
        await cache.wait_synced()
        assert set(cache.items("WorkloadEndpoint")) == {done.key, failed.key}

        await asyncio.to_thread(write_pod_status, kube, "wep-done", "job1", phase="Succeeded")
        await until(lambda: set(cache.items("WorkloadEndpoint")) == {failed.key})
        await asyncio.to_thread(write_pod_status, kube, "wep-done", "job2", phase="Failed")
        await until(lambda: not cache.items("WorkloadEndpoint"))
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert (await store.list("WorkloadEndpoint", namespace="wep-done")).items == []
    with pytest.raises(NotFound):
        await store.get(done.key)


async def test_deleting_an_endpoint_without_a_revision_outlasts_a_kubelet_status_write(
        kube, store):
    """delete(key, revision=None) deletes whatever is stored: a kubelet status write between
    the backend's read and its PATCH is no Conflict for that caller, but a reason to read
    again."""
    kube.pod("wep-del", "web7", node="node1")
    wired = await store.create(endpoint("wep-del", "web7", "10.0.0.7/32"))
    real = store.client.request
    raced = []

    async def request(method: str, path: str, **kwargs):
        if method == "PATCH" and path.endswith("/pods/web7/status") and not raced:
            raced.append(path)
            await asyncio.to_thread(write_pod_status, kube, "wep-del", "web7",
                                    conditions=[{"type": "Ready", "status": "False"}])
        return await real(method, path, **kwargs)

    store.client.request = request
    gone = await store.delete(wired.key)
    assert raced, "the kubelet's write never raced the delete; the test proves nothing"
    assert gone.value.spec.ip_networks == ["10.0.0.7/32"]
    with pytest.raises(NotFound):
        await store.get(wired.key)


async def test_creating_a_node_outlasts_a_kubelet_write_to_its_node(kube, store):
    """percale-node creates its Node (writes percale's annotations onto the Kubernetes Node)
    while the Node is rewritten for other reasons: a 409 then means "read it again", not a
    Conflict the caller never asked to compare against."""
    kube.node("n11")
    real = store.client.request
    raced = []

    async def request(method: str, path: str, **kwargs):
        if method == "PUT" and path.endswith("/nodes/n11/status") and not raced:
            raced.append(path)
            await asyncio.to_thread(kube.kubectl, "annotate", "node", "n11",
                                    "node.alpha.kubernetes.io/ttl=0", "--overwrite")
        return await real(method, path, **kwargs)

    store.client.request = request
    want = parse({"apiVersion": "percale.io/v1", "kind": "Node", "metadata": {"name": "n11"},
                  "spec": {"bgp": {"ipv4Address": "192.168.11.1/24"}}})
    created = await store.create(want)
    assert raced, "nothing raced the create; the test proves nothing"
    assert created.value.spec.bgp.ipv4_address == "192.168.11.1/24"
    assert (await store.get(Key("Node", "n11"))).revision == created.revision
