"""The CNI shims run the way a container runtime runs them: the compiled one (shim.c) exec'd,
the Python one as `/usr/bin/python3 -IS <plugin>`, with the CNI_* environment and the network
config on stdin. A fake percale-node records what it is asked. Every test runs against both
shims: they must answer alike.

The request must match cni-plugin/PROTOCOL.md field for field, because the real agent is written
against that document and not against either shim.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import socketserver
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.helpers.shims import compiled_shim

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


class UnderTest:
    """The shim the current test runs: set by the `shim` fixture."""
    kind = "python"
    path = SHIM


@pytest.fixture(params=["compiled", "python"], autouse=True)
def shim(request) -> str:
    UnderTest.kind = request.param
    UnderTest.path = compiled_shim() if request.param == "compiled" else SHIM
    return request.param


def run_plugin(command: str | None, stdin: str | bytes, *, plugin: Path | None = None,
               env: dict | None = None, drop: tuple[str, ...] = (), direct: bool = False) -> Ran:
    """Run the plugin as a runtime does. `drop` removes variables from the full CNI environment.
    With `direct` the file is exec'd itself, so its #! line chooses the interpreter (the compiled
    shim is always exec'd itself)."""
    plugin = plugin or UnderTest.path
    environ = {k: v for k, v in FULL_ENV.items() if k not in drop}
    if command is not None:
        environ["CNI_COMMAND"] = command
    environ.update(env or {})
    data = stdin.encode() if isinstance(stdin, str) else stdin
    argv = [str(plugin)] if direct or UnderTest.kind == "compiled" else [PYTHON, "-IS", str(plugin)]
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
        shutil.copy(UnderTest.path, tmp_path / name)
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


@pytest.mark.parametrize("stdin", ["[" * 1200 + "]" * 1200, '{"a":' * 1200 + "1" + "}" * 1200])
@pytest.mark.parametrize("command", ["ADD", "VERSION"])
def test_a_config_nested_past_what_json_reads_is_code_6(stdin, command, agent):
    """It was 999, "failed: RecursionError", as if percale had a bug."""
    ran = run_plugin(command, stdin, env={"PERCALE_CNI_SOCKET": agent.path})
    assert_error(ran, 6, "nests too deeply to read", cni_version="1.1.0")
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


