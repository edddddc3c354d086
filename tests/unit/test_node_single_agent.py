"""One percale-node per state directory (node/main.py's hold_agent_lock), and a socket file
removed on the way out only while it is the one this process bound (ipc/unix_server.SocketFile).

A second agent started for the same node was not refused (only the health port stopped it, by
chance): both served the same cni.sock and status.sock (serving replaces whatever is at the
path), killed each other's ExaBGP for ever through the shared exabgp.pid, and the first to stop
removed the sockets the other served."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from percale.ipc.unix_server import SocketFile, serve_unix
from percale.node.main import LOCK_FILE, AgentRunning, hold_agent_lock

pytestmark = pytest.mark.unit

NODE = Path(sys.executable).with_name("percale-node")
UNREACHABLE_ETCD = "http://127.0.0.1:9"


def test_a_second_holder_of_the_state_directory_is_refused_naming_the_first(tmp_path):
    first = hold_agent_lock(tmp_path / "bgp", "node1")
    try:
        with pytest.raises(AgentRunning) as refused:
            hold_agent_lock(tmp_path / "bgp", "node1")
        assert str(refused.value) == (f"another percale-node (pid {os.getpid()}) is running for "
                                      f"node node1 (lock {tmp_path / 'bgp' / LOCK_FILE})")
    finally:
        os.close(first)
    # Let go with the descriptor (as when the process ends, however it ends): the next one runs.
    os.close(hold_agent_lock(tmp_path / "bgp", "node1"))


def test_the_lock_is_not_inherited_by_the_agents_children(tmp_path):
    """ExaBGP runs in a session of its own and outlives a killed agent: holding the lock, it
    would keep every later agent of the node out."""
    fd = hold_agent_lock(tmp_path, "node1")
    try:
        assert not os.get_inheritable(fd)
    finally:
        os.close(fd)


def start_agent(tmp_path: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k not in ("NODENAME", "IP", "IP6", "AS")}
    env |= {"ETCD_ENDPOINTS": UNREACHABLE_ETCD, "NODENAME": "n1", "IP": "none",
            "PERCALE_CNI_SOCKET": str(tmp_path / "cni.sock"),
            "PERCALE_STATUS_SOCKET": str(tmp_path / "status.sock"),
            "PERCALE_MTU_FILE": str(tmp_path / "mtu"), "PERCALE_BGP_DIR": str(tmp_path / "bgp"),
            # No health port: a second agent's would be taken, which stopped it by chance.
            "PERCALE_HEALTH_LISTEN": ""}
    return subprocess.Popen([str(NODE)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def test_a_second_agent_for_the_node_exits_naming_the_first(tmp_path):
    """The first waits for its datastore (none listens); the second is refused at once, in one
    line, before it would bind anything."""
    first = start_agent(tmp_path)
    try:
        lock = tmp_path / "bgp" / LOCK_FILE
        deadline = time.monotonic() + 20
        while not (lock.exists() and lock.read_text().strip()):
            if first.poll() is not None:
                raise AssertionError(f"the first agent exited: {first.communicate()}")
            assert time.monotonic() < deadline, "the first agent took no lock within 20 s"
            time.sleep(0.05)
        second = start_agent(tmp_path)
        try:
            _, err = second.communicate(timeout=20)
        finally:
            if second.poll() is None:
                second.kill()
                second.wait()
        assert second.returncode == 1
        assert err.strip() == (f"percale-node: another percale-node (pid {first.pid}) is running "
                               f"for node n1 (lock {lock})"), err
        assert first.poll() is None
    finally:
        if first.poll() is None:
            os.kill(first.pid, signal.SIGTERM)
        try:
            first.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            first.kill()
            first.communicate()


async def test_a_socket_file_another_process_bound_since_is_left_to_it(tmp_path):
    path = tmp_path / "cni.sock"

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"second\n")
        await writer.drain()
        writer.close()

    first = await serve_unix(answer, path)
    mine = SocketFile.of(path)
    second = await serve_unix(answer, path)  # replaces the file at the path
    try:
        first.close()
        assert mine is not None and not mine.unlink()
        reader, writer = await asyncio.open_unix_connection(str(path))
        assert await reader.readline() == b"second\n"
        writer.close()
        theirs = SocketFile.of(path)
        assert theirs is not None and theirs.unlink() and not path.exists()
        assert not theirs.unlink()  # gone already
    finally:
        first.close()
        second.close()
