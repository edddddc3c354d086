"""Running one piece of async datastore work from synchronous test code, on either real backend.

A test names its datastore with one string, so worker processes can be handed it: an etcd URL
(`http://127.0.0.1:2379`) or a kubeconfig path (the Kubernetes datastore).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

from percale.datastore import Datastore

T = TypeVar("T")


def is_kubernetes(where: str) -> bool:
    return not where.startswith(("http://", "https://", "unix://"))


def open_store(where: str) -> Datastore:
    if is_kubernetes(where):
        from percale.datastore.kubernetes import KubeDatastore

        return KubeDatastore(where)
    from percale.datastore.etcd import EtcdDatastore

    return EtcdDatastore([where])


def store_env(where: str) -> dict[str, str]:
    """The environment that points percalectl, percale-node and percale-controllers there."""
    if is_kubernetes(where):
        return {"PERCALE_DATASTORE_TYPE": "kubernetes", "KUBECONFIG": where}
    return {"ETCD_ENDPOINTS": where}


def with_store(endpoint: str, work: Callable[[Datastore], Awaitable[T]]) -> T:
    """Open the datastore at `endpoint`, run `work` with it, close it, return what `work` returned."""

    async def main() -> T:
        store = open_store(endpoint)
        try:
            return await work(store)
        finally:
            await store.close()

    return asyncio.run(main())


async def put_node(store: Datastore, wanted) -> None:
    """Write the Node `wanted` with its spec, over a Node its agent registered first (an agent
    with no IP set registers what it detects, as calico-node does)."""
    from percale.datastore import AlreadyExists, Key
    try:
        await store.create(wanted)
    except AlreadyExists:
        current = await store.get(Key.of(wanted))
        await store.update(current.value.model_copy(update={"spec": wanted.spec}),
                           revision=current.revision)
