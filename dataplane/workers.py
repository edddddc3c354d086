"""The agent's dataplane workers: threads of the agent that run pod wiring
(dataplane/pod_network.py) for it, off its event loop.

    workers = DataplaneWorkers()
    await workers.start()
    link = await workers.run(pod_network.create_link, netns, "eth0", host_veth, 1450)

Why threads: pod wiring steps into the pod's network namespace with setns(2), which moves only
the calling thread, and pod_network steps back before it returns; each thread keeps its own
netlink socket in the node's namespace (pod_network._host_netlink). The work is mostly the
kernel's (a veth pair, addresses, routes) and is done with the GIL released, so threads wire
several pods at once as well as processes did. Until #15 these were two worker processes forked
from a forkserver: they cost about 80 MB of PSS for nothing but isolation, and each call paid a
pickle round trip to another process. A thread cannot be killed halfway through a pod by a Ctrl-C
to the agent's process group either: signals reach the main thread only, and the agent closes the
pool after the pods in flight.

Four threads: bench/cni.py wires 100 pods at once on two cores; the kernel's work is the cost,
and more threads only queue on the same locks (rtnl) in the kernel.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar, TypeVarTuple, Unpack

from percale.dataplane import pod_network

DEFAULT_WORKERS = 4

T = TypeVar("T")
Ts = TypeVarTuple("Ts")


class DataplaneWorkers:
    def __init__(self, count: int = DEFAULT_WORKERS) -> None:
        self.count = count
        self._pool: ThreadPoolExecutor | None = None

    async def start(self) -> None:
        """Start the threads, each with its netlink socket open, so the first pods pay no
        start-up cost."""
        self._pool = ThreadPoolExecutor(self.count, thread_name_prefix="dataplane")
        await asyncio.gather(*(self.run(pod_network.warm_up) for _ in range(self.count)))

    async def run(self, function: Callable[[Unpack[Ts]], T], *args: Unpack[Ts]) -> T:
        """`function(*args)` in a worker thread; its exceptions are raised here."""
        if self._pool is None:
            await self.start()
        assert self._pool is not None
        return await asyncio.get_running_loop().run_in_executor(self._pool, function, *args)

    def close(self) -> None:
        """Stop taking work; the pods being wired are finished first."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
