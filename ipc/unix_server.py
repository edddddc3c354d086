"""A unix-socket server that only root can reach, for the agent's CNI and status sockets and the
ExaBGP bridge.

The socket is born with mode 0600: the process umask is narrowed around bind(2), so there is no
moment at which another user could connect (a chmod after bind leaves one). umask is
process-wide, so a file another thread creates in that instant is also created 0600 at most —
narrower, never wider.

A stale socket at the path is replaced, so on its way out a process removes its socket file only
if it is still the one it bound (SocketFile): a second process serving the same path since then
owns the file, and its clients lost it when the first one stopped.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
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


@dataclass(frozen=True)
class SocketFile:
    """The file a socket was bound at, as it was then: its device and inode tell it from a file
    another process bound at the same path later."""

    path: Path
    device: int
    inode: int

    @classmethod
    def of(cls, path: str | Path) -> SocketFile | None:
        """The file at `path` now (just after binding it); None if there is none."""
        try:
            found = os.stat(path, follow_symlinks=False)
        except OSError:
            return None
        return cls(Path(path), found.st_dev, found.st_ino)

    def unlink(self) -> bool:
        """Remove the file if it is still this one; False if it is gone or another's."""
        if SocketFile.of(self.path) != self:
            return False
        self.path.unlink(missing_ok=True)
        return True
