"""What follows the IPPools on a node besides IPAM and routing: the natOutgoing table
(dataplane/nat.py), the MTU file (felix's /var/lib/calico/mtu: the pod MTU for whoever wires
pods without asking this agent) and IPv6 forwarding, on once an IPv6 pool exists (disabled or
not: its pods still route). Assembly only: all are written again when a pool changes, and every
RESYNC_SECONDS besides.

They are independent: an MTU file that cannot be written (a read-only or mistyped
--mtu-file) is logged and tried again, and never keeps pods' traffic from being masqueraded.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Iterable
from pathlib import Path

from percale.api import IPPool
from percale.dataplane.host import enable_ipv6_forwarding
from percale.dataplane.nat import NATError, OutgoingNAT
from percale.datastore.cache import Cache, Change
from percale.vxlan.plan import MTUTooSmall, pod_mtu

log = logging.getLogger("percale.node.pools")

DEFAULT_MTU_FILE = "/var/run/percale/mtu"
RETRY_SECONDS = 1.0
# How often the natOutgoing table is written again though no pool changed: something else may
# have removed it (`systemctl restart nftables` runs `flush ruleset`), as felix refreshes its
# dataplane and percale's policy side checks its table.
RESYNC_SECONDS = 30.0


def nat_sets(pools: Iterable[IPPool]) -> tuple[list[str], list[str]]:
    """The CIDRs natOutgoing masquerades from, and those it never masquerades to (pure), as
    felix fills cali40masq-ipam-pools and its all-pools set (dataplane.md §E).

    A disabled pool stays in both: disabling only stops new allocations, and the pods still
    holding its addresses must keep reaching the outside (dropping it from the masquerade set cut
    them off the moment a pool was disabled, which a pool migration does first, and so does
    IPAM.delete_pool). A LoadBalancer pool is left out of the second set, as felix leaves it: its
    addresses are services' external addresses, not pods', so a pod reaching one is leaving the
    pod network like any other outside destination.
    """
    pools = list(pools)
    masquerade = [str(p.spec.network) for p in pools if p.spec.nat_outgoing]
    every = [str(p.spec.network) for p in pools if "LoadBalancer" not in p.spec.allowed_uses]
    return masquerade, every


def tunnelled_families(pools: Iterable[IPPool]) -> list[int]:
    """The address families whose pools use VXLAN, so whose tunnel device needs felix's source
    fix (dataplane/nat.py); a disabled pool's pods still use the tunnel (pure)."""
    return sorted({p.spec.network.version for p in pools if p.spec.vxlan_mode != "Never"})


class PoolFollower:
    def __init__(self, cache: Cache, host_mtu: int, mtu_file: str, nat: OutgoingNAT | None,
                 resync: float = RESYNC_SECONDS,
                 ipv6_forwarding: Callable[[], None] | None = enable_ipv6_forwarding) -> None:
        self.cache, self.host_mtu, self.mtu_file, self.nat = cache, host_mtu, Path(mtu_file), nat
        self.resync = resync
        self.ipv6_forwarding = ipv6_forwarding
        self._forwarding_problem: str | None = None
        self._due = asyncio.Event()
        # The reason last logged: a retry that fails the same way is not logged again.
        self._mtu_problem: str | None = None
        self._ipip_told: set[tuple[str, str]] = set()
        cache.subscribe(self._changed)

    def _changed(self, change: Change) -> None:
        if change.kind == "IPPool":
            self._due.set()

    def set_host_mtu(self, host_mtu: int) -> None:
        """The host MTU changed (node/host_mtu.py): the MTU file is written again from it."""
        self.host_mtu = host_mtu
        self._due.set()

    async def run(self) -> None:
        await self.cache.wait_synced()
        self._due.set()
        while True:
            try:
                async with asyncio.timeout(self.resync):
                    await self._due.wait()
            except TimeoutError:
                if self.nat is not None:
                    self.nat.forget()  # written in full again, whatever happened to it
            self._due.clear()
            pools: list[IPPool] = self.cache.values("IPPool")  # type: ignore[assignment]
            self._warn_of_ipip(pools)
            done = self._mtu_written(pools)
            done = self._ipv6_forwarded(pools) and done
            if self.nat is not None:
                done = await self._nat_synced(self.nat, pools) and done
            if not done:
                await asyncio.sleep(RETRY_SECONDS)
                self._due.set()

    def _warn_of_ipip(self, pools: list[IPPool]) -> None:
        """A pool stored with ipipMode (by Calico, or written past percalectl, which refuses it)
        is served like any other, but percale has no IPIP dataplane: say so once per pool."""
        for pool in pools:
            told = (pool.metadata.name, pool.spec.ipip_mode)
            if pool.spec.ipip_mode != "Never" and told not in self._ipip_told:
                self._ipip_told.add(told)
                log.warning("IPPool %s asks for ipipMode %s, but percale has no IPIP dataplane: "
                            "its traffic is routed unencapsulated; use vxlanMode to encapsulate",
                            pool.metadata.name, pool.spec.ipip_mode)

    def _mtu_written(self, pools: list[IPPool]) -> bool:
        """Write the pod MTU file; False if it could not be, logged once for each new reason
        (a path that stays unwritable is retried every RETRY_SECONDS, not logged every time)."""
        try:
            self._write_mtu(pod_mtu(self.host_mtu, pools))
        except (OSError, MTUTooSmall) as err:
            reason = str(err)
            if isinstance(err, OSError) and err.strerror:
                # What failed may be a directory on the way (a file where one should be).
                reason = err.strerror if err.filename in (None, str(self.mtu_file)) \
                    else f"{err.strerror}: {err.filename}"
            if reason != self._mtu_problem:
                log.warning("cannot write the pod MTU file %s: %s; trying again (natOutgoing "
                            "does not wait for it)", self.mtu_file, reason)
                self._mtu_problem = reason
            return False
        if self._mtu_problem is not None:
            log.info("wrote the pod MTU file %s after all", self.mtu_file)
            self._mtu_problem = None
        return True

    def _ipv6_forwarded(self, pools: list[IPPool]) -> bool:
        """IPv6 forwarding on while an IPv6 pool exists (written again each pass: it is cheap,
        and something may have turned it off); never turned off here, as felix leaves it."""
        if self.ipv6_forwarding is None or not any(p.spec.network.version == 6 for p in pools):
            return True
        try:
            self.ipv6_forwarding()
        except OSError as err:
            if str(err) != self._forwarding_problem:
                log.warning("cannot turn IPv6 forwarding on for the IPv6 pools' pods: %s; "
                            "trying again", err)
                self._forwarding_problem = str(err)
            return False
        self._forwarding_problem = None
        return True

    @staticmethod
    async def _nat_synced(nat: OutgoingNAT, pools: list[IPPool]) -> bool:
        masquerade, every = nat_sets(pools)
        try:
            await asyncio.to_thread(nat.sync, masquerade, every, tunnelled_families(pools))
        except (NATError, OSError) as err:
            log.warning("programming natOutgoing failed, trying again: %s", err)
            return False
        return True

    def _write_mtu(self, mtu: int) -> None:
        self.mtu_file.parent.mkdir(parents=True, exist_ok=True)
        staging = self.mtu_file.with_suffix(".new")
        staging.write_text(f"{mtu}\n")
        os.replace(staging, self.mtu_file)  # readers never see half a number
