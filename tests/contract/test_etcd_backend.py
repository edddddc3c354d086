"""What only the etcd backend has: Calico's key layout, an unreachable server, TLS."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from percale.datastore import DatastoreError, DatastoreUnavailable, Key
from percale.datastore.etcd import EtcdDatastore
from percale.datastore.etcd_client import TLSFiles
from percale.api import parse
from tests.helpers.pki import CertificateAuthority
from tests.helpers.etcd_server import EtcdServer, free_port

pytestmark = pytest.mark.contract


def etcdctl(endpoint: str, *args: str) -> str:
    return subprocess.run(
        ["etcdctl", "--endpoints", endpoint, *args], env={"ETCDCTL_API": "3"},
        check=True, capture_output=True, text=True,
    ).stdout


async def test_keys_follow_calicos_layout(etcd):
    store = EtcdDatastore([etcd.endpoint])
    docs = [
        {"kind": "IPPool", "metadata": {"name": "pool1"}, "spec": {"cidr": "10.0.0.0/16"}},
        {"kind": "IPAMBlock", "metadata": {"name": "10.0.0.0-26"},
         "spec": {"cidr": "10.0.0.0/26", "allocations": [None] * 64,
                  "unallocated": list(range(64)), "attributes": []}},
        {"kind": "BlockAffinity", "metadata": {"name": "node-1-10.0.0.0-26"},
         "spec": {"state": "confirmed", "node": "node-1", "cidr": "10.0.0.0/26"}},
        {"kind": "IPAMHandle", "metadata": {"name": "k8s-pod-network.c1"},
         "spec": {"handleID": "k8s-pod-network.c1", "block": {"10.0.0.0/26": 1}}},
        {"kind": "IPAMConfig", "metadata": {"name": "default"}, "spec": {}},
        {"kind": "WorkloadEndpoint", "metadata": {"name": "node--1-k8s-web-eth0", "namespace": "shop"},
         "spec": {"node": "node-1", "pod": "web", "endpoint": "eth0", "orchestrator": "k8s"}},
    ]
    for doc in docs:
        await store.create(parse({"apiVersion": "percale.io/v1", **doc}))
    keys = etcdctl(etcd.endpoint, "get", "--prefix", "--keys-only", "/percale/").split()
    assert sorted(keys) == sorted([
        "/percale/resources/v1/percale.io/ippools/pool1",
        "/percale/ipam/v2/assignment/ipv4/block/10.0.0.0-26",
        "/percale/ipam/v2/host/node-1/ipv4/block/10.0.0.0-26",
        "/percale/ipam/v2/handle/k8s-pod-network.c1",
        "/percale/ipam/v2/config",
        "/percale/resources/v1/percale.io/workloadendpoints/shop/node--1-k8s-web-eth0",
    ])
    # Listing finds them again under the same keys.
    affinities = await store.list("BlockAffinity")
    assert [kv.key for kv in affinities.items] == [Key("BlockAffinity", "node-1-10.0.0.0-26")]
    assert (await store.get(Key("IPAMConfig", "default"))).value.spec.auto_allocate_blocks is True
    await store.close()


async def test_unreachable_etcd_raises_datastore_unavailable_quickly():
    store = EtcdDatastore([f"http://127.0.0.1:{free_port()}"], timeout=2.0)
    started = time.monotonic()
    with pytest.raises(DatastoreUnavailable) as err:
        await store.get(Key("IPPool", "p"))
    assert time.monotonic() - started < 5
    assert "cannot reach etcd" in str(err.value)
    await store.close()


async def test_second_endpoint_is_used_when_the_first_is_down(etcd):
    dead = f"http://127.0.0.1:{free_port()}"
    store = EtcdDatastore([dead, etcd.endpoint], timeout=2.0)
    await store.create(parse({"apiVersion": "percale.io/v1", "kind": "IPPool",
                              "metadata": {"name": "p"}, "spec": {"cidr": "10.0.0.0/16"}}))
    assert (await store.get(Key("IPPool", "p"))).value.spec.cidr == "10.0.0.0/16"
    await store.close()


def _certificates(directory: Path) -> tuple[str, str, str, str, str]:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, all signed by the CA."""
    ca = CertificateAuthority(directory)
    server = ca.issue("server", "server", server=True)
    client = ca.issue("client", "client")
    return ca.cert, server.cert, server.key, client.cert, client.key


async def test_tls_with_client_certificates(tmp_path):
    ca, server_cert, server_key, client_cert, client_key = _certificates(tmp_path)
    server = EtcdServer(tls=(ca, server_cert, server_key)).start()
    try:
        store = EtcdDatastore([server.endpoint], tls=TLSFiles(ca, client_cert, client_key))
        await store.create(parse({"apiVersion": "percale.io/v1", "kind": "IPPool",
                                  "metadata": {"name": "p"}, "spec": {"cidr": "10.0.0.0/16"}}))
        assert (await store.get(Key("IPPool", "p"))).value.spec.cidr == "10.0.0.0/16"
        await store.close()

        # Without a client certificate the server refuses us.
        anonymous = EtcdDatastore([server.endpoint], tls=TLSFiles(ca), timeout=2.0)
        with pytest.raises(DatastoreError):
            await anonymous.get(Key("IPPool", "p"))
        await anonymous.close()
    finally:
        server.stop()