def _full_listener(path: str) -> tuple[socket.socket, socket.socket]:
    """A listener whose queue is full: backlog 0 holds one connection, which is made."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(0)
    filler = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    filler.connect(path)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.setblocking(False)
        with pytest.raises(BlockingIOError):  # no room: a connect now would have to wait
            probe.connect(path)
    return listener, filler


def test_a_full_listen_queue_is_waited_for(sockets):
    """A burst of pod starts can fill percale-node's listen queue. The shim waits for room (up
    to its connect timeout, 2 s) rather than failing at once, and gets its answer."""
    path = str(sockets / "busy.sock")
    listener, filler = _full_listener(path)

    def agent_catches_up() -> None:
        time.sleep(0.5)
        listener.accept()[0].close()  # the connection that filled the queue
        conn, _ = listener.accept()  # the shim's, once it found room
        with conn:
            conn.makefile("rb").readline()
            conn.sendall(b'{"code": 0, "stdout": "{\\"ok\\": 1}"}\n')

    thread = threading.Thread(target=agent_catches_up, daemon=True)
    thread.start()
    try:
        ran = run_plugin("ADD", conf(agent_socket=path))
    finally:
        thread.join(5)
        filler.close()
        listener.close()
    assert (ran.code, ran.out) == (0, b'{"ok": 1}'), ran


def test_a_listen_queue_that_stays_full_is_code_11(sockets):
    path = str(sockets / "stuck.sock")
    listener, filler = _full_listener(path)
    try:
        ran = run_plugin("ADD", conf(agent_socket=path))
    finally:
        filler.close()
        listener.close()
    assert_error(ran, 11, path, "timed out")


def test_an_agent_that_closes_without_answering_is_code_11(agent):
    agent.answer = None
    ran = run_plugin("ADD", conf(agent_socket=agent.path))
    assert_error(ran, 11, agent.path, "without answering")
    assert len(agent.received) == 1


@pytest.mark.parametrize("how", ["no socket", "no answer"])
def test_status_without_an_agent_to_answer_is_code_50_and_the_other_commands_keep_11(
        how, sockets, agents):
    """STATUS asks whether an ADD can be served now: with no agent it cannot, and the CNI spec
    has STATUS say so with 50 ("the plugin is not available"). It answered 11, which STATUS
    does not define. ADD, DEL, CHECK and GC keep 11: a retry may find the agent back."""
    if how == "no socket":
        path = str(sockets / "nobody-listens.sock")
        words = ["cannot reach percale-node at", path]
    else:
        agent = agents()
        agent.answer = None
        path, words = agent.path, [agent.path, "without answering"]
    status = run_plugin("STATUS", conf(agent_socket=path, cniVersion="1.1.0"),
                        drop=tuple(FULL_ENV))
    message = assert_error(status, 50, *words, cni_version="1.1.0")["msg"]
    for command in ("ADD", "DEL", "CHECK", "GC"):
        other = assert_error(run_plugin(command, conf(agent_socket=path)), 11, *words)
        assert other["msg"] == message, command


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
    run_plugin("ADD", conf(agent_socket=agent.path))  # run as shim.py or percale-cni
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

@pytest.mark.parametrize("shim", ["python"], indirect=True)
@pytest.mark.parametrize("command", ["VERSION", "ADD"])
def test_the_shim_imports_neither_json_nor_socket(command, agent, shim):
    environ = {**FULL_ENV, "CNI_COMMAND": command}
    done = subprocess.run([PYTHON, "-IS", "-X", "importtime", str(SHIM)],
                          input=conf(agent_socket=agent.path).encode(), env=environ,
                          capture_output=True, timeout=30)
    assert done.returncode == 0, done
    imported = {line.rsplit("|", 1)[1].strip() for line in done.stderr.decode().splitlines()
                if line.startswith("import time:") and "|" in line}
    assert imported, done.stderr
    assert not imported & {"json", "socket", "re", "enum", "selectors"}, sorted(imported)


# The two shims side by side, on input a runtime or a bad agent might send: the same exit status,
# the same answer (a `details` text that quotes a Python exception may be worded differently),
# and the same request reaching the agent.

ODD_CONFIGS = [
    '{"cniVersion": "0.4.0", "cniVersion": "1.0.0"}',        # the last duplicate counts
    '{"\\u0063niVersion": "0.3.1"}',                          # an escaped key
    '{"cniVersion": "\\u00e9\\ud83d\\ude00"}',                # escapes, a surrogate pair
    '{"cniVersion": "\\udc80"}',                              # a lone surrogate
    '{"cniVersion": 1.0}', '{"cniVersion": ""}', '{"cniVersion": null}',
    '{"a": NaN, "b": -Infinity, "c": Infinity}', '{"a": -0.5e+3, "b": 0, "c": -0}',
    '{"a": 01}', '{"a": 1e}', '{"a": -}', '{"a": .5}', '{"a": 1.}', '{"a": tru}',
    '{"a": "tab\there"}', '{"a": "\\x"}', '{"a": "\\u12"}', '{"a": [1, 2,]}', '{"a": 1,}',
    '{"a": {"b": [{"c": []}]}}', ' \n\t{"cniVersion": "1.0.0"}\r\n ', '{"a": "\x7f"}',
    '[' * 1200 + ']' * 1200, '{"a":' * 1200 + '1' + '}' * 1200,
    b'\xef\xbb\xbf{}', b'{"a": "\xed\xa0\x80"}', b'{"a": "\xc0\xaf"}', b'{"a": "\xf4\x90\x80\x80"}',
    '{"agent_socket": null}', '{"agent_socket": "/no/such/\\u00e9.sock"}',
    '{"agent_socket": "/tmp/' + "x" * 120 + '"}', '{"agent_socket": "/tmp/a\\u0000b"}',
    '{"agent_socket": {"path": 1}}', '{"agent_socket": false}',
]


def run_both(command, stdin, **how) -> tuple[Ran, Ran]:
    ran = []
    for kind, path in (("python", SHIM), ("compiled", compiled_shim())):
        UnderTest.kind, UnderTest.path = kind, path
        ran.append(run_plugin(command, stdin, **how))
    return ran[0], ran[1]


def assert_alike(python: Ran, compiled: Ran) -> None:
    assert python.code == compiled.code, (python, compiled)
    try:
        want = json.loads(python.out)
    except ValueError:
        assert compiled.out == python.out
        return
    got = json.loads(compiled.out)
    if isinstance(want, dict) and want.get("code") in (DECODING_FAILURE_CODE, 999):
        want.pop("details"), got.pop("details")
    if isinstance(want, dict) and want.get("code") == 999 and "failed: " in want["msg"]:
        # "<plugin> failed: <a Python exception>": the compiled shim names the cause in words.
        want["msg"], got["msg"] = want["msg"].split(": ")[0], got["msg"].split(": ")[0]
    assert got == want


DECODING_FAILURE_CODE = 6


@pytest.mark.parametrize("shim", ["python"], indirect=True)
@pytest.mark.parametrize("command", ["VERSION", "ADD", "DEL"])
@pytest.mark.parametrize("stdin", ODD_CONFIGS)
def test_both_shims_answer_odd_configs_alike(stdin, command, shim, monkeypatch):
    monkeypatch.chdir("/")
    python, compiled = run_both(command, stdin, env={"PERCALE_CNI_SOCKET": "/nonexistent/p.sock"})
    assert_alike(python, compiled)


@pytest.mark.parametrize("shim", ["python"], indirect=True)
@pytest.mark.parametrize("environ", [
    {"CNI_COMMAND": "a\x01'b"}, {"CNI_COMMAND": "it's"}, {"CNI_COMMAND": "\u00e9t\u00e9"},
    {"CNI_ARGS": "K8S_POD_NAME=caf\u00e9;X=\u2603"}, {"CNI_NETNS": "/var/run/netns/\t\"q\""},
])
def test_both_shims_handle_odd_environments_alike(environ, agent, shim):
    python, compiled = run_both(None, conf(agent_socket=agent.path), env=environ)
    assert_alike(python, compiled)
    assert len(agent.received) in (0, 2)
    if agent.received:
        assert agent.requests[0] == agent.requests[1]


@pytest.mark.parametrize("shim", ["python"], indirect=True)
@pytest.mark.parametrize("answer", [
    b'{"code": 0, "stdout": "caf\\u00e9 \\ud83d\\ude00"}\n', b'{"code": 0, "stdout": "\\ud800x"}\n',
    b'{"code": -0, "stdout": ""}\n', b'{"code": true, "stdout": "x"}\n', b'{"code": false, "stdout": "x"}\n',
    b'{"code": 0.0, "stdout": "x"}\n', b'{"code": 0, "stdout": 5}\n', b'[0, "x"]\n', b'\n',
    b'  {"stdout": "a", "code": 100, "extra": [1]}  \n', b'{"code": 0, "stdout": "\xff"}\n',
    b'{"code": 0, "stdout": "x"} {"code": 1}\n', b'{"code": 12345678901234567890, "stdout": "x"}\n',
])
def test_both_shims_relay_odd_answers_alike(answer, agent, shim):
    agent.answer = answer
    python, compiled = run_both("ADD", conf(agent_socket=agent.path))
    assert_alike(python, compiled)
