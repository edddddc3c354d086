"""percale-operator and the cluster's IP pools, against a real control plane, as tigera's pool
controller treats them: the default pool from kubeadm's podSubnet, the Installation's edits
reaching the pools the operator owns, a removed entry's pool retired, a block size change
refused, and pools that exist out of band left alone when the Installation lists none."""

from __future__ import annotations

import json

import pytest

from tests.operator.test_operator import condition, get, log_of, wait_for

pytestmark = pytest.mark.operator
MANAGED = ("app.kubernetes.io/managed-by", "percale-operator")


def patch_pools(plane, entries) -> None:
    plane.kubectl("patch", "installation", "default", "--type=merge",
                  "-p", json.dumps({"spec": {"calicoNetwork": {"ipPools": entries}}}))


def entries(plane) -> list[dict]:
    return get(plane, "installation", "default")["spec"]["calicoNetwork"]["ipPools"]


def degraded(plane):
    return wait_for(lambda: (c := condition(plane, "Degraded")) and c["status"] == "True" and c)


def test_the_default_pool_takes_kubeadms_pod_subnet(plane, operator):
    plane.kubectl("create", "-f", "-", input=json.dumps({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "kubeadm-config", "namespace": "kube-system"},
        "data": {"ClusterConfiguration": (
            "apiVersion: kubeadm.k8s.io/v1beta4\nkind: ClusterConfiguration\nnetworking:\n"
            "  dnsDomain: cluster.local\n  podSubnet: 10.245.0.0/16\n"
            "  serviceSubnet: 10.96.0.0/12\n")}}))
    plane.kubectl("create", "-f", "-", input=json.dumps({
        "apiVersion": "operator.percale.io/v1", "kind": "Installation",
        "metadata": {"name": "default"}, "spec": {}}))
    pool = wait_for(lambda: get(plane, "ippool", "default-ipv4-ippool"), 60)
    assert pool and pool["spec"]["cidr"] == "10.245.0.0/16", (pool, log_of(plane))
    assert (MANAGED[0], MANAGED[1]) in pool["metadata"]["labels"].items()
    assert wait_for(lambda: [e["cidr"] for e in entries(plane)] == ["10.245.0.0/16"]), log_of(plane)
    names = [p["metadata"]["name"] for p in get(plane, "ippools")["items"]]
    assert names == ["default-ipv4-ippool"]


def test_an_edited_entry_reaches_its_pool(plane, operator):
    saved = entries(plane)
    patch_pools(plane, [{**saved[0], "natOutgoing": "Disabled", "disableNewAllocations": True}])
    edited = wait_for(lambda: (p := get(plane, "ippool", "default-ipv4-ippool"))["spec"]
                      ["disabled"] and p)
    assert edited, (get(plane, "ippool", "default-ipv4-ippool"), log_of(plane))
    assert edited["spec"]["natOutgoing"] is False
    assert condition(plane, "Degraded")["status"] == "False", condition(plane, "Degraded")
    patch_pools(plane, saved)
    assert wait_for(lambda: not get(plane, "ippool", "default-ipv4-ippool")["spec"]["disabled"])


def test_a_block_size_change_is_degraded_and_changes_nothing(plane, operator):
    saved = entries(plane)
    before = get(plane, "ippool", "default-ipv4-ippool")
    patch_pools(plane, [{**saved[0], "blockSize": 24, "natOutgoing": "Disabled"}])
    found = degraded(plane)
    assert found and "ipPools[0].blockSize" in found["message"], (condition(plane, "Degraded"),
                                                                 log_of(plane))
    after = get(plane, "ippool", "default-ipv4-ippool")
    assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]
    patch_pools(plane, saved)
    assert wait_for(lambda: condition(plane, "Degraded")["status"] == "False"), log_of(plane)


def test_a_removed_entrys_pool_is_deleted_once_no_address_is_held_in_it(plane, operator):
    saved = entries(plane)
    patch_pools(plane, [*saved, {"name": "extra", "cidr": "10.246.0.0/16"}])
    assert wait_for(lambda: get(plane, "ippool", "extra")), log_of(plane)
    # One address held in a block of the pool: it is disabled, not deleted, and the
    # Installation says why.
    plane.kubectl("create", "-f", "-", input=json.dumps({
        "apiVersion": "percale.io/v1", "kind": "IPAMBlock", "metadata": {"name": "10-246-0-0-26"},
        "spec": {"cidr": "10.246.0.0/26", "affinity": "host:node1",
                 "allocations": [0] + [None] * 63, "unallocated": list(range(1, 64)),
                 "attributes": [{"handle_id": "k8s-pod-network.abc", "secondary": {}}]}}))
    patch_pools(plane, saved)
    waiting = degraded(plane)
    assert waiting and "extra" in waiting["message"], (condition(plane, "Degraded"), log_of(plane))
    assert get(plane, "ippool", "extra")["spec"]["disabled"] is True
    plane.kubectl("delete", "ipamblock", "10-246-0-0-26")
    assert wait_for(lambda: get(plane, "ippool", "extra") is None), log_of(plane)
    assert wait_for(lambda: condition(plane, "Degraded")["status"] == "False"), log_of(plane)
    assert get(plane, "ippool", "default-ipv4-ippool") is not None


def test_pools_made_out_of_band_and_no_pool_list_add_no_default_pool(plane, operator):
    """tigera's fillDefaults: with pools in the cluster, no `ipPools` means []; percale added
    192.168.0.0/16 beside them, and put it back on every resync."""
    plane.kubectl("create", "-f", "-", input=json.dumps({
        "apiVersion": "percale.io/v1", "kind": "IPPool", "metadata": {"name": "cluster-pool"},
        "spec": {"cidr": "10.244.0.0/16"}}))
    plane.kubectl("patch", "installation", "default", "--type=json",
                  "-p", '[{"op": "remove", "path": "/spec/calicoNetwork/ipPools"}]')
    assert wait_for(lambda: entries(plane) == []), (entries(plane), log_of(plane))
    # The operator's own pool, no longer listed, goes; the one made out of band stays.
    assert wait_for(lambda: get(plane, "ippool", "default-ipv4-ippool") is None), log_of(plane)
    wait_for(lambda: False, 6)  # a resync or more
    assert {p["metadata"]["name"]: p["spec"]["cidr"] for p in get(plane, "ippools")["items"]} \
        == {"cluster-pool": "10.244.0.0/16"}
    assert condition(plane, "Degraded")["status"] == "False", condition(plane, "Degraded")
