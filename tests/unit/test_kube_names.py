"""Names and native objects on the Kubernetes datastore, without a cluster (the contract suite
runs the same paths against a real apiserver)."""

from __future__ import annotations

import json

import pytest

from percale.api import parse
from percale.datastore import kube_names, kube_native
from percale.datastore.contract import Key


def test_block_and_affinity_names_are_calicos():
    assert kube_names.cidr_name("10.244.0.0/26") == "10-244-0-0-26"
    assert kube_names.cidr_name("fd00:10::/122") == "fd00-10---122"
    assert kube_names.object_name(Key("IPAMBlock", "10.244.0.0-26")) == "10-244-0-0-26"
    assert kube_names.object_name(Key("IPAMBlock", "fd00:10::-122")) == "fd00-10---122"
    assert kube_names.object_name(Key("BlockAffinity", "node-1-10.244.0.64-26")) == "node-1-10-244-0-64-26"
    assert kube_names.object_name(Key("IPAMHandle", "k8s-pod-network.ABC")) == "k8s-pod-network.abc"


def test_percale_names_come_back_from_the_spec():
    assert kube_names.percale_name("IPAMBlock", "10-244-0-0-26", {"cidr": "10.244.0.0/26"}) == "10.244.0.0-26"
    assert kube_names.percale_name(
        "BlockAffinity", "x", {"node": "node-1", "cidr": "fd00::/122"}) == "node-1-fd00::-122"
    assert kube_names.percale_name("IPAMHandle", "a.b", {"handleID": "A.B"}) == "A.B"


def test_a_long_affinity_name_is_cut_and_hashed_but_stays_unique():
    long_a, long_b = "a" * 250, "a" * 249 + "b"
    first = kube_names.affinity_object_name(long_a, "10.0.0.0/26")
    second = kube_names.affinity_object_name(long_b, "10.0.0.0/26")
    assert len(first) <= 253 and len(second) <= 253 and first != second
    assert first.endswith("-10-0-0-0-26")


def test_affinity_labels_select_one_node_whatever_its_length():
    labels = kube_names.affinity_labels("n" * 253, "10.0.0.0/26")
    assert all(len(v) <= 63 for v in labels.values())
    assert kube_names.node_selector("n" * 253) == (
        f"{kube_names.HOSTNAME_HASH_LABEL}={labels[kube_names.HOSTNAME_HASH_LABEL]}")
    assert labels[kube_names.IP_VERSION_LABEL] == "4"


def _k8s_node(annotations=None):
    return {"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": "node-1", "resourceVersion": "7", "uid": "u1",
                         "labels": {"kubernetes.io/hostname": "node-1"},
                         "annotations": {"node.alpha.kubernetes.io/ttl": "0", **(annotations or {})}},
            "status": {"addresses": [{"type": "InternalIP", "address": "10.0.0.11"},
                                     {"type": "Hostname", "address": "node-1"}]}}


def test_a_kubernetes_node_becomes_a_percale_node():
    pair = kube_native.node_from_object(_k8s_node({
        "percale.io/IPv4Address": "10.0.0.11/24", "percale.io/ASNumber": "64513",
        "percale.io/IPv4VXLANTunnelAddr": "10.244.0.1"}))
    node = pair.value
    assert pair.revision == "7" and node.metadata.name == "node-1"
    assert node.spec.bgp.ipv4_address == "10.0.0.11/24" and node.spec.bgp.as_number == 64513
    assert node.spec.ipv4_vxlan_tunnel_addr == "10.244.0.1"
    assert [(a.type, a.address) for a in node.spec.addresses] == [
        ("CalicoNodeIP", "10.0.0.11/24"), ("InternalIP", "10.0.0.11")]
    assert node.metadata.labels == {"kubernetes.io/hostname": "node-1"}
    assert "percale.io/IPv4Address" not in node.metadata.annotations


