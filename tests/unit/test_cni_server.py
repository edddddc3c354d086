"""The agent's CNI socket server (node/cni_server.py) with a handler that has a bug: every
request gets an answer, a bug is code 999 in one line (never a closed connection, which the shim
turns into 11 and a runtime into endless retries), and the server serves the next request."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import stat

import pytest

from percale.node.cni_server import serve

pytestmark = pytest.mark.unit


async def ask(path: str, line: bytes) -> dict:
    reader, writer = await asyncio.open_unix_connection(path)
    writer.write(line)
    await writer.drain()
    answer = json.loads(await reader.readline())
    writer.close()
    return answer


async def test_a_bug_is_answered_with_999_and_the_server_carries_on(tmp_path, caplog):
    async def handle(request):
        if request.get("command") == "BUG":
            raise KeyError("no such thing\nsecond line")
        return 0, "fine"

    path = str(tmp_path / "cni.sock")
    server = await serve(handle, path)
    try:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        with caplog.at_level(logging.ERROR, logger="percale.node.cni"):
            bug = await ask(path, json.dumps({"command": "BUG", "config": '{"cniVersion": "0.4.0"}'}).encode() + b"\n")
        assert bug["code"] == 999
        error = json.loads(bug["stdout"])
        assert error["code"] == 999 and error["cniVersion"] == "0.4.0"
        assert "KeyError" in error["msg"] and "\n" not in error["msg"]
        assert "Traceback" in caplog.text  # the whole story is in the agent's log
        assert await ask(path, b'{"command": "ADD"}\n') == {"code": 0, "stdout": "fine"}
        not_json = await ask(path, b"\x00\xff not json\n")
        assert not_json["code"] == 6
    finally:
        server.close()
        await server.wait_closed()
