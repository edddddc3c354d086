"""percale-node's /livez, /readyz and /metrics, over real HTTP on loopback.

The BGP driver is stood in for by a plain object with the same attributes (peers, rib, fib,
synced, reconciled): the endpoints only read those."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from percale.node import health
from tests.helpers.etcd_server import free_port

pytestmark = pytest.mark.unit


async def get(port: int, path: str) -> tuple[int, str]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await writer.drain()
    data = (await reader.read()).decode()
    writer.close()
    head, _, body = data.partition("\r\n\r\n")
    return int(head.split()[1]), body


async def test_live_ready_and_metrics():
    peer = SimpleNamespace(state="start")
    bgp = SimpleNamespace(peers={"10.0.0.2": peer}, rib=SimpleNamespace(fib={"10.244.1.0/26": {1}}),
                          fib=SimpleNamespace(programmed={"10.244.1.0/26": {1}}),
                          synced=False, reconciled=False)
    port = free_port()
    server = await health.serve(bgp, "127.0.0.1", port)
    try:
        assert await get(port, "/livez") == (200, "ok\n")
        status, body = await get(port, "/readyz")
        assert status == 503
        assert "not been configured" in body and "not been reconciled" in body
        assert "BGP not established with 10.0.0.2" in body

        bgp.synced = bgp.reconciled = True
        peer.state = "up"
        assert await get(port, "/readyz") == (200, "ok\n")

        status, metrics = await get(port, "/metrics")
        assert status == 200
        assert 'percale_bgp_sessions{state="established"} 1.0' in metrics
        assert "percale_bgp_routes_learned 1.0" in metrics
        assert "percale_bgp_routes_programmed 1.0" in metrics
        assert "percale_bgp_sync_seconds_bucket" in metrics
        assert (await get(port, "/nope"))[0] == 404
    finally:
        server.close()
        await server.wait_closed()
