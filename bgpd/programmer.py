"""From the RIB to the kernel: the RIB's changes handed to the route table as they happen, in
batches; the node's own blocks kept as blackholes; and, on a timer, a full check of both.

The kernel side is behind bgpd.seams (dataplane.fib and dataplane.blackholes in the agent, none
in tests that run outside a node's namespace). Every call into it blocks, so it runs in a worker
thread: the event loop, and ExaBGP's pipe with it, never wait on the kernel. The route table's
calls have one thread of their own, always the same: they are serialised anyway (one netlink
socket), and the C library gives each thread that allocates its own heap, which keeps what it
freed. Spread over the default executor's threads, a few 100k-route loads and flushes left
~10 MB of freed memory in several of them.

After a restart the route table holds the routes the previous agent installed (it adopts them).
Once every peer has sent End-of-RIB, or the restart time has passed, `sweep` makes the table
exactly what the RIB relearned: what no peer announced again goes.

The host routes to peers that a BGPPeer's reachableBy asks for (bgpd/peer_routes.py) are a
table of their own (RouteProtocol.PEER): `peer_routes` makes it exactly what the sessions say,
and their prefixes are claimed from the RIB, as BIRD prefers its static route to a learned one.

Some prefixes are another owner's even though a peer announces them: blocks of VXLAN pools are
routed by the VXLAN side (vxlan/plan.py claims them). `claimed` says which; they never reach the
table, and `reapply` follows a change of what is claimed.

A next hop on no connected network is installed through the kernel's route to it, as Calico's
BIRD does with `gateway recursive` (dataplane/fib.py). The route table says, through a file
descriptor, when the kernel's routes change while it installs any such next hop; `follow_underlay`
waits for that and has the table resolve them again, so that a changed route to a node moves
the routes through it at once rather than at the next timed reconcile.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from itertools import repeat
from typing import Any, TypeVar

from percale.bgpd import collector
from percale.bgpd.prefixes import parse_prefix
from percale.bgpd.rib import FibChanges, Rib
from percale.bgpd.seams import BlackholeTable, RouteTable

log = logging.getLogger("percale.bgpd.programmer")

T = TypeVar("T")

# A change of the underlay comes as a burst (a link going down takes its addresses and routes
# with it, one notification each): they are let settle and taken as one.
UNDERLAY_SETTLE_SECONDS = 0.05


class FibProgrammer:
    def __init__(self, routes: RouteTable | None, blackholes: BlackholeTable | None, *,
                 claimed: Callable[[], Collection[Any]] | None = None,
                 peers: RouteTable | None = None) -> None:
        self.routes = routes
        self.blackholes = blackholes
        self.peers = peers  # the host routes to peers (reachableBy)
        self._peer_routes: dict[str, str] | None = None  # what `peers` was last told
        self._peer_prefixes: frozenset[Any] = frozenset()  # theirs, not the RIB's
        self._peer_retry = False  # the last telling failed
        # the prefixes another owner routes, asked for each batch: a set, so that a batch looks
        # at the smaller of the two (asking a predicate of each prefix of a 100k-route load was
        # 4% of the agent's share of it)
        self.claimed = claimed
        self.reconciled = False  # the kernel's routes were checked in full at least once
        self.swept = False  # routes adopted from before the restart were judged
        self._blocks: frozenset[str] | None = None
        # started with the first call, ended with the programmer (its thread exits when the
        # executor is collected)
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="percale-fib")

    async def _in_worker(self, call: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(
            self._worker, functools.partial(call, *args, **kwargs))

    async def apply(self, changes: FibChanges) -> None:
        """The RIB's changes since the last call, as one batch."""
        if not changes or self.routes is None:
            return
        excluded = self._claimed_among(changes.added, changes.changed)
        if not (changes.changed or changes.removed or excluded):
            await self._apply(changes.added)  # a load: no copy of a dict of every new route
            return
        if not (changes.added or changes.changed):
            # a flush (a peer gone): copying 100k prefixes into a dict took up to 50 ms before
            # the first delete could leave
            await self._apply(_Withdrawals(changes.removed))
            return
        batch: dict[Any, Any] = {**changes.added, **changes.changed}
        batch.update(dict.fromkeys(excluded))
        # fromkeys of a set reuses the hashes the set holds: a flush of 100k prefixes computes
        # none of them again
        batch.update(dict.fromkeys(changes.removed))
        await self._apply(batch)

    async def reapply(self, rib: Rib) -> None:
        """The whole RIB again, through the current exclusions: what became another owner's is
        withdrawn, what came back is installed (unchanged routes cost nothing)."""
        if self.routes is None:
            return
        claimed = self._claimed()
        await self._apply({p: (None if p in claimed else hops) for p, hops in rib.fib.items()})

    def _claimed(self) -> Collection[Any]:
        claimed = self.claimed() if self.claimed is not None else ()
        if self._peer_prefixes:
            return self._peer_prefixes.union(claimed)
        return claimed

    def _claimed_among(self, *routes: Mapping[Any, Any]) -> list[Any]:
        claimed = self._claimed()
        if not claimed:
            return []
        if len(claimed) < sum(map(len, routes)):
            return [p for p in claimed if any(p in r for r in routes)]
        return [p for r in routes for p in r if p in claimed]

    async def _apply(self, batch: Mapping[Any, Any]) -> None:
        assert self.routes is not None
        try:
            self._log_failed(await self._in_worker(self._paused_apply, batch))
        except Exception as err:  # the next reconcile repairs whatever did not land
            log.warning("programming routes failed: %s", err)

    @staticmethod
    def _log_failed(outcome: Any) -> None:
        if outcome.failed:
            log.warning("the kernel refused %d routes: %s", len(outcome.failed),
                        dict(list(outcome.failed.items())[:3]))

    async def follow_underlay(self) -> None:
        """Runs until cancelled: whenever the route table's `underlay_events` becomes readable
        (the kernel's routes, addresses or links changed while a next hop is installed through
        another route), the table resolves those next hops again (`follow_underlay`) in its
        thread. A table without `underlay_events` (one that resolves nothing, a test's
        stand-in) has nothing to follow: bgpd.seams does not ask for it."""
        events = getattr(self.routes, "underlay_events", None)
        if events is None:
            return
        follow = self.routes.follow_underlay  # type: ignore[union-attr]
        loop = asyncio.get_running_loop()
        changed = asyncio.Event()

        def readable() -> None:
            # level-triggered: left registered, it would fire on every turn of the loop until
            # the table's thread has read the notifications
            loop.remove_reader(events)
            changed.set()

        try:
            while True:
                loop.add_reader(events, readable)
                await changed.wait()
                changed.clear()
                await asyncio.sleep(UNDERLAY_SETTLE_SECONDS)
                try:
                    self._log_failed(await self._in_worker(follow))
                except Exception as err:  # noqa: BLE001 - the timed reconcile resolves again
                    log.warning("following the routes to next hops failed: %s", err)
        finally:
            loop.remove_reader(events)

    def _paused_apply(self, batch: Mapping[Any, Any]) -> Any:
        # the batch's plan and messages are objects too (bgpd/collector.py)
        assert self.routes is not None
        with collector.paused():
            return self.routes.apply(batch)

    async def own_blocks(self, blocks: Iterable[str], *, check: bool = False) -> None:
        """A blackhole for each of the node's own blocks; `check` reads the kernel first."""
        blocks = frozenset(blocks)
        if self.blackholes is None or (blocks == self._blocks and not check):
            return
        await asyncio.to_thread(self.blackholes.sync, blocks, check=check)
        self._blocks = blocks

    async def sweep(self, rib: Rib) -> None:
        """Routes adopted from before the restart that no peer re-announced go now."""
        if self.routes is not None:
            claimed = self._claimed()
            await self._in_worker(self.routes.replace_all,
                                  {p: hops for p, hops in rib.fib.items() if p not in claimed})
        self.swept = True

    async def reconcile(self) -> None:
        """A full dump of the kernel's BGP routes, repairing what changed behind our back: on a
        timer, not on every change (changes reach the kernel through `apply`)."""
        if self.routes is not None:
            await self._in_worker(self.routes.reconcile)
        if self.peers is not None and self._peer_routes is not None:
            if self._peer_retry:
                await self.peer_routes(self._peer_routes)
            else:
                self._log_refused(await self._in_worker(self.peers.reconcile))
        self.reconciled = True

    async def peer_routes(self, routes: Mapping[str, str]) -> bool:
        """Make the host routes to peers exactly `routes` (prefix -> gateway). Those prefixes
        are no longer the RIB's to install (as BIRD prefers its static route to a learned one):
        returns whether that set changed, for the caller to put the RIB through it again
        (`reapply`). A failure is logged and tried again by the next `reconcile`."""
        if self.peers is None:
            return False
        prefixes = frozenset(parse_prefix(prefix) for prefix in routes)
        changed, self._peer_prefixes = prefixes != self._peer_prefixes, prefixes
        if dict(routes) == self._peer_routes and not self._peer_retry:
            return changed
        self._peer_routes = dict(routes)
        try:
            outcome = await self._in_worker(
                self.peers.replace_all, {prefix: [gateway] for prefix, gateway in routes.items()})
        except Exception as err:  # noqa: BLE001 - the kernel's answer, not a bug of ours
            log.warning("programming the routes to BGP peers (reachableBy) failed: %s; trying "
                        "again at the next check", err)
            self._peer_retry = True
            return changed
        self._peer_retry = False
        self._log_refused(outcome)
        return changed

    @property
    def peer_routes_given(self) -> Mapping[str, str] | None:
        """The host routes to peers last asked for (None: never)."""
        return self._peer_routes

    def _log_refused(self, outcome: Any) -> None:
        assert self._peer_routes is not None
        for prefix, reason in outcome.failed.items():
            log.warning("the kernel refused the route to BGP peer %s via its reachableBy %s: %s",
                        prefix, self._peer_routes.get(str(prefix)), reason)


class _Withdrawals(Mapping[Any, None]):
    """Prefixes to withdraw, as the route table takes changes (prefix -> None), without a copy."""

    def __init__(self, prefixes: Collection[Any]) -> None:
        self._prefixes = prefixes

    def __getitem__(self, prefix: Any) -> None:
        if prefix not in self._prefixes:
            raise KeyError(prefix)
        return None

    def __iter__(self) -> Iterator[Any]:
        return iter(self._prefixes)

    def __len__(self) -> int:
        return len(self._prefixes)

    def items(self) -> Iterable[tuple[Any, None]]:  # type: ignore[override]
        # pairs made in C; the Mapping default would call __getitem__ per prefix
        return zip(self._prefixes, repeat(None))
