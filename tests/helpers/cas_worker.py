"""A compare-and-swap writer run in its own process by the contract tests."""

from __future__ import annotations

import asyncio
import time

from percale.datastore import Conflict, Key
from tests.helpers.store import open_store


async def add_one(store, key: Key, slot: str) -> int:
    """Increment spec.block[slot] of an IPAMHandle by one, retrying lost races. Returns retries."""
    retries = 0
    while True:
        current = await store.get(key)
        handle = current.value
        counts = dict(handle.spec.block)
        counts[slot] = counts.get(slot, 0) + 1
        updated = handle.model_copy(update={"spec": handle.spec.model_copy(update={"block": counts})})
        # Yield between read and write, as any real caller does, so that concurrent writers
        # interleave here even on the in-process memory backend.
        await asyncio.sleep(0)
        try:
            await store.update(updated, revision=current.revision)
            return retries
        except Conflict:
            retries += 1


def run(endpoint: str, key: Key, slot: str, times: int, start_at: float) -> int:
    """Wait until `start_at` (so every process writes at once), then add `times` times."""

    async def main() -> int:
        await asyncio.sleep(max(0.0, start_at - time.time()))
        store = open_store(endpoint)
        try:
            return sum([await add_one(store, key, slot) for _ in range(times)])
        finally:
            await store.close()

    return asyncio.run(main())
