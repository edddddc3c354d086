"""The cyclic garbage collector, paused while routes are learned and programmed.

A 100k-route load makes about 600k objects that live on in the RIB and the FIB and form no
cycles. The collector, counting allocations, ran ~12 middle-generation collections and a full
one over the whole heap during such a load (bench/bgp.py: 50-60 ms, all of it holding the GIL
that the load is bound by). The agent reads ExaBGP's lines on the event loop while the route
table's thread programs the batches before them, so a pause around one of them alone left the
other's allocations to start collections.

Pauses are counted across threads: the collector is off while any is held, and back on (if it
was on before the first) when the last is resumed. The agent holds one from the first UPDATE of
a burst until its routes are in the kernel (`BGPAgent._programming`), and the route table's
thread one per batch; garbage waits at most a burst (or MAX_PAUSE_SECONDS), and the collection
after it runs once.
"""

from __future__ import annotations

import gc
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

# A pause that goes on this long (routes changing without a break) collects the young
# generations at the next pause taken, so garbage cannot pile up for ever.
MAX_PAUSE_SECONDS = 10.0

_lock = threading.Lock()
_inside = 0
_was_enabled = False
_since = 0.0  # when the collector was last paused, or last collected during a pause


def pause() -> None:
    """One more reason to keep the collector off; `resume()` takes it back."""
    global _inside, _was_enabled, _since
    with _lock:
        if _inside == 0:
            _was_enabled = gc.isenabled()
            gc.disable()
            _since = time.monotonic()
        elif _was_enabled and time.monotonic() - _since > MAX_PAUSE_SECONDS:
            gc.collect(1)
            _since = time.monotonic()
        _inside += 1


def resume() -> None:
    global _inside
    with _lock:
        _inside -= 1
        if _inside == 0 and _was_enabled:
            gc.enable()


@contextmanager
def paused() -> Iterator[None]:
    pause()
    try:
        yield
    finally:
        resume()
