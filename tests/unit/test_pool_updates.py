"""What an IPPool update is held to against what is stored, as Calico's clientv3 holds it
(ippool.go validateAndSetDefaults with `old` set): overlap is judged for new pools only, and a
LoadBalancer pool stays one."""

from __future__ import annotations

from typing import Any

import pytest

from percale.api import IPPool, parse
from percale.api.consistency import check_batch

pytestmark = pytest.mark.unit


def pool(name: str, cidr: str, **spec: Any) -> IPPool:
    found = parse({"apiVersion": "percale.io/v1", "kind": "IPPool", "metadata": {"name": name},
                   "spec": {"cidr": cidr, **spec}})
    assert isinstance(found, IPPool)
    return found


def problems(batch: list[IPPool], stored: list[IPPool]) -> dict[int, dict[str, str]]:
    """What percalectl's preflight finds writing `batch` where `stored` is every stored pool."""
    by_key = {("IPPool", None, p.metadata.name): p for p in stored}
    named = {p.metadata.name for p in batch}
    found = check_batch(batch, {k: v for k, v in by_key.items() if k[2] in named}, stored,
                        [f"document {i}" for i in range(1, len(batch) + 1)])
    return {i: {p.field: p.reason for p in listed} for i, listed in found.items() if listed}


def test_a_stored_pool_overlapping_another_can_be_updated():
    """Two stored pools that overlap (kubectl on the Kubernetes datastore, etcdctl, a
    migration): refusing every update of either left neither one able to be disabled."""
    wide, narrow = pool("wide", "10.120.0.0/16"), pool("narrow", "10.120.0.0/24")
    disabled = pool("narrow", "10.120.0.0/24", disabled=True)
    assert problems([disabled], [wide, narrow]) == {}
    assert problems([pool("wide", "10.120.0.0/16", natOutgoing=True)], [wide, narrow]) == {}


def test_a_new_pool_is_still_held_to_every_other():
    wide = pool("wide", "10.120.0.0/16")
    found = problems([pool("new", "10.120.5.0/24")], [wide])
    assert found == {0: {"spec.cidr": "10.120.5.0/24 overlaps IPPool 'wide' (10.120.0.0/16)"}}
    # Also against a stored pool updated in the same batch.
    found = problems([pool("wide", "10.120.0.0/16", disabled=True), pool("new", "10.120.5.0/24")],
                     [wide])
    assert list(found) == [1] and "overlaps IPPool 'wide'" in found[1]["spec.cidr"]


@pytest.mark.parametrize("uses", [["Workload"], ["Tunnel"], ["Workload", "Tunnel"]])
def test_a_load_balancer_pool_cannot_become_a_workload_or_tunnel_pool(uses):
    stored = pool("lb", "10.150.0.0/16", allowedUses=["LoadBalancer"])
    found = problems([pool("lb", "10.150.0.0/16", allowedUses=uses)], [stored])
    assert found == {0: {"spec.allowedUses": "IPPool allowed use cannot be changed from "
                                             "LoadBalancer to Workload or Tunnel"}}


def test_a_load_balancer_pool_may_change_otherwise_and_a_workload_pool_may_become_one():
    stored = pool("lb", "10.150.0.0/16", allowedUses=["LoadBalancer"])
    assert problems([pool("lb", "10.150.0.0/16", allowedUses=["LoadBalancer"], disabled=True)],
                    [stored]) == {}
    # Calico refuses the change one way only.
    workload = pool("w", "10.151.0.0/16")
    assert problems([pool("w", "10.151.0.0/16", allowedUses=["LoadBalancer"])], [workload]) == {}
