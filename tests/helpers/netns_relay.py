"""A TCP relay from inside a network namespace to an address in this machine's own: how an agent
running in a test node's namespace reaches the kube-apiserver listening on the host's loopback.

The listening socket is made inside the namespace (a socket keeps the namespace it was created
in), then the process returns to its own namespace, where every outgoing connection is made.

    python -m tests.helpers.netns_relay NETNS LISTEN_PORT TARGET_HOST TARGET_PORT
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import socket
import sys

CLONE_NEWNET = 0x40000000


def _setns(fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        raise OSError(ctypes.get_errno(), "setns")


def listen_in(netns: str, port: int) -> socket.socket:
    home = os.open("/proc/self/ns/net", os.O_RDONLY)
    target = os.open(f"/var/run/netns/{netns}", os.O_RDONLY)
    try:
        _setns(target)
        sock = socket.create_server(("127.0.0.1", port), reuse_port=False)
    finally:
        _setns(home)
        os.close(target)
        os.close(home)
    return sock


async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        writer.close()


async def serve(sock: socket.socket, host: str, port: int) -> None:
    async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(host, port)
        except OSError:
            writer.close()
            return
        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    server = await asyncio.start_server(relay, sock=sock)
    async with server:
        await server.serve_forever()


def main() -> None:
    netns, listen_port, host, port = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    sock = listen_in(netns, listen_port)
    print("ready", flush=True)
    asyncio.run(serve(sock, host, port))


if __name__ == "__main__":
    main()
