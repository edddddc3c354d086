"""kubernetes-internal-ip (the operator's `kubernetes: NodeInternalIP`) against a real
kube-apiserver: the node's BGP address is its Kubernetes Node's InternalIP, with the prefix of
the host interface that carries it. The host's addresses are given here;
tests/interop/test_kubernetes_node.py runs percale-node itself with the method, in a namespace."""

from __future__ import annotations

import asyncio
import ipaddress
from pathlib import Path

import pytest

from percale.datastore import MemoryDatastore
from percale.datastore.kubernetes import KubeDatastore
from percale.node.registration import (
    FromKubernetesNode,
    HostAddress,
    RegistrationError,
    kubernetes_addresses,
)

pytestmark = pytest.mark.contract

WANTED = (FromKubernetesNode(4), None, None)
HOST = [HostAddress("eth0", ipaddress.ip_interface("192.0.2.10/24")),
        HostAddress("eth1", ipaddress.ip_interface("10.0.0.11/16"))]


def _resolve(store_for, node: str, addresses=WANTED, kubeconfig: str | None = None) -> tuple:
    async def resolve():
        store = store_for()
        try:
            return await kubernetes_addresses(addresses, node, store, kubeconfig, lambda: HOST)
        finally:
            await store.close()

    return asyncio.run(resolve())


def test_the_address_is_the_nodes_internal_ip_on_either_datastore(kube):
    kube.node("here", "10.0.0.11")
    identity = kube.kubeconfig("percale-node:here", groups=("percale:nodes",))
    # The kubernetes datastore asks through its own client, as the node's least-privileged user.
    resolved = _resolve(lambda: KubeDatastore(identity), "here")
    assert [str(a) if a else a for a in resolved] == ["10.0.0.11/16", None, None]
    # On etcd the Kubernetes API is reached through --kubeconfig, as calico-node reaches it.
    resolved = _resolve(MemoryDatastore, "here", kubeconfig=identity)
    assert str(resolved[0]) == "10.0.0.11/16"
    # Nothing to look up: nothing asked of the API (no kubeconfig needed).
    assert _resolve(MemoryDatastore, "here", ("none", None, 65001), "/nonexistent") == ("none", None, 65001)


def test_what_cannot_be_resolved_is_named(kube, tmp_path: Path):
    kube.node("elsewhere", "203.0.113.7")
    with pytest.raises(RegistrationError) as refused:
        _resolve(lambda: KubeDatastore(kube.admin), "elsewhere")
    assert str(refused.value) == ("--ip-autodetection-method: kubernetes-internal-ip: the Kubernetes"
                                  " Node's InternalIP 203.0.113.7 is on none of this host's interfaces")

    with pytest.raises(RegistrationError) as refused:
        _resolve(lambda: KubeDatastore(kube.admin), "ghost", (None, FromKubernetesNode(6), None))
    assert str(refused.value) == ("--ip6-autodetection-method: kubernetes-internal-ip: there is no"
                                  " Kubernetes Node 'ghost'")

    missing = tmp_path / "kubeconfig"
    with pytest.raises(RegistrationError) as refused:
        _resolve(MemoryDatastore, "elsewhere", kubeconfig=str(missing))
    assert str(refused.value) == ("--ip-autodetection-method: kubernetes-internal-ip needs the"
                                  f" Kubernetes API: kubeconfig {missing}: no such file")
