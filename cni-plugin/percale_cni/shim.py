#!/usr/bin/python3 -IS
"""The CNI plugins `percale` and `percale-ipam`: they pass each request to percale-node and print
its answer.

A container runtime execs this file for every pod ADD, DEL, CHECK, STATUS and GC.
`percalectl cni install` copies it into /opt/cni/bin under both names. The file does no
networking itself. The request, the answer, and the few errors the shim gives without asking the
agent are specified in cni-plugin/PROTOCOL.md. Answers and CNI errors go to stdout, logs to
stderr.

The file is on every pod's start-up path, so it runs as `python3 -IS`. With no site-packages it
must be self-contained and use the standard library only. It imports the C halves of json and
socket (`_json`, `_socket`) instead of the packages, which pull in re, enum, functools and
selectors. Measured with Debian's python3.11, a VERSION call costs about 3 ms more than a bare
`python3 -IS -c pass` (7 ms); importing the packages would cost about 11 ms more
(reference/performance.md §1 explains why each exec counts). `to_json` and `from_json` use
the same encoder and scanner as json.dumps and json.loads, so they behave the same way.
"""

import _json
import _socket
import _struct
import os
import sys

SUPPORTED_VERSIONS = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]
DEFAULT_VERSION = "1.1.0"
DEFAULT_SOCKET = "/var/run/percale/cni.sock"
# Seconds a connect waits for room in the agent's listen queue. A live agent accepts at once, or
# soon after a burst of pods; waiting longer only delays the runtime's retry.
CONNECT_TIMEOUT = 2
# An ADD may wait in the agent while datastore conflicts are retried.
ANSWER_TIMEOUT = 120.0
# The largest network configuration passed on (cni_types.MAX_CONFIG_BYTES; the agent's limit
# on the whole request line leaves room for it escaped).
MAX_CONFIG_BYTES = 1 << 20

# The variables each command cannot do without (CNI spec, "Parameters"). DEL may come after the
# netns is gone, and GC and STATUS concern no single container.
REQUIRED_ENV = {
    "ADD": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"),
    "CHECK": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"),
    "DEL": ("CNI_CONTAINERID", "CNI_IFNAME"),
    "STATUS": (),
    "GC": (),
}

# CNI spec error codes. 999 is libcni's ErrInternal.
INVALID_ENVIRONMENT = 4
DECODING_FAILURE = 6
TOO_DEEP = "the network configuration on stdin nests too deeply to read"
INVALID_CONFIG = 7
TRY_AGAIN_LATER = 11
NOT_AVAILABLE = 50
INTERNAL = 999

JSON_WHITESPACE = " \t\n\r"


class CNIError(Exception):
    """An error the shim reports itself, with the CNI code that tells the runtime what to do."""

    def __init__(self, code, msg, details=""):
        super().__init__(msg)
        self.code, self.msg, self.details = code, msg, details


class _JSONDefaults:
    """json.loads's defaults, given as the attributes _json's scanner reads."""

    strict = True
    object_hook = object_pairs_hook = None
    parse_float = parse_constant = float
    parse_int = int


_scan = _json.make_scanner(_JSONDefaults)
_encode = _json.make_encoder(
    None, None, _json.encode_basestring_ascii, None, ": ", ", ", False, False, True)


def to_json(value):
    """json.dumps(value). The output is ASCII, so it is one line."""
    return "".join(_encode(value, 0))


def from_json(text):
    """json.loads(text). Raises ValueError (json.JSONDecodeError) when text is not JSON.

    Valid JSON is parsed by the C scanner alone. Invalid JSON is parsed again by json.loads, to
    raise its error. Some Python versions' scanners cannot describe an error unless the json
    package is already imported, so that import is paid only on this error path.
    """
    start = len(text) - len(text.lstrip(JSON_WHITESPACE))
    try:
        value, end = _scan(text, start)
        if not text[end:].strip(JSON_WHITESPACE):
            return value
    except Exception:  # StopIteration, JSONDecodeError, or SystemError from a bare scanner
        pass
    import json
    return json.loads(text)


def error_json(cni_version, code, msg, details=""):
    return to_json({"cniVersion": cni_version, "code": code, "msg": msg, "details": details})


