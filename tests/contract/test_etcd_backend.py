"""What only the etcd backend has: Calico's key layout, an unreachable server, TLS, and what an
agent's view over it never decodes."""

from __future__ import annotations

import asyncio
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from percale.datastore import DatastoreError, DatastoreUnavailable, Key
from percale.datastore import etcd as etcd_module
from percale.datastore.cache import Cache, CachedDatastore
from percale.datastore.etcd import EtcdDatastore
from percale.ipam.allocator import IPAM
from tests.helpers.ipam_world import add_pool
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


async def test_an_agent_decodes_neither_its_own_blocks_nor_blocks_it_does_not_read(etcd, monkeypatch):
    """etcd hands values out undecoded (KVPair.later), and a view keeps the block its process
    wrote when the watch brings that revision back (Cache.known): an agent allocating from its
    block decodes no block at all, though its view follows another node's block changing too."""
    store, elsewhere = EtcdDatastore([etcd.endpoint]), EtcdDatastore([etcd.endpoint])
    await add_pool(store, "p", "10.0.0.0/16")
    cache = Cache(store, node="n1")
    following = asyncio.create_task(cache.run())
    try:
        await cache.wait_synced()
        agent = IPAM(CachedDatastore(store, cache), authority=store)
        other = IPAM(elsewhere)  # no view: it reads its block from etcd each time
        await agent.auto_assign("n1", handle_id="warm-up", num4=1)
        await other.auto_assign("n2", handle_id="warm-up-2", num4=1)
        decoded: list[str] = []
        real = etcd_module.decode
        monkeypatch.setattr(etcd_module, "decode",
                            lambda kind, data, rev: decoded.append(kind) or real(kind, data, rev))
        for i in range(5):
            await agent.auto_assign("n1", handle_id=f"pod-{i}", num4=1)
            await other.auto_assign("n2", handle_id=f"far-{i}", num4=1)
        # The other node read its block from etcd five times; each read decoded it once.
        assert decoded.count("IPAMBlock") == 5
        stored = {kv.key: kv.revision for kv in (await elsewhere.list("IPAMBlock")).items}
        decoded.clear()  # that list decoded nothing, but be sure
        for _ in range(100):  # until the view has every write of both nodes
            if {k: kv.revision for k, kv in cache.items("IPAMBlock").items()} == stored:
                break
            await asyncio.sleep(0.02)
        else:
            raise AssertionError("the view did not catch up")
        assert len(stored) == 2
        # Nothing was decoded for the agent or its view: not its own block, though it read it
        # back for every allocation, nor the other node's, which it was told of five times.
        assert "IPAMBlock" not in decoded
    finally:
        following.cancel()
        await asyncio.gather(following, return_exceptions=True)
        await store.close()
        await elsewhere.close()


def _two_members(tmp_path: Path) -> tuple[list[str], list[subprocess.Popen]]:
    """A cluster of two etcd members, both up and agreeing on a leader: their client URLs and
    processes."""
    names = ("a", "b")
    peers = {n: f"http://127.0.0.1:{free_port()}" for n in names}
    clients = {n: f"http://127.0.0.1:{free_port()}" for n in names}
    cluster = ",".join(f"{n}={peers[n]}" for n in names)
    members = [subprocess.Popen(
        ["etcd", "--name", n, "--data-dir", str(tmp_path / n), "--listen-client-urls", clients[n],
         "--advertise-client-urls", clients[n], "--listen-peer-urls", peers[n],
         "--initial-advertise-peer-urls", peers[n], "--initial-cluster", cluster,
         "--log-level", "error"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for n in names]
    deadline = time.monotonic() + 20
    for url in clients.values():
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=1) as answer:
                    if b"true" in answer.read():
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "the two members never agreed on a leader"
            time.sleep(0.1)
    return list(clients.values()), members


async def test_a_watch_on_a_member_that_lost_its_leader_fails_and_is_not_left_hanging(tmp_path):
    """A member cut off from the others stays up and keeps a watch open that delivers nothing:
    the view went stale for good. Watches ask for a leader (hasleader, as clientv3's
    WithRequireLeader), so one on such a member fails, and the view resumes elsewhere. Here
    the other member of two is gone, so the one left has no quorum and no leader."""
    from percale.datastore.etcd_client import EtcdClient

    endpoints, members = _two_members(tmp_path)
    client = EtcdClient(endpoints[:1], timeout=2.0)
    try:
        members[1].kill()
        members[1].wait()

        async def first_event():
            async for _ in client.watch(b"/percale/", after=0):
                return

        with pytest.raises(DatastoreUnavailable, match="leader"):
            await asyncio.wait_for(first_event(), 15)
    finally:
        await client.close()
        for member in members:
            member.kill()
            member.wait()


async def test_a_revision_etcd_never_gave_is_a_conflict_not_a_write(etcd):
    """etcd sees a missing key's mod_revision as 0: update at revision "0" created the key, and
    delete at "0" died of an IndexError; a revision that is no number died of a ValueError.
    As the memory store: NotFound for a missing key, Conflict for one that exists."""
    from percale.datastore import Conflict, NotFound
    from percale.datastore import TransactionConflict
    from percale.datastore.contract import Delete, Update

    store = EtcdDatastore([etcd.endpoint])
    pool = parse({"apiVersion": "percale.io/v1", "kind": "IPPool", "metadata": {"name": "p0"}, "spec": {"cidr": "10.9.0.0/16"}})
    try:
        for revision in ("0", "abc"):
            with pytest.raises(NotFound):
                await store.update(pool, revision=revision)
            with pytest.raises(NotFound):
                await store.delete(Key("IPPool", "p0"), revision=revision)
            with pytest.raises(TransactionConflict):
                await store.write_together([Update(pool, revision)])
            with pytest.raises(TransactionConflict):
                await store.write_together([Delete(Key("IPPool", "p0"), revision)])
        await store.create(pool)
        for revision in ("0", "abc"):
            with pytest.raises(Conflict):
                await store.update(pool, revision=revision)
            with pytest.raises(Conflict):
                await store.delete(Key("IPPool", "p0"), revision=revision)
    finally:
        await store.close()


async def test_keys_at_a_compacted_revision_is_revision_compacted(etcd):
    from percale.datastore import RevisionCompacted

    store = EtcdDatastore([etcd.endpoint])
    try:
        first = await store.create(parse({"apiVersion": "percale.io/v1", "kind": "IPPool", "metadata": {"name": "k1"},
                                          "spec": {"cidr": "10.8.0.0/16"}}))
        later = await store.create(parse({"apiVersion": "percale.io/v1", "kind": "IPPool", "metadata": {"name": "k2"},
                                          "spec": {"cidr": "10.7.0.0/16"}}))
        await store.client.compact(int(later.revision))
        with pytest.raises(RevisionCompacted):
            await store.keys_at("IPPool", first.revision)
    finally:
        await store.close()
