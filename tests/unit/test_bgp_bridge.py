"""ExaBGP's bridge run as ExaBGP runs it: its stdin and stdout are pipes to ExaBGP, its argument
the agent's unix socket. Every test runs against both bridges, the compiled one
(bgpd/bridge.c) and the Python one (bgpd/bridge.py): percale-node runs whichever it finds, so
they must behave alike. Real ExaBGP runs the bridge in tests/interop and the labs.
"""

from __future__ import annotations

import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from percale.bgpd import speaker
from percale.ipc import compiled

pytestmark = pytest.mark.unit


@pytest.fixture(params=["compiled", "python"])
def bridge(request, tmp_path_factory) -> list[str]:
    if request.param == "python":
        return [sys.executable, "-I", "-S", str(Path(speaker.bridge.__file__))]
    binary = tmp_path_factory.mktemp("bin") / speaker.BRIDGE_BINARY
    return [str(compiled.build(speaker.BRIDGE_SOURCE, binary))]


@pytest.fixture
def path(tmp_path) -> Iterator[Path]:
    yield tmp_path / "exabgp.sock"


def listening(path: Path) -> socket.socket:
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(1)
    server.settimeout(5)
    return server


def start(bridge: list[str], path: Path) -> subprocess.Popen:
    return subprocess.Popen([*bridge, str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)


def read_line(stream, timeout: float = 5) -> bytes:
    fd, line = stream.fileno(), b""
    deadline = time.monotonic() + timeout
    while not line.endswith(b"\n"):
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        assert ready, f"nothing after {line!r}"
        chunk = os.read(fd, 1)
        assert chunk, f"end of stream after {line!r}"
        line += chunk
    return line


def stopped(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.kill()
    process.wait(5)
    for stream in (process.stdin, process.stdout, process.stderr):
        if stream:
            stream.close()


@contextmanager
def connected(bridge: list[str], path: Path) -> Iterator[tuple[subprocess.Popen, socket.socket]]:
    """The bridge started as ExaBGP starts it, and its connection as the agent accepts it."""
    with listening(path) as server:
        process = start(bridge, path)
        try:
            agent, _ = server.accept()
            with agent:
                agent.settimeout(5)
                yield process, agent
        finally:
            stopped(process)


def test_lines_go_both_ways(bridge, path):
    with connected(bridge, path) as (process, agent):
        process.stdin.write(b'{"type": "state"}\n')
        process.stdin.flush()
        received = b""
        while not received.endswith(b"\n"):
            received += agent.recv(4096)
        assert received == b'{"type": "state"}\n'
        agent.sendall(b"announce route 10.244.0.0/26 next-hop self\n")
        assert read_line(process.stdout) == b"announce route 10.244.0.0/26 next-hop self\n"


def test_events_still_reach_the_agent_while_exabgp_reads_no_commands(bridge, path):
    """ExaBGP busy (not reading the bridge's stdout) must not stop its events from being read:
    a bridge that waited on one direction would stall ExaBGP's whole reactor."""
    with connected(bridge, path) as (process, agent):
        agent.setblocking(False)
        # More than the pipe to ExaBGP holds (64 kB) and the socket's buffers: the bridge
        # blocks writing to ExaBGP, and the agent's sends then stop being taken.
        commands = b"x" * 1023 + b"\n"
        sent = 0
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline and sent < 4 << 20:
            try:
                sent += agent.send(commands)
            except BlockingIOError:
                time.sleep(0.01)
        assert sent > 128 << 10, "the agent's commands were not even taken"
        agent.setblocking(True)
        event = b'{"type": "update"}\n' * 1000
        process.stdin.write(event)
        process.stdin.flush()
        received = b""
        while len(received) < len(event):
            received += agent.recv(65536)
        assert received == event


def test_it_ends_when_the_agent_goes(bridge, path):
    with connected(bridge, path) as (process, agent):
        agent.close()
        assert process.wait(5) == 0


def test_it_ends_when_exabgp_closes_its_input(bridge, path):
    with connected(bridge, path) as (process, _):
        process.stdin.close()
        assert process.wait(5) == 0


def test_it_waits_for_an_agent_that_is_restarting(bridge, path):
    process = start(bridge, path)
    try:
        time.sleep(0.5)  # no socket yet: the agent is starting
        assert process.poll() is None
        with listening(path) as server:
            agent, _ = server.accept()
            with agent:
                agent.sendall(b"done\n")
                assert read_line(process.stdout) == b"done\n"
    finally:
        stopped(process)


def test_it_gives_up_waiting_once_exabgp_is_gone(bridge, path):
    """A bridge outliving its ExaBGP must not connect to the next agent and pass for an ExaBGP
    that is not there."""
    command = " ".join([*bridge, str(path)])
    # The shell stands for ExaBGP: it starts the bridge, tells its PID, and exits while the
    # bridge waits for the agent.
    parent = subprocess.run(["sh", "-c", f"{command} </dev/null >/dev/null 2>&1 & echo $!; sleep 0.5"],
                            capture_output=True, text=True, check=True)
    pid = int(parent.stdout)
    try:
        deadline = time.monotonic() + 5
        while not ended(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ended(pid), "the bridge outlived ExaBGP"
    finally:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def ended(pid: int) -> bool:
    """Gone, or a zombie its new parent has not reaped yet."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_the_speaker_runs_the_compiled_bridge_when_it_is_current(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    assert speaker.bridge_command() == [str(tmp_path / "python"), "-I", "-S",
                                        speaker.bridge.__file__]
    binary = compiled.build(speaker.BRIDGE_SOURCE, tmp_path / speaker.BRIDGE_BINARY)
    assert speaker.bridge_command() == [str(binary)]
    # Built from another source: not current, so not run.
    binary.with_name(binary.name + ".sha256").write_text("0" * 64 + "\n")
    assert speaker.bridge_command()[0] == str(tmp_path / "python")
