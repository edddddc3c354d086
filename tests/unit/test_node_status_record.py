"""The agent's NodeStatus publisher against the in-memory datastore: created when missing, the
status rewritten by compare-and-swap (a spec edited meanwhile is kept), written at once when a
peer changes state, and datastore failures survived."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest
from percale.bgpd.peers import PeerStatus
from percale.bgpd.peering import MESH, Session

from percale.datastore import DatastoreError, DatastoreUnavailable, Key, MemoryDatastore
from percale.bgpd.status import view_of
from percale.node.status import NodeStatusPublisher
from percale.api import NodeStatus, NodeStatusSpec, ObjectMeta

pytestmark = pytest.mark.unit

KEY = Key("NodeStatus", "node1")


def controller(state: str = "start", info: str = "Connect", running: bool = True) -> SimpleNamespace:
    """The parts of a BGPController the status reads."""
    session = Session(name="Mesh_10_99_0_2", kind=MESH, family=4, peer_address="10.99.0.2",
                      peer_port=179, peer_as=64512, local_as=64512, local_address="10.99.0.1")
    return SimpleNamespace(
        speaker=SimpleNamespace(process=SimpleNamespace(returncode=None) if running else None,
                                started_at=None, reconfigured_at=None),
        peers={"10.99.0.2": PeerStatus(session, state, info)}, rib=None, router_id="10.99.0.1")


def users_record(period: int = 60, node: str = "node1") -> NodeStatus:
    return NodeStatus(metadata=ObjectMeta(name="node1"),
                      spec=NodeStatusSpec(node=node, classes=["BGP"], update_period_seconds=period))


async def test_a_missing_record_is_created_with_calicos_defaults():
    store = MemoryDatastore()
    bgp = controller("up", "Established")
    period = await NodeStatusPublisher(store, "node1", bgp).publish(view_of(bgp))
    stored = (await store.get(KEY)).value
    assert period == 10
    assert (stored.spec.node, stored.spec.classes, stored.spec.update_period_seconds) == (
        "node1", ["Agent", "BGP", "Routes"], 10)
    assert [(p.peer_ip, p.type, p.state) for p in stored.status.bgp.peers_v4] == [
        ("10.99.0.2", "NodeMesh", "Established")]
    assert stored.status.agent.bgp_v4.state == "Ready"


async def test_an_existing_record_keeps_its_spec_and_gets_the_classes_it_asks_for():
    store = MemoryDatastore()
    await store.create(users_record(period=60))
    bgp = controller()
    assert await NodeStatusPublisher(store, "node1", bgp).publish(view_of(bgp)) == 60
    stored = (await store.get(KEY)).value
    assert stored.spec.update_period_seconds == 60
    assert stored.status.agent is None  # class Agent was not asked for
    assert stored.status.bgp.number_not_established_v4 == 1


class EditedMeanwhile(MemoryDatastore):
    """Someone changes the record's period between the publisher's read and its write, once."""

    async def update(self, value, *, revision):
        if not getattr(self, "edited", False):
            self.edited = True
            current = await self.get(KEY)
            spec = current.value.spec.model_copy(update={"update_period_seconds": 30})
            await super().update(current.value.model_copy(update={"spec": spec}),
                                 revision=current.revision)
        return await super().update(value, revision=revision)


async def test_a_conflicting_edit_is_kept_and_the_status_written_on_top():
    store = EditedMeanwhile()
    await store.create(users_record(period=60))
    bgp = controller()
    assert await NodeStatusPublisher(store, "node1", bgp).publish(view_of(bgp)) == 30
    stored = (await store.get(KEY)).value
    assert stored.spec.update_period_seconds == 30
    assert stored.status.bgp is not None


async def test_a_record_asking_for_no_refresh_or_describing_another_node_is_left_alone():
    bgp = controller()
    for record in (users_record(period=0), users_record(node="node2")):
        store = MemoryDatastore()
        await store.create(record)
        assert await NodeStatusPublisher(store, "node1", bgp).publish(view_of(bgp)) == 0
        assert (await store.get(KEY)).value.status is None


class Flaky(MemoryDatastore):
    """Unavailable for the first `failures` reads."""

    def __init__(self, failures: int):
        super().__init__()
        self.failures = failures

    async def get(self, key):
        if self.failures:
            self.failures -= 1
            raise DatastoreUnavailable("etcd is down")
        return await super().get(key)


async def test_the_publisher_survives_an_unavailable_datastore_and_writes_state_changes_at_once():
    store = Flaky(failures=2)
    bgp = controller()
    publisher = NodeStatusPublisher(store, "node1", bgp, default_period=3600)
    publisher.POLL_SECONDS = 0.01
    publisher.FIRST_BACKOFF_SECONDS = publisher.MAX_BACKOFF_SECONDS = 0.05
    task = asyncio.create_task(publisher.run())

    async def stored_state() -> str | None:
        try:
            return (await store.get(KEY)).value.status.bgp.peers_v4[0].state
        except DatastoreError:  # the flaky reads; the publisher's come first
            return None

    async def until(state: str) -> None:
        while await stored_state() != state:
            await asyncio.sleep(0.01)

    try:
        # Two failed reads, each followed by a pause; then the write lands.
        await asyncio.wait_for(until("Connect"), 5)
        assert store.failures == 0
        assert not task.done()
        # Long before the hour-long period is up, the session coming up is published.
        bgp.peers["10.99.0.2"].set("up", "Established")
        await asyncio.wait_for(until("Established"), 2)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


def test_bgp_not_running_has_no_peers():
    # ExaBGP gone (restarting, or never started for want of a BGP address): no sessions to show.
    view = view_of(controller(running=False))
    assert (view.bgp_running, view.peers) == (False, ())


async def test_an_edited_record_is_honoured_within_the_default_period():
    """An admin lowers an hour-long period, or turns refreshing on (0 -> 1): the publisher reads
    the record back every default period and follows it, instead of waiting out the old period
    while `node status --node` calls the record stale."""
    for first in (3600, 0):
        store = MemoryDatastore()
        await store.create(users_record(period=first))
        publisher = NodeStatusPublisher(store, "node1", controller(), default_period=1)
        publisher.POLL_SECONDS = 0.02
        task = asyncio.create_task(publisher.run())
        try:
            while (current := await store.get(KEY)).value.status is None and first:
                await asyncio.sleep(0.02)
            spec = current.value.spec.model_copy(update={"update_period_seconds": 1,
                                                         "classes": ["Agent", "BGP"]})
            edited = await store.update(current.value.model_copy(update={"spec": spec}),
                                        revision=current.revision)
            # Written again on top of the edit within the default period, then every second.
            async def rewritten(after: str) -> str:
                while (kv := await store.get(KEY)).revision == after:
                    await asyncio.sleep(0.02)
                return kv.revision

            again = await asyncio.wait_for(rewritten(edited.revision), 2)
            stored = (await store.get(KEY)).value
            assert stored.spec.update_period_seconds == 1
            assert stored.status.agent is not None  # the class the edit added
            await asyncio.wait_for(rewritten(again), 2)
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task


async def test_a_record_that_changes_nothing_costs_one_read_per_default_period():
    class Counting(MemoryDatastore):
        gets = 0

        async def get(self, key):
            self.gets += 1
            return await super().get(key)

    store = Counting()
    await store.create(users_record(period=3600))
    publisher = NodeStatusPublisher(store, "node1", controller(), default_period=1)
    publisher.POLL_SECONDS = 0.02
    task = asyncio.create_task(publisher.run())
    try:
        while publisher._record is None:
            await asyncio.sleep(0.02)
        first = publisher._record.revision
        await asyncio.sleep(2.5)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    # The first write's read, then a read back about every second, and no write: the revision
    # read back is the one written.
    gets = store.gets
    assert 3 <= gets <= 4
    assert (await store.get(KEY)).revision == first
