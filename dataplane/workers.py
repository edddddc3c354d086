"""The agent's dataplane workers: warm, single-threaded processes that run pod wiring
(dataplane/pod_network.py) for it.

    workers = DataplaneWorkers()
    await workers.start()
    link = await workers.run(pod_network.create_link, netns, "eth0", host_veth, 1450)

Why processes: pod wiring steps into the pod's network namespace with setns(2). A thread of the
agent could do that too (setns moves only the calling thread), but a crash or a stuck netlink
call in a worker cannot take the agent's event loop, its gRPC channel or its BGP bridge with it,
and several pods are wired at once without one GIL. Workers fork from a clean forkserver process
that imported only the dataplane modules: they start in a millisecond, hold none of the agent's
threads, and ignore the stop signals a Ctrl-C sends to the agent's whole process group (the agent
stops them itself, after the pods in flight).

Two, not four: bench/cni.py wired 40 pods at once as fast with two (0.70 s) as with four
(0.80 s) on two cores — the kernel's work is the cost.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import signal
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from typing import TypeVar, TypeVarTuple, Unpack

from percale.dataplane import pod_network

DEFAULT_WORKERS = 2

T = TypeVar("T")
Ts = TypeVarTuple("Ts")


def ignore_stop_signals() -> None:
    """A worker's initializer: a Ctrl-C or SIGTERM sent to the agent's process group must not
    kill a worker halfway through a pod."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


class DataplaneWorkers:
    def __init__(self, count: int = DEFAULT_WORKERS) -> None:
        self.count = count
        self._pool: ProcessPoolExecutor | None = None

    async def start(self) -> None:
        """Start the workers and return once every one has run its initializer: until then a
        Ctrl-C to the agent's process group would kill it."""
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(["percale.dataplane.pod_network"])
        self._pool = ProcessPoolExecutor(self.count, mp_context=context,
                                         initializer=ignore_stop_signals)
        started: set[int] = set()
        for _ in range(200):
            started |= set(await asyncio.gather(
                *(self.run(pod_network.warm_up) for _ in range(self.count))))
            if len(started) >= self.count:
                return
            await asyncio.sleep(0.01)

    async def run(self, function: Callable[[Unpack[Ts]], T], *args: Unpack[Ts]) -> T:
        """`function(*args)` in a worker; its exceptions are raised here."""
        if self._pool is None:
            await self.start()
        assert self._pool is not None
        return await asyncio.get_running_loop().run_in_executor(self._pool, function, *args)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
