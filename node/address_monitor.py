"""The node's address found again while the agent runs, as calico-node's monitor-addresses
service does (MonitorIPAddressSubnets, node/pkg/lifecycle/startup/startup.go).

node/registration.py detects an autodetected address once, at start. A DHCP lease or a re-IP
that moved it later left the Node on the old address for good: the other nodes kept tunnelling
and peering to it, and this node's own VXLAN agent, finding no interface with the Node's address,
removed vxlan.percale, until the agent was restarted. Every AUTODETECT_POLL_INTERVAL (60 s) the
detection runs again for the families calico-node's configureIPsAndSubnets detects:

  * `--ip autodetect` / `--ip6 autodetect`: every time; a result other than the Node's address
    (or prefix: CrossSubnet compares subnets) is written to the Node, compare-and-swap, by
    registration.register, which also refuses an address another Node has;
  * an empty `--ip`: only while the Node has no IPv4 address (calico-node keeps a registered one
    and detects only when there is none; an empty `--ip6` detects nothing);
  * an address given, or `none`: never.

Detection that finds nothing keeps the Node as it is, warned once until it finds something
again. calico-node keeps the address too when it had one, but exits when an address it detected
anew is another Node's; here that is warned and the Node kept, and the agent goes on.

Everything else follows the Node from the view: the BGP side's router ID and next hops, the VXLAN
device's parent and the other nodes' FDB entries, and the host MTU check (node/host_mtu.py).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Iterable
from dataclasses import dataclass

from percale.api.fields import duration_seconds
from percale.dataplane.host import host_addresses
from percale.datastore import Datastore, DatastoreError
from percale.node import registration
from percale.node.registration import KUBERNETES_INTERNAL_IP, FromKubernetesNode, RegistrationError

log = logging.getLogger("percale.node")

# calico-node's DEFAULT_MONITOR_IP_POLL_INTERVAL.
DEFAULT_POLL_INTERVAL = "60s"
POLL_SETTING = "--autodetect-poll-interval (AUTODETECT_POLL_INTERVAL)"


def poll_seconds(text: str) -> float:
    """The seconds in AUTODETECT_POLL_INTERVAL, a Go duration as calico-node reads it
    (time.ParseDuration: 60s, 1m30s, 500ms). RegistrationError naming the setting for one that
    is not a duration, or not above 0: calico-node's ticker panics on 0 (it has no "off": an
    address given with --ip, or `none`, is what is never detected again)."""
    try:
        seconds = duration_seconds(text)
    except ValueError as err:
        raise RegistrationError(f"{POLL_SETTING}: {err}") from None
    if seconds <= 0:
        raise RegistrationError(f"{POLL_SETTING}: {text!r} must be longer than 0 (give --ip an"
                                " address, or none, for a node whose address is not detected)")
    return seconds


@dataclass(frozen=True)
class Detected:
    """One family the monitor detects again. `always`: `autodetect` (each time); else an empty
    --ip (only while the Node has no address)."""

    version: int
    method: str
    always: bool

    @property
    def setting(self) -> str:
        return "--ip" if self.version == 4 else "--ip6"

    @property
    def method_setting(self) -> str:
        return "--ip-autodetection-method" if self.version == 4 else "--ip6-autodetection-method"


def detected(ip: str | None, ip6: str | None, method: str | None,
             method6: str | None) -> tuple[Detected, ...]:
    """The families --ip/--ip6 (as given, checked by registration.resolve) ask to detect while
    the agent runs, with their methods."""
    families = []
    if ip in (None, "", "autodetect"):
        families.append(Detected(4, method or "first-found", always=ip == "autodetect"))
    if ip6 == "autodetect":
        families.append(Detected(6, method6 or "first-found", always=True))
    return tuple(families)


class AddressMonitor:
    """Every `every` seconds, each of `families` detected again and, when the result differs
    from Node `node`'s address of that family (read from `view`, this process's copy), written to
    `store`. What cannot be done (nothing found, the address another Node's, the datastore away)
    is warned once per family and reason, and changes nothing."""

    def __init__(self, store: Datastore, view: Datastore, node: str, families: Iterable[Detected],
                 every: float, *, kubeconfig: str | None = None, addresses=host_addresses) -> None:
        self.store, self.view, self.node = store, view, node
        self.families, self.every = tuple(families), every
        self.kubeconfig, self.addresses = kubeconfig, addresses
        self._problem: dict[int, str] = {}

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.every)
            await self.check()

    async def check(self) -> None:
        for family in self.families:  # each on its own: IPv6 not found stops no IPv4
            await self._check(family)

    async def _check(self, family: Detected) -> None:
        version = family.version
        try:
            current = await registration.registered(self.view, self.node, version)
        except DatastoreError as err:
            self._warn(version, f"reading Node {self.node} failed: {err}")
            return
        if current is not None and not family.always:
            self._problem.pop(version, None)
            return  # an empty --ip keeps what the Node has
        try:
            found = await self._detect(family)
        except (RegistrationError, DatastoreError, OSError) as err:
            kept = f"keeps {current}" if current else "still has no address of that family"
            self._warn(version, f"IPv{version} address autodetection found nothing; Node "
                                f"{self.node} {kept}: {err}")
            return
        if current is not None and ipaddress.ip_interface(current) == found:
            self._problem.pop(version, None)
            return
        try:
            await registration.register(self.store, self.node, *(
                found if v == version else None for v in (4, 6)))
        except (RegistrationError, DatastoreError) as err:
            self._warn(version, f"IPv{version} address {found} detected, but Node {self.node} "
                                f"keeps {current or 'none'}: {err}")
            return
        self._problem.pop(version, None)
        log.info("Node %s: IPv%d address changed from %s to %s (detected again with %s %s)",
                 self.node, version, current or "none", found, family.method_setting,
                 family.method)

    async def _detect(self, family: Detected) -> ipaddress.IPv4Interface | ipaddress.IPv6Interface:
        if family.method == KUBERNETES_INTERNAL_IP:
            (found,) = await registration.kubernetes_addresses(
                (FromKubernetesNode(family.version),), self.node, self.store, self.kubeconfig,
                self.addresses, say=False)
            return found
        return await asyncio.to_thread(
            lambda: registration.autodetect(family.version, family.method, self.addresses(),
                                            say=False))

    def _warn(self, version: int, problem: str) -> None:
        if self._problem.get(version) != problem:
            self._problem[version] = problem
            log.warning("%s", problem)
