"""Fixtures the unit tests of one area share."""

from __future__ import annotations

import pytest

from percale.datastore import MemoryDatastore
from percale.ipam.allocator import IPAM
from percale.node.cni_handlers import CNIHandlers
from tests.helpers.ipam_world import add_pool


@pytest.fixture
async def cni_agent():
    """The agent's CNI handlers over a memory datastore with pool 10.244.0.0/16, as percale-node
    answers the shim; (store, handlers)."""
    store = MemoryDatastore()
    await add_pool(store, "pods", "10.244.0.0/16")
    handlers = CNIHandlers(store, IPAM(store), "node1", 1500)
    yield store, handlers
    handlers.close()
