"""The CNI shim run the way a container runtime runs it: `/usr/bin/python3 -IS <plugin>` with the
CNI_* environment and the network config on stdin. A fake percale-node records what it is asked.

The request must match cni-plugin/PROTOCOL.md field for field, because the real agent is written
against that document and not against this shim.
"""

from __future__ import annotations

import json
import os
import shutil
import socketserver
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

SHIM = Path(__file__).resolve().parents[2] / "cni-plugin" / "percale_cni" / "shim.py"
PYTHON = "/usr/bin/python3"
DEFAULT_SOCKET = "/var/run/percale/cni.sock"
SUPPORTED = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]
REQUEST_FIELDS = {"plugin", "command", "containerID", "netns", "ifname", "args", "path", "config"}
ERROR_FIELDS = {"cniVersion", "code", "msg", "details"}

CONFIG = {"cniVersion": "1.0.0", "name": "k8s-pod-network", "type": "percale",
          "nodename": "node1", "mtu": 0, "ipam": {"type": "percale-ipam"}}
FULL_ENV = {
    "CNI_CONTAINERID": "0123abcd", "CNI_NETNS": "/var/run/netns/pod1", "CNI_IFNAME": "eth0",
    "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=nginx",
    "CNI_PATH": "/opt/cni/bin",
}


@dataclass
class Ran:
    code: int
    out: bytes
    err: str

    @property
    def json(self) -> dict:
        return json.loads(self.out)


def run_plugin(command: str | None, stdin: str | bytes, *, plugin: Path = SHIM,
               env: dict | None = None, drop: tuple[str, ...] = (), direct: bool = False) -> Ran:
    """Run the plugin as a runtime does. `drop` removes variables from the full CNI environment.
    With `direct` the file is exec'd itself, so its #! line chooses the interpreter."""
    environ = {k: v for k, v in FULL_ENV.items() if k not in drop}
    if command is not None:
        environ["CNI_COMMAND"] = command
    environ.update(env or {})
    data = stdin.encode() if isinstance(stdin, str) else stdin
    argv = [str(plugin)] if direct else [PYTHON, "-IS", str(plugin)]
    done = subprocess.run(argv, input=data, env=environ, capture_output=True, timeout=30)
    return Ran(done.returncode, done.stdout, done.stderr.decode())


def conf(**extra) -> str:
    return json.dumps({**CONFIG, **extra})


@dataclass
class FakeAgent:
    """A percale-node on a unix socket: it records each request line as received and answers
    each with `answer`, sent as one line. Set `answer` to None to close without answering."""

    path: str
    answer: bytes | None = b'{"code": 0, "stdout": "{}"}\n'
    received: list[bytes] = field(default_factory=list)

    def __post_init__(self) -> None:
        agent = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                agent.received.append(self.rfile.readline())
                if agent.answer is not None:
                    self.wfile.write(agent.answer)

        self.server = socketserver.ThreadingUnixStreamServer(self.path, Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.02,), daemon=True)
        self.thread.start()

    def reply(self, code: int, stdout: str) -> None:
        self.answer = (json.dumps({"code": code, "stdout": stdout}) + "\n").encode()

    @property
    def requests(self) -> list[dict]:
        return [json.loads(line) for line in self.received]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def sockets() -> Iterator[Path]:
    """A short directory for sockets: a unix socket path must fit in 108 bytes."""
    directory = tempfile.mkdtemp(prefix="pcni-")
    yield Path(directory)
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def agents(sockets: Path) -> Iterator:
    started: list[FakeAgent] = []

    def start(name: str = "agent.sock") -> FakeAgent:
        started.append(FakeAgent(str(sockets / name)))
        return started[-1]

    yield start
    for agent in started:
        agent.close()


@pytest.fixture
def agent(agents) -> FakeAgent:
    return agents()


@pytest.fixture
def installed(tmp_path: Path) -> Path:
    """The shim copied under both plugin names, as `percalectl cni install` leaves it."""
    for name in ("percale", "percale-ipam"):
        shutil.copy(SHIM, tmp_path / name)
        (tmp_path / name).chmod(0o755)
    return tmp_path


def assert_error(ran: Ran, code: int, *words: str, cni_version: str = "1.0.0") -> dict:
    assert ran.code == 1, ran
    error = ran.json
    assert set(error) == ERROR_FIELDS
    assert (error["cniVersion"], error["code"]) == (cni_version, code), error
    for word in words:
        assert word in error["msg"], error
    return error


# VERSION: the shim answers without an agent.

