"""k8s3 end to end (topologies/k8s3.clab.yml): mesh3 on the Kubernetes datastore. A real
kube-apiserver on the lab's etcd holds everything; each percale node and percale-controllers run
with their own least-privilege identity; pods are Pods bound to their node, wired by the CNI
plugins as a runtime wires them."""

from __future__ import annotations

import json

import pytest

from percale.lab import pods
from tests.helpers.lab_e2e import (
    TOPOLOGIES,
    all_established,
    every_pod_reaches_every_pod,
    node_status,
    running,
    wait_for,
)

pytestmark = pytest.mark.lab

NODES = ("node1", "node2", "node3")
ADDRESSES = {"node1": "10.0.0.11", "node2": "10.0.0.12", "node3": "10.0.0.13"}
KUBECTL = "/etc/percale/kube/kubectl"  # in the kube node (topologies/k8s3.clab.yml)


@pytest.fixture(scope="module")
def lab():
    with running(TOPOLOGIES / "k8s3.clab.yml") as lab:
        for node in NODES:
            for i in (1, 2):
                pods.add(lab, node, f"{node}-p{i}")
        yield lab


def kubectl(lab, *args: str) -> str:
    done = lab.exec("kube", [KUBECTL, *args], capture=True)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_every_pod_reaches_every_pod(lab):
    assert every_pod_reaches_every_pod(lab) == []


def test_node_status_shows_the_mesh(lab):
    for node in NODES:
        assert wait_for(lambda node=node: all_established(lab, node, 2), 30), node_status(lab, node)
        assert set(node_status(lab, node)) == {ADDRESSES[n] for n in NODES if n != node}
    # From the datastore too: the NodeStatus each agent publishes, read where no agent runs
    # (the controllers' node, with their identity).
    out = lab.exec("controllers", ["percalectl", "node", "status", "--all"], capture=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("| node-to-node mesh | up    |") == 6, out.stdout


def test_kubectl_lists_the_blocks_with_their_columns(lab):
    lines = kubectl(lab, "get", "ipamblocks").splitlines()
    assert lines[0].split() == ["NAME", "CIDR", "AFFINITY", "AGE"]
    owners = sorted(line.split()[2] for line in lines[1:])
    assert owners == ["host:node1", "host:node2", "host:node3"]
    # Each block is named as Calico names it, after its CIDR.
    for line in lines[1:]:
        name, cidr = line.split()[:2]
        assert name == cidr.replace(".", "-").replace("/", "-")


def test_pods_and_nodes_carry_percales_data(lab):
    pod = json.loads(kubectl(lab, "get", "pod", "node1-p1", "-o", "json"))
    record = next(p for p in pods.pods(lab) if p.name == "node1-p1")
    assert pod["metadata"]["annotations"]["percale.io/podIP"] == f"{record.addresses[0]}/32"
    node = json.loads(kubectl(lab, "get", "node", "node2", "-o", "json"))
    assert node["metadata"]["annotations"]["percale.io/IPv4Address"] == "10.0.0.12/24"
    wide = lab.exec("node1", ["percalectl", "get", "nodes", "-o", "wide"], capture=True)
    assert wide.returncode == 0, wide.stderr
    assert "10.0.0.12/24" in wide.stdout


def test_a_deleted_pod_leaves_nothing(lab):
    pods.add(lab, "node3", "extra")
    pods.delete(lab, "extra")
    assert "extra" not in kubectl(lab, "get", "pods")
    check = lab.exec("node1", ["percalectl", "ipam", "check"], capture=True)
    assert check.returncode == 0 and check.stdout.endswith("found 0 problems.\n"), check.stdout


def test_a_pod_name_kubernetes_has_already_is_refused_and_its_pod_left_alone(lab):
    """`pod add` of a name whose Pod someone else made: refused, and that Pod still there (the
    failed add's clean-up deletes only a Pod the lab made)."""
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "theirs", "namespace": "default"},
           "spec": {"nodeName": "node2", "containers": [{"name": "c", "image": "percale.invalid/pause"}]}}
    done = lab.exec("kube", [KUBECTL, "create", "-f", "-"], input=json.dumps(pod), capture=True)
    assert done.returncode == 0, done.stderr
    try:
        with pytest.raises(pods.LabError, match="AlreadyExists|already exists"):
            pods.add(lab, "node2", "theirs")
        assert "theirs" not in [p.name for p in pods.pods(lab)]
        assert json.loads(kubectl(lab, "get", "pod", "theirs", "-o", "json"))["metadata"]["name"] == "theirs"
    finally:
        kubectl(lab, "delete", "pod", "theirs", "--force", "--grace-period=0", "--ignore-not-found")
