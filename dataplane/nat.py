"""natOutgoing: pods of a pool with `natOutgoing: true` reach destinations outside every pool
with the node's address (calico.md §3.4, dataplane.md §E).

    nat = OutgoingNAT()
    nat.sync(masquerade=["10.244.0.0/16"], pools=["10.244.0.0/16", "10.245.0.0/16"], tunnels=[4])

One nftables table, `ip percale` (and `ip6 percale` for IPv6 pools), owned by percale: two
interval sets and one rule in the nat postrouting hook, after kube-proxy (srcnat + 10):

    ip saddr @masq-pools ip daddr != @all-pools masquerade fully-random

so pod to pod, pod to another pool (and to the nodes' tunnel addresses, which are in the pools)
is never NATed. Where a family has VXLAN pools, a second rule is felix's tunnel source fix:

    oifname "vxlan.percale" fib saddr . oif type != local fib saddr type local masquerade

A packet the node itself sends into the tunnel from one of its addresses other than the tunnel
device's (a host process or hostNetwork pod bound to the node IP, talking to a remote pod)
leaves with the tunnel address instead: the remote node's route back to the node IP is not
through the tunnel, so with strict rp_filter (RHEL's default) it would drop the packet.

Each change is one `nft -f -` transaction that deletes and writes the table whole: the kernel
swaps it atomically, and nothing else's rules are touched. With no pool to masquerade and no
VXLAN pool, the table is removed.

`render` is pure; `sync` runs the Debian `nft` program (nftables) and blocks.
"""

from __future__ import annotations

import ipaddress
import subprocess
from collections.abc import Iterable

from percale.dataplane.vxlan import DEVICE, DEVICE_V6

TABLE = "percale"
NFT = "nft"
TUNNEL_DEVICES = {4: DEVICE, 6: DEVICE_V6}


class NATError(OSError):
    """nft refused the ruleset; the message is nft's."""


def _family(version: int) -> str:
    return "ip" if version == 4 else "ip6"


def render(masquerade: Iterable[str], pools: Iterable[str], tunnels: Iterable[int] = ()) -> str:
    """The nft script making the tables exactly what these pools need (pure). `tunnels`: the
    families with VXLAN pools, whose tunnel device gets the source fix."""
    masq = [ipaddress.ip_network(c) for c in masquerade]
    every = [ipaddress.ip_network(c) for c in pools]
    tunnelled = set(tunnels)
    lines: list[str] = []
    for version in (4, 6):
        family = _family(version)
        # Add-then-delete: deleting a table that does not exist fails the whole transaction.
        lines += [f"add table {family} {TABLE}", f"delete table {family} {TABLE}"]
        mine = sorted(str(n) for n in masq if n.version == version)
        if not mine and version not in tunnelled:
            continue
        lines += [
            f"add table {family} {TABLE}",
            f"add chain {family} {TABLE} nat-postrouting "
            "{ type nat hook postrouting priority srcnat + 10; policy accept; }",
        ]
        if mine:
            others = sorted(str(n) for n in every if n.version == version) or mine
            addr = "ipv4_addr" if version == 4 else "ipv6_addr"
            kind = f"{{ type {addr}; flags interval; auto-merge; }}"
            lines += [
                f"add set {family} {TABLE} masq-pools {kind}",
                f"add element {family} {TABLE} masq-pools {{ {', '.join(mine)} }}",
                f"add set {family} {TABLE} all-pools {kind}",
                f"add element {family} {TABLE} all-pools {{ {', '.join(others)} }}",
                f"add rule {family} {TABLE} nat-postrouting {family} saddr @masq-pools "
                f"{family} daddr != @all-pools masquerade fully-random",
            ]
        if version in tunnelled:
            device = TUNNEL_DEVICES[version]
            lines.append(f'add rule {family} {TABLE} nat-postrouting oifname "{device}" '
                         "fib saddr . oif type != local fib saddr type local masquerade")
    return "\n".join(lines) + "\n"


class OutgoingNAT:
    def __init__(self, nft: str = NFT) -> None:
        self.nft = nft
        self._applied: str | None = None

    def sync(self, masquerade: Iterable[str], pools: Iterable[str],
             tunnels: Iterable[int] = ()) -> bool:
        """Apply if anything changed since the last sync; True if it wrote the kernel."""
        script = render(masquerade, pools, tunnels)
        if script == self._applied:
            return False
        done = subprocess.run([self.nft, "-f", "-"], input=script, capture_output=True, text=True)
        if done.returncode != 0:
            raise NATError(f"nft refused the natOutgoing table: {done.stderr.strip()}")
        self._applied = script
        return True

    def forget(self) -> None:
        """Write in full at the next sync (after someone may have changed the table)."""
        self._applied = None