@pytest.mark.parametrize("stdin, version", [
    ('{"cniVersion": "1.0.0"}', "1.0.0"),
    ('{"cniVersion": "0.4.0"}', "0.4.0"),
    ("", "1.1.0"),
    ("{}", "1.1.0"),
])
def test_version_is_answered_by_the_shim(stdin, version):
    ran = run_plugin("VERSION", stdin, drop=tuple(FULL_ENV))
    assert (ran.code, ran.err) == (0, "")
    assert ran.json == {"cniVersion": version, "supportedVersions": SUPPORTED}


# Errors the shim gives itself, with no request sent.

@pytest.mark.parametrize("command", [None, "", "add", "BOGUS"])
def test_missing_or_unknown_command_is_code_4(command, agent):
    ran = run_plugin(command, conf(agent_socket=agent.path))
    assert_error(ran, 4, "CNI_COMMAND")
    assert agent.received == []


@pytest.mark.parametrize("command, missing", [
    ("ADD", "CNI_NETNS"), ("ADD", "CNI_CONTAINERID"), ("ADD", "CNI_IFNAME"),
    ("CHECK", "CNI_NETNS"), ("DEL", "CNI_CONTAINERID"), ("DEL", "CNI_IFNAME"),
])
def test_a_command_without_a_variable_it_needs_is_code_4(command, missing, agent):
    ran = run_plugin(command, conf(agent_socket=agent.path), drop=(missing,))
    assert_error(ran, 4, command, missing)
    assert agent.received == []


def test_an_empty_variable_counts_as_missing(agent):
    ran = run_plugin("ADD", conf(agent_socket=agent.path), env={"CNI_NETNS": ""})
    assert_error(ran, 4, "CNI_NETNS")


@pytest.mark.parametrize("stdin", [
    "not json", "", "   ", '{"cniVersion": "1.0.0"', '{"a": 1} trailing', "[1, 2]", '"text"',
    b'{"name": "\xff"}',
])
def test_stdin_that_is_not_a_json_object_is_code_6(stdin, agent):
    ran = run_plugin("ADD", stdin, env={"PERCALE_CNI_SOCKET": agent.path})
    assert_error(ran, 6, "not a JSON object", cni_version="1.1.0")
    assert agent.received == []


def test_stdin_over_a_mebibyte_is_code_7_and_the_agent_is_not_asked(agent):
    ran = run_plugin("ADD", conf(agent_socket=agent.path, padding="x" * (1 << 20)))
    assert_error(ran, 7, "bytes")
    assert agent.received == []


def test_a_missing_socket_is_code_11_naming_the_socket(sockets):
    missing = str(sockets / "nobody-listens.sock")
    ran = run_plugin("ADD", conf(agent_socket=missing))
    error = assert_error(ran, 11, missing)
    assert "No such file" in error["msg"]


def test_a_socket_with_no_listener_is_code_11(sockets):
    stale = sockets / "stale.sock"
    FakeAgent(str(stale)).close()  # leaves the socket file with nothing behind it
    assert stale.exists()
    ran = run_plugin("DEL", conf(agent_socket=str(stale)))
    assert_error(ran, 11, str(stale))


def test_an_agent_that_closes_without_answering_is_code_11(agent):
    agent.answer = None
    ran = run_plugin("ADD", conf(agent_socket=agent.path))
    assert_error(ran, 11, agent.path, "without answering")
    assert len(agent.received) == 1


@pytest.mark.parametrize("answer", [b"garbage\n", b'{"stdout": "x"}\n', b'{"code": "0", "stdout": "x"}\n'])
def test_an_answer_not_in_the_protocol_is_an_internal_error(answer, agent):
    agent.answer = answer
    ran = run_plugin("ADD", conf(agent_socket=agent.path))
    assert_error(ran, 999, agent.path)


@pytest.mark.parametrize("value", [5, "", ["/run/a.sock"]])
def test_an_agent_socket_that_is_not_a_path_is_code_7(value):
    ran = run_plugin("ADD", conf(agent_socket=value))
    assert_error(ran, 7, "agent_socket")


# Requests forwarded to the agent.

def test_add_sends_the_protocol_request_and_prints_the_answer_verbatim(agent):
    # Pretty-printed, non-ASCII and with a prevResult: the agent must get stdin exactly as sent.
    stdin = json.dumps({**CONFIG, "agent_socket": agent.path, "note": "café ☕",
                        "prevResult": {"cniVersion": "1.0.0", "ips": []}}, indent=2,
                       ensure_ascii=False) + "\n"
    result = '{"cniVersion": "1.0.0", "ips": [{"address": "10.0.0.5/32"}], "note": "é"}\n'
    agent.reply(0, result)

    ran = run_plugin("ADD", stdin)

    assert (ran.code, ran.err) == (0, "")
    assert ran.out == result.encode()
    [line] = agent.received
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    request = json.loads(line)
    assert set(request) == REQUEST_FIELDS
    assert request == {
        "plugin": "percale", "command": "ADD", "containerID": "0123abcd",
        "netns": "/var/run/netns/pod1", "ifname": "eth0",
        "args": "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=nginx",
        "path": "/opt/cni/bin", "config": stdin,
    }