def test_a_node_written_back_keeps_what_kubernetes_owns_and_drops_cleared_fields():
    current = _k8s_node({"percale.io/IPv4Address": "10.0.0.11/24",
                         "percale.io/RouteReflectorClusterID": "1.0.0.1"})
    node = kube_native.node_from_object(current).value
    node.spec.bgp.route_reflector_cluster_id = None
    out = kube_native.node_status_object(node, current, "7")
    annotations = out["metadata"]["annotations"]
    assert annotations["percale.io/IPv4Address"] == "10.0.0.11/24"
    assert "percale.io/RouteReflectorClusterID" not in annotations
    assert annotations["node.alpha.kubernetes.io/ttl"] == "0"
    assert out["status"] == current["status"] and out["metadata"]["resourceVersion"] == "7"


def test_endpoint_names_split_back_into_their_segments():
    assert kube_native.split_endpoint_name("node--1-k8s-nginx--5d4f-eth0") == (
        "node-1", "k8s", "nginx-5d4f", "eth0")
    with pytest.raises(ValueError):
        kube_native.split_endpoint_name("just-two")


def _endpoint():
    return parse({"apiVersion": "percale.io/v1", "kind": "WorkloadEndpoint",
                  "metadata": {"name": "node1-k8s-web-eth0", "namespace": "prod"},
                  "spec": {"orchestrator": "k8s", "node": "node1", "pod": "web", "endpoint": "eth0",
                           "containerID": "abc", "ipNetworks": ["10.244.0.5/32"]}})


def test_an_endpoint_round_trips_through_pod_annotations():
    patch = kube_native.endpoint_patch(_endpoint(), "12")
    annotations = patch["metadata"]["annotations"]
    assert annotations["percale.io/podIP"] == "10.244.0.5/32"
    assert annotations["percale.io/containerID"] == "abc"
    assert patch["metadata"]["resourceVersion"] == "12"
    pod = {"metadata": {"name": "web", "namespace": "prod", "resourceVersion": "13",
                        "labels": {"app": "web"}, "annotations": annotations}}
    pair = kube_native.endpoint_from_pod(pod)
    assert pair.key == Key("WorkloadEndpoint", "node1-k8s-web-eth0", "prod")
    assert pair.value.spec == _endpoint().spec and pair.revision == "13"
    assert pair.value.metadata.labels == {"app": "web"}


def test_an_endpoint_takes_its_service_account_and_sidecar_ports_from_the_pod():
    """Calico's conversion reads spec.serviceAccountName (for projectcalico.org/serviceaccount,
    which a Deny written for Calico selects by) and the named ports of init containers too (a
    native sidecar's): percale read neither, so such a Deny denied nothing and an Allow on the
    sidecar's port allowed nothing."""
    annotations = kube_native.endpoint_patch(_endpoint(), "12")["metadata"]["annotations"]
    pod = {"metadata": {"name": "web", "namespace": "prod", "annotations": annotations},
           "spec": {"serviceAccountName": "untrusted",
                    "containers": [{"ports": [{"name": "web", "containerPort": 8080}]}],
                    "initContainers": [{"restartPolicy": "Always", "ports": [
                        {"name": "metrics", "containerPort": 9090, "protocol": "TCP"}]}]}}
    spec = kube_native.endpoint_from_pod(pod).value.spec
    assert spec.service_account_name == "untrusted"
    assert sorted((p.name, p.port) for p in spec.ports) == [("metrics", 9090), ("web", 8080)]


def test_removing_an_endpoint_keeps_the_container_id():
    annotations = kube_native.endpoint_patch(None, "12")["metadata"]["annotations"]
    assert annotations == {"percale.io/workloadEndpoint": None, "percale.io/podIP": None,
                           "percale.io/podIPs": None}
    assert kube_native.endpoint_from_pod({"metadata": {"name": "web", "annotations": {
        "percale.io/containerID": "abc"}}}) is None
    json.dumps(annotations)
