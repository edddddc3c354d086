"""The part every benchmark script's main() shares: it must run as root, SIGTERM unwinds like
Ctrl-C (so each script's own `finally` stops its daemons and removes its namespaces either way),
and a stop is reported in one line, not a traceback."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable


def run_script(name: str, run: Callable[[], int | None], *, cleaned: str,
               needs_root: bool = True) -> int:
    """Call `run()`; its return value (None: 0) is the exit status. `cleaned` says what was
    removed when the run is interrupted."""
    if needs_root and os.geteuid() != 0:
        print(f"{name} needs root (network namespaces)", file=sys.stderr)
        return 1
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        return run() or 0
    except KeyboardInterrupt:
        print(f"interrupted; {cleaned}", file=sys.stderr)
        return 130
    except RuntimeError as err:
        # A worker's failure arrives here with its traceback in the message.
        print(f"benchmark stopped: {err}", file=sys.stderr)
        return 1
