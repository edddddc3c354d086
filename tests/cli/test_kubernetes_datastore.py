"""percalectl and kubectl on the Kubernetes datastore, against a real kube-apiserver: one YAML
file works with both, they show the same pools, bad input is refused by percalectl with the field
named, and an immutable field is refused by the apiserver itself (CEL)."""

from __future__ import annotations

import pytest

from percale.datastore import DatastoreError, Key
from percale.ipam.allocator import IPAM
from tests.cli.conftest import CLI
from tests.helpers.store import with_store

POOL = """apiVersion: percale.io/v1
kind: IPPool
metadata:
  name: {name}
spec:
  cidr: {cidr}
"""


@pytest.fixture
def kcli(kube) -> CLI:
    """percalectl pointed at the apiserver (PERCALE_DATASTORE_TYPE=kubernetes, KUBECONFIG)."""
    return CLI(kube.admin)


def test_kubectl_and_percalectl_read_the_same_pools(kube, kcli, examples):
    kube.kubectl("apply", "-f", str(examples / "ippools.yaml"))
    wide = kcli("get", "ippools", "-o", "wide")
    assert wide.code == 0, wide.err
    rows = {line.split()[0]: line.split() for line in wide.out.splitlines()[1:] if line}
    assert rows["default-ipv4-ippool"][1:3] == ["10.244.0.0/16", "true"]
    assert "CrossSubnet" in rows["default-ipv4-ippool"]
    assert rows["default-ipv6-ippool"][1] == "fd00:10:244::/48"

    table = kube.kubectl("get", "ippools").stdout.splitlines()
    assert table[0].split() == ["NAME", "CIDR", "VXLAN", "NAT", "BLOCKSIZE", "AGE"]
    v4 = next(line.split() for line in table if line.startswith("default-ipv4-ippool"))
    assert v4[1:5] == ["10.244.0.0/16", "CrossSubnet", "true", "26"]

    # And the other way round: what percalectl writes, kubectl reads.
    assert kcli("apply", "-f", "-", stdin=POOL.format(name="extra", cidr="10.50.0.0/16")).code == 0
    assert kube.get_json("ippool", "extra")["spec"]["cidr"] == "10.50.0.0/16"


def test_percalectl_refuses_bad_pools_naming_the_field(kube, kcli):
    assert kcli("apply", "-f", "-", stdin=POOL.format(name="a", cidr="10.60.0.0/16")).code == 0
    overlapping = kcli("apply", "-f", "-", stdin=POOL.format(name="b", cidr="10.60.128.0/17"))
    assert overlapping.code == 1 and "spec.cidr" in overlapping.err and "overlaps" in overlapping.err
    malformed = kcli("apply", "-f", "-", stdin=POOL.format(name="c", cidr="10.60.0.0/33"))
    assert malformed.code == 1 and "spec.cidr" in malformed.err
    assert [p["metadata"]["name"] for p in kube.get_json("ippools")["items"]] == ["a"]


def test_the_apiserver_refuses_to_change_a_pools_cidr(kube, kcli):
    assert kcli("apply", "-f", "-", stdin=POOL.format(name="a", cidr="10.70.0.0/16")).code == 0
    changed = kube.kubectl("apply", "-f", "-", input=POOL.format(name="a", cidr="10.71.0.0/16"),
                           check=False)
    assert changed.returncode != 0 and "cidr cannot be changed" in changed.stderr
    # percalectl says so first, with the field named; a program that writes through the
    # datastore directly hears the apiserver's verdict.
    through_percalectl = kcli("apply", "-f", "-", stdin=POOL.format(name="a", cidr="10.71.0.0/16"))
    assert through_percalectl.code == 1 and "spec.cidr" in through_percalectl.err

    async def overwrite(store):
        current = await store.get(Key("IPPool", "a"))
        changed = current.value.model_copy(deep=True)
        changed.spec.cidr = "10.71.0.0/16"
        await store.update(changed, revision=current.revision)

    with pytest.raises(DatastoreError, match="cidr cannot be changed"):
        with_store(kube.admin, overwrite)
    assert kube.get_json("ippool", "a")["spec"]["cidr"] == "10.70.0.0/16"


def test_ipam_blocks_show_in_kubectl_and_percalectl(kube, kcli):
    # One block's worth of pool, so the block is known.
    assert kcli("apply", "-f", "-", stdin=POOL.format(name="pods", cidr="10.80.0.0/26")).code == 0

    async def allocate(store):
        ipam = IPAM(store)
        return [await ipam.auto_assign("node-1", handle_id=f"k8s-pod-network.c{i}", num4=1)
                for i in range(3)]

    given = [str(a.ipv4[0].ip) for a in with_store(kube.admin, allocate)]
    blocks = kube.kubectl("get", "ipamblocks").stdout.splitlines()
    assert blocks[0].split()[:3] == ["NAME", "CIDR", "AFFINITY"]
    assert blocks[1].split()[:3] == ["10-80-0-0-26", "10.80.0.0/26", "host:node-1"]
    shown = kcli("ipam", "show", "--show-blocks")
    assert shown.code == 0 and "10.80.0.0/26" in shown.out
    assert kcli("ipam", "check").code == 0
    released = kcli("ipam", "release", "--ip", given[0])
    assert released.code == 0, released.err
    assert len(kube.get_json("ipamhandles")["items"]) == 2


def test_a_log_severity_in_any_case_is_taken_by_kubectl_and_read_as_calico_spells_it(kube, kcli):
    """Calico's CRD matches logSeverityScreen without regard to case; so does percale's, and
    percale reads it in Calico's spelling. A severity that is none of them is still refused."""
    config = ("apiVersion: percale.io/v1\nkind: BGPConfiguration\nmetadata:\n  name: node.n1\n"
              "spec:\n  logSeverityScreen: {}\n")
    kube.kubectl("apply", "-f", "-", input=config.format("debug"))
    shown = kcli("get", "bgpconfiguration", "node.n1", "-o", "yaml")
    assert shown.code == 0, shown.err
    assert "logSeverityScreen: Debug" in shown.out
    refused = kube.kubectl("apply", "-f", "-", input=config.format("chatty"), check=False)
    assert refused.returncode != 0 and "logSeverityScreen" in refused.stderr
