"""Running one piece of async datastore work from synchronous test code."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

from percale.datastore.etcd import EtcdDatastore

T = TypeVar("T")


def with_store(endpoint: str, work: Callable[[EtcdDatastore], Awaitable[T]]) -> T:
    """Open the etcd at `endpoint`, run `work` with it, close it, return what `work` returned."""

    async def main() -> T:
        store = EtcdDatastore([endpoint])
        try:
            return await work(store)
        finally:
            await store.close()

    return asyncio.run(main())
