"""A CNI test node per module: its own network namespace, percale-node inside it, and an IP pool."""

from __future__ import annotations

import subprocess

import pytest

from tests.helpers.cni_node import CNINode
from tests.helpers.ipam_world import add_pool
from tests.helpers.store import with_store

POOL = "10.244.0.0/16"


def reset_store(endpoint: str, pools: dict[str, dict]) -> None:
    subprocess.run(["etcdctl", "--endpoints", endpoint, "del", "--prefix", "/percale/"],
                   env={"ETCDCTL_API": "3", "PATH": "/usr/bin:/bin"}, check=True, capture_output=True)

    async def create(store) -> None:
        for name, spec in pools.items():
            await add_pool(store, name, **spec)

    with_store(endpoint, create)


@pytest.fixture(scope="module")
def node(etcd_server):
    reset_store(etcd_server.endpoint, {"pods": {"cidr": POOL}})
    cni = CNINode(etcd_server.unix_endpoint).start()
    yield cni
    cni.stop()
