"""What only the memory backend has: a bounded watch history that compacts itself."""

from __future__ import annotations

import pytest

from percale.datastore import MemoryDatastore, RevisionCompacted
from percale.api import parse

pytestmark = pytest.mark.unit


async def test_history_beyond_its_limit_is_compacted():
    store = MemoryDatastore(history_limit=3)
    start = (await store.list("IPPool")).revision
    for i in range(5):
        await store.create(parse({"apiVersion": "percale.io/v1", "kind": "IPPool",
                                  "metadata": {"name": f"p{i}"}, "spec": {"cidr": f"10.{i}.0.0/16"}}))
    with pytest.raises(RevisionCompacted) as err:
        async for _ in store.watch("IPPool", revision=start):
            pass
    assert err.value.requested == start
