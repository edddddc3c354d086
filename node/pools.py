"""What follows the IPPools on a node besides IPAM and routing: the natOutgoing table
(dataplane/nat.py) and the MTU file (felix's /var/lib/calico/mtu: the pod MTU for whoever wires
pods without asking this agent). Assembly only: both are written again when a pool changes."""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

from percale.api import IPPool
from percale.dataplane.nat import NATError, OutgoingNAT
from percale.datastore.cache import Cache, Change
from percale.vxlan.plan import pod_mtu

log = logging.getLogger("percale.node.pools")

DEFAULT_MTU_FILE = "/var/run/percale/mtu"
RETRY_SECONDS = 1.0


class PoolFollower:
    def __init__(self, cache: Cache, host_mtu: int, mtu_file: str, nat: OutgoingNAT | None) -> None:
        self.cache, self.host_mtu, self.mtu_file, self.nat = cache, host_mtu, Path(mtu_file), nat
        self._due = asyncio.Event()
        cache.subscribe(self._changed)

    def _changed(self, change: Change) -> None:
        if change.kind == "IPPool":
            self._due.set()

    async def run(self) -> None:
        await self.cache.wait_synced()
        self._due.set()
        while True:
            await self._due.wait()
            self._due.clear()
            pools: list[IPPool] = self.cache.values("IPPool")  # type: ignore[assignment]
            try:
                self._write_mtu(pod_mtu(self.host_mtu, pools))
                if self.nat is not None:
                    enabled = [p for p in pools if not p.spec.disabled]
                    await asyncio.to_thread(
                        self.nat.sync, [str(p.spec.network) for p in enabled if p.spec.nat_outgoing],
                        [str(p.spec.network) for p in pools])
            except (NATError, OSError) as err:
                log.warning("following the IPPools failed, trying again: %s", err)
                await asyncio.sleep(RETRY_SECONDS)
                self._due.set()

    def _write_mtu(self, mtu: int) -> None:
        self.mtu_file.parent.mkdir(parents=True, exist_ok=True)
        staging = self.mtu_file.with_suffix(".new")
        staging.write_text(f"{mtu}\n")
        os.replace(staging, self.mtu_file)  # readers never see half a number
