"""The agent's end of cni-plugin/PROTOCOL.md: a unix socket, one JSON line in, one JSON line out.

Requests are served concurrently; IPAM serialises allocations per node itself, and each pod's
netlink work runs in a thread so one slow pod does not hold up the others.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from pathlib import Path

from percale.node.cni_handlers import CNIHandlers
from percale.node.cni_types import DECODING_FAILURE, CNIError

log = logging.getLogger("percale.node.cni")

DEFAULT_SOCKET = "/var/run/percale/cni.sock"


async def serve(handlers: CNIHandlers, path: str = DEFAULT_SOCKET) -> asyncio.AbstractServer:
    """Listen on `path` (mode 0600: only root may ask for pod networking)."""
    socket_path = Path(path)
    socket_path.parent.mkdir(parents=True, exist_ok=True)
    if socket_path.exists() or socket_path.is_symlink():
        socket_path.unlink()

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await reader.readline()
            try:
                request = json.loads(line)
            except ValueError:
                code, out = DECODING_FAILURE, CNIError(DECODING_FAILURE, "request is not JSON").to_json("1.0.0")
            else:
                code, out = await handlers.handle(request)
                log.info("%s %s %s -> %s", request.get("plugin"), request.get("command"),
                         request.get("containerID"), code)
            writer.write(json.dumps({"code": code, "stdout": out}).encode() + b"\n")
            await writer.drain()
        except Exception:  # a bug must not take the server down; the shim sees the socket close
            log.exception("CNI request failed")
        finally:
            writer.close()

    old_mask = os.umask(0o177)
    try:
        server = await asyncio.start_unix_server(on_connect, path=str(socket_path), limit=2**22)
    finally:
        os.umask(old_mask)
    os.chmod(socket_path, 0o600)
    return server
