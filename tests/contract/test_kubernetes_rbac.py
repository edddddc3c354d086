"""manifests/rbac.yaml under real RBAC and admission: percale-node's identity can do its job
(tests/interop/test_kubernetes_node.py runs two agents with it) and is refused what it does not
need -- Secrets, pools, another node's Node, a Pod on another node."""

from __future__ import annotations

import asyncio
import json

import pytest

from percale.datastore.kube_client import KubeClient, KubeError, configuration

pytestmark = pytest.mark.contract


@pytest.fixture
def node_a(kube):
    kube.node("node-a", "10.0.0.1")
    kube.node("node-b", "10.0.0.2")
    return kube.kubeconfig("percale-node:node-a", groups=("percale:nodes",))


def _status_update(kube, kubeconfig: str, node: str):
    current = kube.get_json("node", node)
    current["metadata"].setdefault("annotations", {})["percale.io/IPv4Address"] = "10.0.0.9/24"
    return kube.kubectl("replace", "--subresource=status", "-f", "-", kubeconfig=kubeconfig,
                        input=json.dumps(current), check=False)


def test_a_node_writes_its_own_node_and_not_anothers(kube, node_a):
    assert _status_update(kube, node_a, "node-a").returncode == 0
    refused = _status_update(kube, node_a, "node-b")
    assert refused.returncode != 0
    assert "Forbidden" in refused.stderr and "may only write its own node" in refused.stderr
    assert "percale.io/IPv4Address" not in (kube.get_json("node", "node-b")["metadata"]
                                            .get("annotations") or {})


def _patch_pod_status(kubeconfig: str, pod: str) -> None:
    """The agent's own call (kubectl patch would also GET pods/status, which it never needs)."""

    async def patch():
        client = KubeClient(await configuration(kubeconfig))
        try:
            await client.request(
                "PATCH", f"/api/v1/namespaces/default/pods/{pod}/status",
                body={"metadata": {"annotations": {"percale.io/podIP": "10.244.0.5/32"}}},
                content_type="application/strategic-merge-patch+json")
        finally:
            await client.close()

    asyncio.run(patch())


def test_a_node_annotates_pods_on_itself_only(kube, node_a):
    kube.pod("default", "here", node="node-a")
    kube.pod("default", "there", node="node-b")
    _patch_pod_status(node_a, "here")
    with pytest.raises(KubeError) as refused:
        _patch_pod_status(node_a, "there")
    assert refused.value.status == 403 and "may only write its own node" in str(refused.value)
    assert "percale.io/podIP" not in (kube.get_json("pod", "-n", "default", "there")["metadata"]
                                      .get("annotations") or {})


@pytest.mark.parametrize("verb", [
    ("get", "secrets", "-A"),
    ("create", "secret", "generic", "x", "-n", "default", "--from-literal=a=b"),
    ("delete", "ippool", "existing"),
    ("create", "-f", "-"),
    ("patch", "node", "node-a", "-p", '{"spec":{"unschedulable":true}}'),
])
def test_a_node_is_refused_what_it_does_not_need(kube, node_a, verb):
    pool = json.dumps({"apiVersion": "percale.io/v1", "kind": "IPPool",
                       "metadata": {"name": "sneaky"}, "spec": {"cidr": "10.9.0.0/16"}})
    kube.kubectl("create", "-f", "-", input=pool.replace("sneaky", "existing"))
    done = kube.kubectl(*verb, kubeconfig=node_a, check=False,
                        input=pool if verb[-1] == "-" else None)
    assert done.returncode != 0
    assert "forbidden" in done.stderr.lower(), done.stderr


def test_the_controllers_identity_reads_nodes_and_frees_ipam_but_writes_no_pools(kube):
    controllers = kube.kubeconfig("percale-controllers", groups=("percale:controllers",))
    assert kube.kubectl("get", "nodes", kubeconfig=controllers).returncode == 0
    assert kube.kubectl("auth", "can-i", "delete", "ipamblocks.percale.io",
                        kubeconfig=controllers).stdout.strip() == "yes"
    assert kube.kubectl("auth", "can-i", "create", "ippools.percale.io", kubeconfig=controllers,
                        check=False).stdout.strip() == "no"
    assert kube.kubectl("auth", "can-i", "get", "secrets", kubeconfig=controllers,
                        check=False).stdout.strip() == "no"
