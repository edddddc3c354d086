"""percale-node's BGP status, served: the socket `percalectl node status` reads, and the
NodeStatus record published cluster-wide (the forms are bgpd/status.py's).

    serve_status             the socket server (mode 0600, like the CNI socket)
    NodeStatusPublisher      writes NodeStatus `<node>` every updatePeriodSeconds and whenever a
                             peer changes state
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from datetime import datetime, timezone

from percale.api import NodeStatus, NodeStatusSpec, ObjectMeta
from percale.api.nodestatus import NodeRoutesStatus
from percale.bgpd.status import (
    DEFAULT_STATUS_SOCKET,
    DEFAULT_UPDATE_PERIOD_SECONDS,
    OWN_CLASSES,
    BGPState,
    NodeView,
    routes_of,
    status_record,
    to_json,
    view_of,
)
from percale.datastore import AlreadyExists, Conflict, Datastore, DatastoreError, Key, KVPair, NotFound
from percale.ipc.unix_server import serve_unix

log = logging.getLogger("percale.node.status")


async def serve_status(bgp: BGPState, node: str,
                       path: str = DEFAULT_STATUS_SOCKET) -> asyncio.AbstractServer:
    """Listen on `path` (mode 0600: calicoctl node status, too, is for root on the node). Each
    connection gets the status as one JSON line, then the server closes it; nothing is read."""
    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            writer.write(json.dumps(to_json(node, view_of(bgp))).encode() + b"\n")
            await writer.drain()
        except ConnectionError:
            pass  # the client gave up; nothing to tell it
        except Exception:  # a bug must not take the server down; the client sees the socket close
            log.exception("answering a status request failed")
        finally:
            writer.close()

    return await serve_unix(on_connect, path)



class NodeStatusPublisher:
    """Keeps NodeStatus `<node>` current: creates it if missing (classes Agent and BGP, Calico's
    default period), rewrites its status every updatePeriodSeconds the record asks for, and at
    once when BGP starts or stops or a peer changes state. Writes are compare-and-swap, so an
    edit of the spec made meanwhile is kept. Between writes further apart than the default
    period it reads the record back every default period (one get, compared by revision), so an
    edit (a shorter period, other classes, updatePeriodSeconds 0 turned on) is taken within
    that, not when the old period (up to a day) ends. Datastore failures are logged and retried
    with backoff; they never stop the agent."""

    # The driver has no change callback; looking at its in-memory table this often costs nothing.
    POLL_SECONDS = 0.5
    CAS_ATTEMPTS = 10
    FIRST_BACKOFF_SECONDS = 1.0
    MAX_BACKOFF_SECONDS = 30.0

    def __init__(self, store: Datastore, node: str, bgp: BGPState, *,
                 default_period: int = DEFAULT_UPDATE_PERIOD_SECONDS):
        self.store, self.node, self.bgp = store, node, bgp
        self.default_period = default_period
        self._warned_foreign = False
        # The record as this publisher last wrote or read it: the next write compares-and-swaps
        # against it, so a period costs one write and no read (a Conflict carries what changed).
        self._record: KVPair | None = None

    async def run(self) -> None:
        written: tuple | None = None  # the peer table last published
        due = read_due = retry_at = 0.0  # monotonic
        backoff = self.FIRST_BACKOFF_SECONDS
        while True:
            view = view_of(self.bgp)
            now = time.monotonic()
            if now >= retry_at:
                try:
                    write = view.table() != written or now >= due
                    if not write and now >= read_due:
                        read_due = now + self.default_period
                        write = await self._edited()
                    if write:
                        period = await self.publish(view)
                        written, backoff = view.table(), self.FIRST_BACKOFF_SECONDS
                        # Period 0 asks for no refresh (nor does a record that is not ours):
                        # only reading it back notices that it changed.
                        due = now + period if period else float("inf")
                        read_due = now + self.default_period
                except DatastoreError as err:
                    log.warning("writing NodeStatus %s failed, retrying in %.0fs: %s",
                                self.node, backoff, err)
                    retry_at, backoff = now + backoff, min(backoff * 2, self.MAX_BACKOFF_SECONDS)
                except Exception:  # a bug here must not take BGP or CNI down with it
                    log.exception("writing NodeStatus %s failed", self.node)
                    retry_at, backoff = now + backoff, min(backoff * 2, self.MAX_BACKOFF_SECONDS)
            await asyncio.sleep(self.POLL_SECONDS)

    async def _edited(self) -> bool:
        """Read the record back: whether it changed since this publisher last wrote or read it
        (edited, or deleted). The next write starts from what was read."""
        fresh = await self._read(Key("NodeStatus", self.node))
        last = self._record
        self._record = fresh
        return fresh is None or last is None or fresh.revision != last.revision

    async def publish(self, view: NodeView) -> int:
        """Write `view` into the record; returns the record's update period (0: left alone)."""
        key = Key("NodeStatus", self.node)
        current = self._record or await self._read(key)
        for _ in range(self.CAS_ATTEMPTS):
            now = datetime.now(timezone.utc)
            if current is None:
                spec = NodeStatusSpec(node=self.node, classes=list(OWN_CLASSES),
                                      update_period_seconds=self.default_period)
                record = NodeStatus(metadata=ObjectMeta(name=self.node), spec=spec,
                                    status=status_record(spec.classes, view, now,
                                                         self._routes(spec.classes)))
                try:
                    self._record = await self.store.create(record)
                    return spec.update_period_seconds
                except AlreadyExists:
                    current = await self._read(key)
                    continue
            spec = current.value.spec
            if spec.node != self.node or spec.update_period_seconds == 0:
                self._record = current  # what reading it back compares with
            if spec.node != self.node:
                # Someone named a record after this node but pointed it elsewhere: not ours.
                if not self._warned_foreign:
                    log.warning("NodeStatus %s describes node %s; leaving it alone",
                                self.node, spec.node)
                    self._warned_foreign = True
                return 0
            if spec.update_period_seconds == 0:
                return 0  # Calico: 0 means do not refresh
            updated = current.value.model_copy(
                update={"status": status_record(spec.classes, view, now,
                                                self._routes(spec.classes))})
            try:
                self._record = await self.store.update(updated, revision=current.revision)
                return spec.update_period_seconds
            except Conflict as err:
                current = err.current  # someone edited it: keep their spec, write ours again
            except NotFound:
                current = self._record = None  # deleted meanwhile: create it again
        raise DatastoreError(f"NodeStatus {self.node} kept changing under "
                             f"{self.CAS_ATTEMPTS} attempts to write it")

    def _routes(self, classes: list[str]) -> NodeRoutesStatus | None:
        # Read at each write, not at each poll: walking a large table twice a second for a
        # record written every few seconds would be waste.
        return routes_of(self.bgp) if "Routes" in classes else None

    async def _read(self, key: Key) -> KVPair | None:
        try:
            return await self.store.get(key)
        except NotFound:
            return None