@pytest.mark.parametrize("code", [7, 11, 100])
def test_an_agent_error_is_printed_verbatim_and_exits_1(code, agent):
    error = json.dumps({"cniVersion": "1.0.0", "code": code, "msg": "no", "details": "d"})
    agent.reply(code, error)
    ran = run_plugin("ADD", conf(agent_socket=agent.path))
    assert (ran.code, ran.out) == (1, error.encode())


def test_del_without_netns_is_forwarded(agent):
    agent.reply(0, "")
    ran = run_plugin("DEL", conf(agent_socket=agent.path), drop=("CNI_NETNS",))
    assert (ran.code, ran.out) == (0, b"")
    [request] = agent.requests
    assert (request["command"], request["netns"], request["containerID"]) == ("DEL", "", "0123abcd")


@pytest.mark.parametrize("command", ["CHECK", "STATUS", "GC"])
def test_other_commands_are_forwarded(command, agent):
    # GC and STATUS concern no container: the runtime sets only CNI_COMMAND and CNI_PATH.
    drop = ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_ARGS") if command != "CHECK" else ()
    ran = run_plugin(command, conf(agent_socket=agent.path), drop=drop)
    assert ran.code == 0
    [request] = agent.requests
    assert set(request) == REQUEST_FIELDS
    assert request["command"] == command
    if drop:
        assert request["containerID"] == request["netns"] == request["ifname"] == ""


# The plugin's name is the name it was run under.

@pytest.mark.parametrize("name, plugin", [("percale", "percale"), ("percale-ipam", "percale-ipam")])
def test_the_plugin_name_comes_from_the_file_name(name, plugin, installed, agent):
    ran = run_plugin("ADD", conf(agent_socket=agent.path), plugin=installed / name)
    assert ran.code == 0
    assert agent.requests[0]["plugin"] == plugin


def test_an_installed_copy_runs_by_its_own_shebang(installed, agent):
    ran = run_plugin("ADD", conf(agent_socket=agent.path), plugin=installed / "percale-ipam", direct=True)
    assert ran.code == 0
    assert agent.requests[0]["plugin"] == "percale-ipam"


def test_any_other_name_is_percale(agent):
    run_plugin("ADD", conf(agent_socket=agent.path))  # run as shim.py
    assert agent.requests[0]["plugin"] == "percale"


# Which socket: the config's agent_socket, then $PERCALE_CNI_SOCKET, then the default.

def test_the_config_socket_beats_the_environment(agents):
    in_config, in_env = agents("config.sock"), agents("env.sock")
    ran = run_plugin("ADD", conf(agent_socket=in_config.path), env={"PERCALE_CNI_SOCKET": in_env.path})
    assert ran.code == 0
    assert (len(in_config.received), len(in_env.received)) == (1, 0)


def test_the_environment_is_used_when_the_config_names_no_socket(agent):
    ran = run_plugin("ADD", conf(), env={"PERCALE_CNI_SOCKET": agent.path})
    assert ran.code == 0
    assert len(agent.received) == 1


def test_the_default_socket_is_used_last():
    if os.path.exists(DEFAULT_SOCKET):
        pytest.skip(f"a percale-node is serving {DEFAULT_SOCKET} on this machine")
    ran = run_plugin("ADD", conf())
    assert_error(ran, 11, DEFAULT_SOCKET)


# Speed: the shim must not import the packages that make a Python start slow.

@pytest.mark.parametrize("command", ["VERSION", "ADD"])
def test_the_shim_imports_neither_json_nor_socket(command, agent):
    environ = {**FULL_ENV, "CNI_COMMAND": command}
    done = subprocess.run([PYTHON, "-IS", "-X", "importtime", str(SHIM)],
                          input=conf(agent_socket=agent.path).encode(), env=environ,
                          capture_output=True, timeout=30)
    assert done.returncode == 0, done
    imported = {line.rsplit("|", 1)[1].strip() for line in done.stderr.decode().splitlines()
                if line.startswith("import time:") and "|" in line}
    assert imported, done.stderr
    assert not imported & {"json", "socket", "re", "enum", "selectors"}, sorted(imported)
