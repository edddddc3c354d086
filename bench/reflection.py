"""Route-reflector benchmark: what a percale reflector spends when one client claims a block.

A script, not a test (timings never go into tests): `.venv/bin/python bench/reflection.py`,
a few seconds, no root. For 50, 200 and 500 clients holding 2 blocks each, it fills a RIB as the
clients' UPDATEs would (bgpd/rib.py), then times, with an ExaBGP stand-in that acknowledges each
command at once (so only percale's own work is timed):

  whole table   the first Relay.catch_up: every client sent every other client's blocks, as when
                what every session depends on changes (the cluster ID, a client's status)
  one block     one more block from one client, then Relay.catch_up: what the reflector does
                each time a node claims a block

"commands" counts what ExaBGP is sent: one command carries a route to up to 50 neighbours
(bgpd/relay.py), and ExaBGP answers each in about 0.75 ms, so they are the real wait.

Until 2026-12-07 a reflector walked the whole table for every client on each change (the
removed bgpd/reflector.py, measured with this same setup at c296fb6): one block cost 62 ms with
50 clients, 1.0 s with 200 and 5.6 s with 500, all of it on the loop that also programs the
kernel, and one command per client (499 with 500 clients). bench/README.md has the figures,
and those of the relay building each announcement once per path rather than per client.
"""

from __future__ import annotations

import asyncio
import ipaddress
import sys
import time
from pathlib import Path as FilePath

sys.path.insert(0, str(FilePath(__file__).resolve().parents[1]))

from percale.bgpd.exabgp_json import RibFeed
from percale.bgpd.peering import NODE, Session
from percale.bgpd.relay import Relay
from percale.bgpd.rib import Path, Peer, Rib

CLUSTER_ID, AS = "244.0.0.1", 64512
BLOCKS_PER_CLIENT = 2


class Acknowledging:
    """ExaBGP as the relay sees it, answering every command at once."""

    def __init__(self) -> None:
        self.commands = 0

    async def send(self, command: str, timeout: float = 30) -> None:
        self.commands += 1


def block(n: int) -> str:
    return str(ipaddress.IPv4Network((0x0A000000 + n * 64, 26)))


async def measure(clients: int) -> tuple[float, int, float, int]:
    rib = Rib(router_id="10.0.0.1", pools=["10.0.0.0/8"])
    feed = RibFeed(rib)
    peers, sessions = [], []
    for i in range(clients):
        address = str(ipaddress.IPv4Address("172.16.0.2") + i)
        peers.append(Peer(address, AS, AS, address))
        sessions.append(Session(name=f"Node_{address}", kind=NODE, family=4, peer_address=address,
                                peer_port=179, peer_as=AS, local_as=AS, local_address="10.0.0.1",
                                route_reflector_client=True, cluster_id=CLUSTER_ID))
    speaker = Acknowledging()
    relay = Relay(speaker)
    relay.configure(sessions, [], CLUSTER_ID)
    rib.watch_best(relay.active)
    for i, peer in enumerate(peers):
        rib.update(peer, [Path(block(i * BLOCKS_PER_CLIENT + j), peer.address, peer)
                          for j in range(BLOCKS_PER_CLIENT)])
    rib.changes()
    up = {s.peer_address for s in sessions}

    started = time.perf_counter()
    await relay.catch_up(rib, feed, up)
    whole, whole_commands = time.perf_counter() - started, speaker.commands

    speaker.commands = 0
    rib.update(peers[0], [Path(block(clients * BLOCKS_PER_CLIENT), peers[0].address, peers[0])])
    rib.changes()
    started = time.perf_counter()
    await relay.catch_up(rib, feed, up)
    return whole, whole_commands, time.perf_counter() - started, speaker.commands


def main() -> None:
    print(f"percale route reflector, {BLOCKS_PER_CLIENT} blocks per client")
    print(f"{'clients':>8} {'whole table':>12} {'commands':>9} {'one block':>10} {'commands':>9}")
    for clients in (50, 200, 500):
        whole, whole_commands, one, one_commands = asyncio.run(measure(clients))
        print(f"{clients:>8} {whole:>10.2f} s {whole_commands:>9} {one * 1000:>7.1f} ms "
              f"{one_commands:>9}")


if __name__ == "__main__":
    main()
