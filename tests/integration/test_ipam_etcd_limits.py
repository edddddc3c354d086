"""IPAM on a real etcd where one allocation or release is larger than one etcd transaction
holds (etcd refuses more than 128 operations): a release freeing addresses of many handles in one
block writes the block and its handles in two steps, and loses nothing."""

from __future__ import annotations

import pytest

from percale.datastore import Key, NotFound
from percale.datastore.contract import writes_together
from percale.datastore.etcd import EtcdDatastore
from percale.ipam import blocks
from percale.ipam.allocator import IPAM, MAX_HANDLES_PER_TXN
from tests.helpers.ipam_world import add_pool, assert_consistent

pytestmark = pytest.mark.integration


async def test_a_release_touching_more_handles_than_a_transaction_holds(etcd):
    store = EtcdDatastore([etcd.endpoint])
    try:
        assert writes_together(store) is not None  # etcd: the one-transaction path is there
        await add_pool(store, "wide", "10.60.0.0/16", blockSize=24)
        ipam = IPAM(store)
        pods = MAX_HANDLES_PER_TXN + 50  # one handle each, all in the node's one /24 block
        addresses = []
        for i in range(pods):
            got = await ipam.auto_assign("node-1", handle_id=f"k8s-pod-network.pod-{i}", num4=1)
            addresses.append(str(got.ipv4[0].ip))
        [block] = (await store.list("IPAMBlock")).items
        assert block.value.spec.cidr.endswith("/24")

        result = await ipam.release_ips(addresses)

        assert sorted(result.released) == sorted(addresses)
        spec = (await store.get(block.key)).value.spec
        assert blocks.free_count(spec) == 256  # the block stays: its pool still serves it
        for i in range(pods):
            with pytest.raises(NotFound):
                await store.get(Key("IPAMHandle", f"k8s-pod-network.pod-{i}"))
        assert await assert_consistent(store) == {}
    finally:
        await store.close()
