"""The Installation's pools against the cluster's (installation/model.py defaults,
installation/pools.py plan): pure, no apiserver."""

from __future__ import annotations

import pytest

from percale.installation import model, pools, render
from percale.installation.model import CalicoNetworkSpec, InstallationSpec, IPPoolEntry


def spec_with(*entries: IPPoolEntry | dict, stored=None) -> InstallationSpec:
    listed = [e if isinstance(e, IPPoolEntry) else IPPoolEntry.model_validate(e) for e in entries]
    return model.with_defaults(
        InstallationSpec(calico_network=CalicoNetworkSpec(ip_pools=listed)), stored or {})


def stored_of(spec: InstallationSpec, *, owned: bool = True, **changes) -> dict:
    """A pool as the apiserver returns it for the spec's first entry, with spec changes."""
    document = render.pools(spec)[0]
    document["metadata"].update(resourceVersion="7", uid="u-1")
    if owned:
        document["metadata"]["labels"] = {pools.MANAGED_BY_LABEL: pools.MANAGED_BY}
    document["spec"].update(changes)
    return document


def test_no_pool_list_in_a_cluster_with_pools_means_none():
    """tigera's fillDefaults: existing pools are managed out of band; 192.168.0.0/16 was added."""
    effective = model.with_defaults(InstallationSpec(), {"cluster-pool": "10.244.0.0/16"})
    assert effective.calico_network.ip_pools == []
    default = model.with_defaults(InstallationSpec())
    assert default.calico_network.ip_pools[0].cidr == "192.168.0.0/16"


def test_kubeadm_pod_subnets_make_the_default_pools_of_an_empty_cluster():
    config = {"ClusterConfiguration": "networking:\n  dnsDomain: cluster.local\n"
                                      "  podSubnet: 10.245.0.0/16,fd00:245::/56\n"}
    cidrs = model.kubeadm_pod_cidrs(config)
    assert cidrs == ["10.245.0.0/16", "fd00:245::/56"]
    effective = model.with_defaults(InstallationSpec(), {}, cidrs)
    assert [(p.name, p.cidr, p.block_size) for p in effective.calico_network.ip_pools] == [
        ("default-ipv4-ippool", "10.245.0.0/16", 26), ("default-ipv6-ippool", "fd00:245::/56", 122)]
    # Pools already in the cluster, or listed in the Installation, win over kubeadm's.
    assert model.with_defaults(InstallationSpec(), {"p": "10.1.0.0/16"}, cidrs) \
        .calico_network.ip_pools == []
    assert spec_with({"cidr": "10.9.0.0/16"}).calico_network.ip_pools[0].cidr == "10.9.0.0/16"


def test_a_second_kubeadm_cidr_of_a_family_is_named_from_its_cidr():
    effective = model.with_defaults(InstallationSpec(), {}, ["10.1.0.0/16", "10.2.0.0/16"])
    assert [p.name for p in effective.calico_network.ip_pools] == [
        "default-ipv4-ippool", "pool-10-2-0-0-16"]


@pytest.mark.parametrize("data", [{"ClusterConfiguration": "networking:\n  serviceSubnet: x\n"},
                                  {"ClusterConfiguration": "  podSubnet: 10.0.0.0/33\n"}])
def test_a_kubeadm_config_without_a_readable_pod_subnet_is_an_error(data):
    with pytest.raises(ValueError, match="podSubnet"):
        model.kubeadm_pod_cidrs(data)


def test_a_missing_pool_is_created_with_the_operators_label():
    plan = pools.plan(spec_with({"cidr": "10.1.0.0/16"}), [])
    assert [p["metadata"] for p in plan.create] == [{
        "name": "default-ipv4-ippool",
        "labels": {"app.kubernetes.io/managed-by": "percale-operator"}}]
    assert not (plan.update or plan.retire or plan.problems)


def test_an_edited_entry_updates_the_operators_pool_at_the_revision_read():
    before = spec_with({"cidr": "10.1.0.0/16"})
    after = spec_with({"cidr": "10.1.0.0/16", "natOutgoing": "Disabled",
                       "disableNewAllocations": True, "encapsulation": "VXLAN",
                       "nodeSelector": "zone == 'a'"})
    plan = pools.plan(after, [stored_of(before)])
    [updated] = plan.update
    assert updated["metadata"]["resourceVersion"] == "7"
    fields = ("natOutgoing", "disabled", "vxlanMode", "nodeSelector")
    assert {k: updated["spec"][k] for k in fields} == {
        "natOutgoing": False, "disabled": True, "vxlanMode": "Always",
        "nodeSelector": "zone == 'a'"}
    assert not (plan.create or plan.problems)
    assert pools.plan(before, [stored_of(before)]).update == []  # nothing to do when equal


def test_a_block_size_change_is_refused_naming_the_field():
    before = spec_with({"cidr": "10.1.0.0/16"})
    plan = pools.plan(spec_with({"cidr": "10.1.0.0/16", "blockSize": 24}), [stored_of(before)])
    [problem] = plan.problems
    assert problem.field == "spec.calicoNetwork.ipPools[0].blockSize" and "26" in problem.reason
    assert plan.update == []


def test_a_pool_not_owned_by_the_operator_is_adopted_only_when_equal():
    spec = spec_with({"cidr": "10.1.0.0/16"})
    adopted = pools.plan(spec, [stored_of(spec, owned=False)])
    assert adopted.update[0]["metadata"]["labels"] == {pools.MANAGED_BY_LABEL: pools.MANAGED_BY}
    refused = pools.plan(spec, [stored_of(spec, owned=False, natOutgoing=False)])
    [problem] = refused.problems
    assert problem.field == "spec.calicoNetwork.ipPools[0]"
    assert "not owned by the operator" in problem.reason and "natOutgoing" in problem.reason


def test_only_the_operators_pools_are_retired_when_their_entry_goes():
    first = spec_with({"cidr": "10.1.0.0/16", "name": "first"})
    other = stored_of(spec_with({"cidr": "10.2.0.0/16", "name": "hand-made"}), owned=False)
    plan = pools.plan(spec_with(), [stored_of(first), other])
    assert [p["metadata"]["name"] for p in plan.retire] == ["first"]
    assert pools.disabled(plan.retire[0])["spec"]["disabled"] is True


def test_addresses_in_use_count_the_blocks_inside_the_pool():
    def block(cidr, allocations, deleted=False):
        return {"spec": {"cidr": cidr, "allocations": allocations, "deleted": deleted}}

    blocks = [block("10.1.0.0/26", [0, None, 1]), block("10.1.0.64/26", [None]),
              block("10.2.0.0/26", [0]), block("10.1.1.0/26", [0], deleted=True),
              block("fd00::/122", [0])]
    assert pools.addresses_in_use("10.1.0.0/16", blocks) == 2
    assert pools.addresses_in_use("10.3.0.0/16", blocks) == 0