def run(plugin, environ, stdin):
    """Handle one invocation: return the exit status and the text for stdout."""
    conf, conf_error = None, None
    try:
        config_text = stdin.decode("utf-8")
        conf = from_json(config_text)
        if not isinstance(conf, dict):
            raise ValueError("the network configuration is not a JSON object")
    except ValueError as err:  # UnicodeDecodeError is a ValueError too
        conf, conf_error = None, err
    except RecursionError:
        # Nested past what json reads (the compiled shim stops at the same depth): answered at
        # once, whatever the command, as the compiled shim answers it.
        return 1, error_json(DEFAULT_VERSION, DECODING_FAILURE, TOO_DEEP)
    version = conf.get("cniVersion") if conf is not None else None
    if not isinstance(version, str) or not version:
        version = DEFAULT_VERSION

    command = environ.get("CNI_COMMAND", "")
    if command == "VERSION":
        return 0, to_json({"cniVersion": version, "supportedVersions": SUPPORTED_VERSIONS})
    try:
        if command not in REQUIRED_ENV:
            problem = f"unknown CNI_COMMAND {command!r}" if command else "CNI_COMMAND is not set"
            raise CNIError(INVALID_ENVIRONMENT, problem,
                           "use one of ADD, DEL, CHECK, STATUS, GC, VERSION")
        missing = [name for name in REQUIRED_ENV[command] if not environ.get(name)]
        if missing:
            raise CNIError(INVALID_ENVIRONMENT, f"{command} needs {', '.join(missing)}",
                           "the container runtime must set " + ", ".join(missing))
        if len(stdin) > MAX_CONFIG_BYTES:
            raise CNIError(INVALID_CONFIG, f"the network configuration on stdin is {len(stdin)} bytes",
                           f"percale accepts up to {MAX_CONFIG_BYTES} bytes")
        if conf_error is not None:
            raise CNIError(DECODING_FAILURE, "the network configuration on stdin is not a JSON object",
                           str(conf_error))
        request = {
            "plugin": plugin,
            "command": command,
            "containerID": environ.get("CNI_CONTAINERID", ""),
            "netns": environ.get("CNI_NETNS", ""),
            "ifname": environ.get("CNI_IFNAME", ""),
            "args": environ.get("CNI_ARGS", ""),
            "path": environ.get("CNI_PATH", ""),
            "config": config_text,
        }
        code, out = ask_agent(agent_socket(conf, environ), to_json(request) + "\n")
    except CNIError as err:
        code = err.code
        if command == "STATUS" and code == TRY_AGAIN_LATER:
            # STATUS asks whether an ADD can be served now. With no agent to answer, it cannot:
            # 50 (CNI spec 1.1), which holds new pods back; 11 is no answer STATUS defines.
            code = NOT_AVAILABLE
        return 1, error_json(version, code, err.msg, err.details)
    return (0 if code == 0 else 1), out


def agent_socket(conf, environ):
    """The agent's socket, looked up in PROTOCOL.md's order: the plugin config's agent_socket,
    then $PERCALE_CNI_SOCKET, then the default path."""
    path = conf.get("agent_socket")
    if path is None:
        return environ.get("PERCALE_CNI_SOCKET") or DEFAULT_SOCKET
    if not isinstance(path, str) or not path:
        raise CNIError(INVALID_CONFIG, "agent_socket must be the path of percale-node's socket",
                       f"got {to_json(path)}")
    return path


def ask_agent(path, request):
    """Send one request line to percale-node and return (code, stdout) from its one-line answer.

    An agent that cannot be reached, does not answer, or closes the connection without
    answering gives code 11: it is starting or restarting, so the runtime should try again later
    (for STATUS, `run` answers 50 instead).
    """
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        # A blocking connect bounded by SO_SNDTIMEO, as the compiled shim's: when a burst of pods
        # has filled the agent's listen queue it waits for room. settimeout() would make the
        # socket non-blocking, and a unix-socket connect then fails at once (EAGAIN).
        sock.setsockopt(_socket.SOL_SOCKET, _socket.SO_SNDTIMEO,
                        _struct.pack("ll", CONNECT_TIMEOUT, 0))
        try:
            sock.connect(path)
        except OSError as err:
            raise CNIError(TRY_AGAIN_LATER, f"cannot reach percale-node at {path}: {reason(err)}",
                           "is percale-node running on this node?") from None
        sock.settimeout(ANSWER_TIMEOUT)
        received = b""
        try:
            sock.sendall(request.encode())
            while not received.endswith(b"\n"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                received += chunk
        except OSError as err:
            raise CNIError(TRY_AGAIN_LATER, f"percale-node at {path} did not answer: {reason(err)}",
                           "see percale-node's log") from None
    finally:
        sock.close()
    if not received.strip():
        raise CNIError(TRY_AGAIN_LATER,
                       f"percale-node at {path} closed the connection without answering",
                       "see percale-node's log")
    try:
        answer = from_json(received.decode("utf-8"))
        code, out = answer["code"], answer["stdout"]
        if not isinstance(code, int) or not isinstance(out, str):
            raise TypeError("code must be a number and stdout a string")
    except (ValueError, TypeError, KeyError) as err:
        raise CNIError(INTERNAL, f"percale-node at {path} sent an answer not in PROTOCOL.md's form",
                       f"{err!r}: {received[:200]!r}") from None
    return code, out


def reason(err):
    # A timeout is worded as Python's socket timeout is, whichever way it ran out.
    if isinstance(err, BlockingIOError):
        return "timed out"
    return err.strerror or str(err)


def main():
    plugin = "percale-ipam" if os.path.basename(sys.argv[0]) == "percale-ipam" else "percale"
    try:
        status, out = run(plugin, os.environ, sys.stdin.buffer.read())
    except Exception as err:  # a bug here must still reach the runtime as a CNI error
        print(f"{plugin}: internal error: {err!r}", file=sys.stderr)
        status, out = 1, error_json(DEFAULT_VERSION, INTERNAL, f"{plugin} failed: {err!r}")
    sys.stdout.buffer.write(out.encode("utf-8", "replace"))
    sys.stdout.flush()
    return status


if __name__ == "__main__":
    sys.exit(main())
