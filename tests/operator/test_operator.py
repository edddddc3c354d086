"""percale-operator against a real control plane (kube-apiserver and kube-controller-manager):
the Installation renders everything with owner references, drift is put back, a spec change rolls
the DaemonSet, an invalid spec is Degraded and changes nothing, and deleting the Installation
lets the garbage collector remove what it owned."""

from __future__ import annotations

import json
import time

import pytest

from tests.helpers.kube_apiserver import ROOT

pytestmark = pytest.mark.operator

NS = "percale-system"


def wait_for(check, timeout: float = 30, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (value := check()):
            return value
        time.sleep(interval)
    return None


def get(plane, *args: str) -> dict | None:
    done = plane.kubectl("get", *args, "-o", "json", check=False)
    return json.loads(done.stdout) if done.returncode == 0 else None


def condition(plane, kind: str) -> dict | None:
    installation = get(plane, "installation", "default") or {}
    return next((c for c in (installation.get("status") or {}).get("conditions", [])
                 if c["type"] == kind), None)


def log_of(plane) -> str:
    return (plane.work / "operator.log").read_text(errors="replace")[-3000:]


def test_the_installation_renders_everything_it_owns(plane, operator):
    plane.kubectl("create", "-f", str(ROOT / "manifests" / "installation.yaml"))
    daemonset = wait_for(lambda: get(plane, "daemonset", "-n", NS, "percale-node"), 60)
    assert daemonset, log_of(plane)
    installation = get(plane, "installation", "default")
    owner = daemonset["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["uid"]) == ("Installation", installation["metadata"]["uid"])
    for kind, name in (("deployment", "percale-controllers"), ("configmap", "percale-cni-config"),
                       ("serviceaccount", "percale-node")):
        assert wait_for(lambda kind=kind, name=name: get(plane, kind, "-n", NS, name)), (kind, log_of(plane))
    assert get(plane, "clusterrole", "percale-node")["metadata"]["ownerReferences"][0]["kind"] == "Installation"
    pool = wait_for(lambda: get(plane, "ippool", "default-ipv4-ippool"))
    assert pool["spec"]["cidr"] == "192.168.0.0/16" and pool["spec"]["vxlanMode"] == "CrossSubnet"
    # Defaults written back into the spec, as tigera does.
    spec = wait_for(lambda: (get(plane, "installation", "default")["spec"]
                             if "nodeUpdateStrategy" in get(plane, "installation", "default")["spec"] else None))
    assert spec["calicoNetwork"]["bgp"] == "Enabled"
    assert spec["calicoNetwork"]["nodeAddressAutodetectionV4"] == {"firstFound": True}
    # No kubelet runs here: the controllers' replica never becomes available.
    progressing = wait_for(lambda: (c := condition(plane, "Progressing")) and c["status"] == "True" and c)
    assert progressing and "percale-controllers" in progressing["message"], condition(plane, "Progressing")
    env = {e["name"]: e.get("value") for e in daemonset["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["PERCALE_DATASTORE_TYPE"] == "kubernetes" and env["IP_AUTODETECTION_METHOD"] == "first-found"
    table = plane.kubectl("get", "installation").stdout.splitlines()
    assert table[0].split() == ["NAME", "READY", "PROGRESSING", "DEGRADED", "MTU", "AGE"]
    assert table[1].split()[:4] == ["default", "False", "True", "False"]


def test_a_deleted_daemonset_comes_back_and_a_hand_edit_is_reverted(plane, operator):
    before = get(plane, "daemonset", "-n", NS, "percale-node")["metadata"]["uid"]
    started = time.monotonic()
    plane.kubectl("delete", "daemonset", "-n", NS, "percale-node", "--wait=false")
    back = wait_for(lambda: (d := get(plane, "daemonset", "-n", NS, "percale-node"))
                    and d["metadata"]["uid"] != before and d, 30)
    assert back, log_of(plane)
    print(f"DaemonSet recreated {time.monotonic() - started:.2f} s after its deletion")
    plane.kubectl("patch", "daemonset", "-n", NS, "percale-node", "--type=merge",
                  "-p", '{"spec":{"updateStrategy":{"type":"OnDelete","rollingUpdate":null}}}')
    assert wait_for(lambda: get(plane, "daemonset", "-n", NS, "percale-node")["spec"]["updateStrategy"]["type"]
                    == "RollingUpdate", 30), log_of(plane)


def test_an_mtu_change_rolls_the_daemonset(plane, operator):
    template = get(plane, "daemonset", "-n", NS, "percale-node")["spec"]["template"]
    plane.kubectl("patch", "installation", "default", "--type=merge",
                  "-p", '{"spec":{"calicoNetwork":{"mtu":1400}}}')
    assert wait_for(lambda: get(plane, "configmap", "-n", NS, "percale-cni-config")["data"]["mtu"] == "1400")
    rolled = wait_for(lambda: (t := get(plane, "daemonset", "-n", NS, "percale-node")["spec"]["template"])
                      ["metadata"]["annotations"] != template["metadata"]["annotations"] and t)
    assert rolled, log_of(plane)


@pytest.mark.parametrize("pools, field", [
    ([{"cidr": "10.10.0.0/16"}, {"cidr": "10.10.128.0/17"}], "ipPools[1].cidr"),
    ([{"cidr": "10.20.0.0/16", "blockSize": 33}], "ipPools[0].blockSize"),
    ([{"cidr": "10.30.0.0/16", "encapsulation": "IPIP"}], "ipPools[0].encapsulation"),
])
def test_an_invalid_spec_is_degraded_and_changes_nothing(plane, operator, pools, field):
    daemonset = get(plane, "daemonset", "-n", NS, "percale-node")
    saved = get(plane, "installation", "default")["spec"]["calicoNetwork"]["ipPools"]
    plane.kubectl("patch", "installation", "default", "--type=merge",
                  "-p", json.dumps({"spec": {"calicoNetwork": {"ipPools": pools}}}))
    degraded = wait_for(lambda: (c := condition(plane, "Degraded")) and c["status"] == "True" and c)
    assert degraded and field in degraded["message"], (condition(plane, "Degraded"), log_of(plane))
    assert condition(plane, "Ready")["status"] == "False"
    after = get(plane, "daemonset", "-n", NS, "percale-node")
    assert after["metadata"]["generation"] == daemonset["metadata"]["generation"]
    assert get(plane, "ippool", "pool-10-10-0-0-16") is None
    plane.kubectl("patch", "installation", "default", "--type=merge",
                  "-p", json.dumps({"spec": {"calicoNetwork": {"ipPools": saved}}}))
    assert wait_for(lambda: condition(plane, "Degraded")["status"] == "False"), log_of(plane)


def pool_names(plane) -> list[str | None]:
    pools = get(plane, "installation", "default")["spec"]["calicoNetwork"]["ipPools"]
    return [pool.get("name") for pool in pools]


def test_a_pool_already_in_the_cluster_is_adopted_and_one_overlapping_it_refused(plane, operator):
    """tigera names an Installation's pool after the cluster's pool of its CIDR, and takes it as
    its own only if it equals the entry; the operator created a second pool of the same CIDR
    beside it, and one overlapping another pool too."""
    plane.kubectl("create", "-f", "-", input=json.dumps({
        "apiVersion": "percale.io/v1", "kind": "IPPool", "metadata": {"name": "hand-made"},
        "spec": {"cidr": "10.50.0.0/16"}}))
    saved = get(plane, "installation", "default")["spec"]["calicoNetwork"]["ipPools"]
    try:
        plane.kubectl("patch", "installation", "default", "--type=merge", "-p", json.dumps(
            {"spec": {"calicoNetwork": {"ipPools": [*saved, {"cidr": "10.50.0.0/16"}]}}}))
        # The entry takes the pool's name, but its defaults (VXLANCrossSubnet, NAT) are not the
        # pool's: it stays the administrator's, untouched (tigera's "Cannot update an IP pool
        # not owned by the operator").
        degraded = wait_for(lambda: (c := condition(plane, "Degraded"))
                            and c["status"] == "True" and c)
        assert degraded and "ipPools[1]" in degraded["message"] and "not owned" in degraded[
            "message"] and "hand-made" in degraded["message"], (condition(plane, "Degraded"),
                                                                 log_of(plane))
        assert get(plane, "ippool", "hand-made")["spec"].get("natOutgoing") in (None, False)
        # An entry equal to the pool adopts it.
        plane.kubectl("patch", "installation", "default", "--type=merge", "-p", json.dumps(
            {"spec": {"calicoNetwork": {"ipPools": [*saved, {
                "cidr": "10.50.0.0/16", "encapsulation": "None", "natOutgoing": "Disabled"}]}}}))
        assert wait_for(lambda: condition(plane, "Degraded")["status"] == "False"), (
            condition(plane, "Degraded"), log_of(plane))
        # The defaults, names included, are written back into the spec.
        assert pool_names(plane) == [saved[0]["name"], "hand-made"], log_of(plane)
        assert wait_for(lambda: (get(plane, "ippool", "hand-made")["metadata"].get("labels") or {})
                        .get("app.kubernetes.io/managed-by") == "percale-operator"), log_of(plane)
        assert [p["metadata"]["name"] for p in get(plane, "ippools")["items"]
                if p["spec"]["cidr"] == "10.50.0.0/16"] == ["hand-made"]
        plane.kubectl("patch", "installation", "default", "--type=merge", "-p", json.dumps(
            {"spec": {"calicoNetwork": {"ipPools": [*saved, {"cidr": "10.50.128.0/17"}]}}}))
        degraded = wait_for(lambda: (c := condition(plane, "Degraded")) and c["status"] == "True" and c)
        assert degraded and "ipPools[1].cidr" in degraded["message"] and "hand-made" in degraded[
            "message"], (condition(plane, "Degraded"), log_of(plane))
        assert get(plane, "ippool", "pool-10-50-128-0-17") is None
    finally:
        plane.kubectl("patch", "installation", "default", "--type=merge",
                      "-p", json.dumps({"spec": {"calicoNetwork": {"ipPools": saved}}}))
        plane.kubectl("delete", "ippool", "hand-made", check=False)
    assert wait_for(lambda: condition(plane, "Degraded")["status"] == "False"), log_of(plane)


def test_an_unknown_encapsulation_is_refused_by_the_schema(plane, operator):
    done = plane.kubectl(
        "patch", "installation", "default", "--type=merge", "-p",
        '{"spec":{"calicoNetwork":{"ipPools":[{"cidr":"10.40.0.0/16","encapsulation":"GRE"}]}}}',
        check=False)
    assert done.returncode != 0 and "encapsulation" in done.stderr and "GRE" in done.stderr


def deletion_report(plane) -> str:
    """What is left after the Installation's deletion, and why it may be: the Installation's
    finalizers (the operator's, removed once its timers stop) and the owned objects with their
    owners, then the garbage collector's and the operator's logs. One full-suite run failed
    here once, with nothing else to go on."""
    lines = []
    installation = get(plane, "installation", "default")
    if installation is not None:
        meta = installation["metadata"]
        lines.append(f"installation: deletionTimestamp {meta.get('deletionTimestamp')}, "
                     f"finalizers {meta.get('finalizers')}")
    for args in (("daemonset", "-n", NS, "percale-node"),
                 ("deployment", "-n", NS, "percale-controllers"), ("clusterrole", "percale-node")):
        left = get(plane, *args)
        if left is not None:
            lines.append(f"{args[0]} {args[-1]} left, owners {left['metadata'].get('ownerReferences')}")
    manager = (plane.work / "kube-controller-manager.log").read_text(errors="replace")[-3000:]
    return "\n".join([*lines, "-- kube-controller-manager:", manager, "-- operator:", log_of(plane)])


def test_deleting_the_installation_collects_what_it_owned(plane, operator):
    plane.kubectl("delete", "installation", "default", "--wait=false")
    gone = wait_for(lambda: get(plane, "daemonset", "-n", NS, "percale-node") is None
                    and get(plane, "deployment", "-n", NS, "percale-controllers") is None
                    and get(plane, "clusterrole", "percale-node") is None, 60)
    assert gone, deletion_report(plane)
    # The pools stay: addresses may still be in use (tigera leaves them too). So does the
    # operator, in its own namespace.
    assert get(plane, "ippool", "default-ipv4-ippool") is not None
    assert wait_for(lambda: get(plane, "namespace", NS) is None, 60), "percale-system stayed"
    assert get(plane, "deployment", "-n", "percale-operator", "percale-operator") is not None
