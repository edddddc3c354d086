"""A unix-socket server that only root can reach, for the agent's CNI and status sockets and the
ExaBGP bridge.

The socket is born with mode 0600: the process umask is narrowed around bind(2), so there is no
moment at which another user could connect (a chmod after bind leaves one). umask is
process-wide, so a file another thread creates in that instant is also created 0600 at most —
narrower, never wider.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from pathlib import Path

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def serve_unix(handler: Handler, path: str | Path, *, limit: int = 2**16) -> asyncio.AbstractServer:
    """Listen on `path` (its directory is made; a stale socket there is replaced) with `handler`
    for each connection; `limit` bounds one line a reader may buffer."""
    socket_path = Path(path)
    socket_path.parent.mkdir(parents=True, exist_ok=True)
    if socket_path.exists() or socket_path.is_symlink():
        socket_path.unlink()
    old_mask = os.umask(0o177)
    try:
        return await asyncio.start_unix_server(handler, path=str(socket_path), limit=limit)
    finally:
        os.umask(old_mask)
