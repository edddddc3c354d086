"""The allocator as a state machine (hypothesis): random allocations and releases by several
nodes from a small pool, checked after every step against a model and IPAM's invariants.

Two IPAM objects share the store, as two agents would, and take turns at random; the second
variant gives each its own watch-fed view (CachedDatastore, as percale-node reads), which catches
up only while a step runs, so each works from stale blocks and must still never hand an address
out twice. Both run on a store with multi-key transactions, as etcd (a handle and its block
written together), and on one without, as Kubernetes (the handle, then the block)."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from percale.datastore import MemoryDatastore
from percale.datastore.cache import Cache, CachedDatastore
from percale.ipam.allocator import IPAM
from percale.ipam.errors import BlockLimitReached, PoolsExhausted, StrictAffinityExhausted
from tests.helpers.ipam_world import add_pool, assert_consistent

pytestmark = pytest.mark.unit

NODES = ["n1", "n2", "n3"]


class Allocator(RuleBasedStateMachine):
    MULTI_KEY = True

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.store = MemoryDatastore(multi_key=self.MULTI_KEY)
        self.following: list[asyncio.Task] = []
        self.agents = [self.agent() for _ in range(2)]
        self.ipam = self.agents[0]
        self.owned: dict[str, set[str]] = {}  # handle -> addresses, the model
        self.counter = 0

    def agent(self) -> IPAM:
        return IPAM(self.store)

    def run(self, coro):
        return self.loop.run_until_complete(coro)

    @initialize(strict=st.booleans())
    def pools(self, strict):
        # 32 addresses in blocks of 4: blocks run out fast, so claiming, borrowing and
        # exhaustion all happen.
        self.run(add_pool(self.store, "v4", "10.0.0.0/27", blockSize=30))
        self.run(add_pool(self.store, "v6", "fd00::/123", blockSize=126))
        if strict:
            self.run(self.ipam.set_config(strict_affinity=True))

    @rule(node=st.sampled_from(NODES), num4=st.integers(0, 6), num6=st.integers(0, 3),
          agent=st.integers(0, 1))
    def allocate(self, node, num4, num6, agent):
        self.ipam = self.agents[agent]
        if num4 == num6 == 0:
            return
        self.counter += 1
        handle = f"h{self.counter}"
        try:
            got = self.run(self.ipam.auto_assign(node, handle_id=handle, num4=num4, num6=num6))
        except (PoolsExhausted, StrictAffinityExhausted, BlockLimitReached):
            return  # all-or-nothing: the invariant checks that nothing of it remains
        addresses = {str(i.ip) for i in got.ipv4 + got.ipv6}
        assert len(got.ipv4) == num4 and len(got.ipv6) == num6
        for others in self.owned.values():
            assert not addresses & others, "an address was handed out twice"
        self.owned[handle] = addresses

    @precondition(lambda self: self.owned)
    @rule(data=st.data(), agent=st.integers(0, 1))
    def release_handle(self, data, agent):
        self.ipam = self.agents[agent]
        handle = data.draw(st.sampled_from(sorted(self.owned)))
        released = self.run(self.ipam.release_by_handle(handle))
        assert set(released) == self.owned.pop(handle)
        assert self.run(self.ipam.release_by_handle(handle)) == []

    @precondition(lambda self: self.owned)
    @rule(data=st.data(), agent=st.integers(0, 1))
    def release_one_address_twice(self, data, agent):
        self.ipam = self.agents[agent]
        handle = data.draw(st.sampled_from(sorted(self.owned)))
        address = data.draw(st.sampled_from(sorted(self.owned[handle])))
        first = self.run(self.ipam.release_ips([address]))
        second = self.run(self.ipam.release_ips([address]))
        assert first.released == [address] and second.unallocated == [address]
        self.owned[handle].discard(address)
        if not self.owned[handle]:
            del self.owned[handle]

    @rule(node=st.sampled_from(NODES))
    def node_leaves(self, node):
        self.run(self.ipam.release_host_affinities(node))

    @invariant()
    def store_matches_model(self):
        held = self.run(assert_consistent(self.store))
        expected = {ip: h for h, ips in self.owned.items() for ip in ips}
        assert held == expected

    def teardown(self):
        for task in self.following:
            task.cancel()
            self.loop.run_until_complete(asyncio.wait([task]))
        self.loop.close()


class CachingAllocator(Allocator):
    def agent(self) -> IPAM:
        cache = Cache(self.store)  # every node's affinities: one agent allocates for several
        self.following.append(self.loop.create_task(cache.run()))
        self.run(cache.wait_synced())
        return IPAM(CachedDatastore(self.store, cache), authority=self.store)


class TwoStepAllocator(Allocator):
    MULTI_KEY = False


class TwoStepCachingAllocator(CachingAllocator):
    MULTI_KEY = False


SETTINGS = settings(max_examples=60, stateful_step_count=25, deadline=None)
for machine in (Allocator, CachingAllocator, TwoStepAllocator, TwoStepCachingAllocator):
    machine.TestCase.settings = SETTINGS
test_allocator_state_machine = Allocator.TestCase
test_caching_allocators_state_machine = CachingAllocator.TestCase
test_two_step_allocator_state_machine = TwoStepAllocator.TestCase
test_two_step_caching_allocators_state_machine = TwoStepCachingAllocator.TestCase
