"""The agent's end of cni-plugin/PROTOCOL.md: a unix socket, one JSON line in, one JSON line out.

Requests are served concurrently; IPAM serialises allocations per node itself, and each pod's
netlink work runs in a dataplane worker thread, so one slow pod does not hold up the others.

Every request gets an answer; the connection is never just closed. A request too long or not
JSON is refused with the CNI code for it (7, 6); a handler that fails in a way no input explains
is a bug: its traceback goes to the log, the shim gets code 999 with one line saying so, and the
server carries on. (A closed connection makes the shim answer 11, "try again later", and a
runtime would retry a deterministic bug forever.)
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from percale.ipc.unix_server import serve_unix
from percale.node.cni_types import (
    DECODING_FAILURE,
    INTERNAL,
    INVALID_CONFIG,
    MAX_CONFIG_BYTES,
    MAX_REQUEST_BYTES,
    CNIError,
)

log = logging.getLogger("percale.node.cni")

DEFAULT_SOCKET = "/var/run/percale/cni.sock"

Handle = Callable[[Any], Awaitable[tuple[int, str]]]


async def answer(handle: Handle, line: bytes) -> tuple[int, str]:
    """(code, stdout) for one request line."""
    try:
        request = json.loads(line)
    except ValueError:  # UnicodeDecodeError too
        return DECODING_FAILURE, CNIError(DECODING_FAILURE, "the request is not JSON").to_json("1.0.0")
    try:
        code, out = await handle(request)
    except Exception as err:
        log.exception("CNI request failed: %s", _describe(request))
        message = f"percale-node failed on this request ({type(err).__name__}: {err}); see its log"
        return INTERNAL, CNIError(INTERNAL, message.splitlines()[0][:500]).to_json(_version(request))
    log.info("%s -> %s", _describe(request), code)
    return code, out


async def serve(handle: Handle, path: str = DEFAULT_SOCKET) -> asyncio.AbstractServer:
    """Listen on `path` (mode 0600: only root may ask for pod networking)."""

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                line: bytes | None = await reader.readuntil(b"\n")
            except asyncio.IncompleteReadError as err:
                line = err.partial  # the client closed its side after the line: serve it
            except asyncio.LimitOverrunError:
                line = None
                await _discard_line(reader)  # so a client still writing can read the answer
            if line is None:
                code, out = INVALID_CONFIG, CNIError(
                    INVALID_CONFIG, f"the request is over {MAX_REQUEST_BYTES} bytes; percale "
                    f"accepts network configurations up to {MAX_CONFIG_BYTES} bytes").to_json("1.0.0")
            elif not line.strip():
                return  # nothing was asked
            else:
                code, out = await answer(handle, line)
            writer.write(json.dumps({"code": code, "stdout": out}).encode() + b"\n")
            await writer.drain()
        except ConnectionError:
            pass  # the shim gave up waiting; nobody is left to answer
        finally:
            writer.close()

    return await serve_unix(on_connect, path, limit=MAX_REQUEST_BYTES + 1)


async def _discard_line(reader: asyncio.StreamReader, most: int = 256 << 20) -> None:
    seen = 0
    while seen < most:
        chunk = await reader.read(1 << 16)
        if not chunk or b"\n" in chunk:
            return
        seen += len(chunk)


def _describe(request: Any) -> str:
    if not isinstance(request, dict):
        return "a request that is not an object"
    return " ".join(str(request.get(k))[:80] for k in ("plugin", "command", "containerID"))


def _version(request: Any) -> str:
    try:
        version = json.loads(request["config"])["cniVersion"]
        return version if isinstance(version, str) else "1.0.0"
    except Exception:
        return "1.0.0"
