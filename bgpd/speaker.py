"""ExaBGP as a child of percale-node: started, fed, drained, restarted.

The agent listens on a unix socket; ExaBGP's helper (the bridge: bgpd/bridge.c compiled, or
bgpd/bridge.py) connects to it and relays every line both ways. Lines from ExaBGP are JSON
events (`{...}`, handed on as they are), acknowledgements (`done`, `error`, one per command, in
order), or text. Commands wait for their acknowledgement, so a
caller knows ExaBGP queued the change (exabgp.md §1.5). Reading never stops while ExaBGP runs.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

from percale.bgpd import bridge, exabgp_config
from percale.ipc import compiled
from percale.ipc.unix_server import serve_unix

log = logging.getLogger("percale.bgpd.speaker")


# The shortest time between two reload signals to ExaBGP, how long to wait for one to show in its
# log, and how many signals to send before giving up on a reload (see reload()).
RELOAD_SPACING = 1.0
RELOAD_CONFIRM = 2.0
RELOAD_ATTEMPTS = 10
RELOAD_SEEN = b"performing reload"
# What ExaBGP logs once it has read the file: it took it, or it refused it (the lines after the
# refusal, from its "configuration" logger, say why) and runs on with the configuration before.
RELOAD_TAKEN = b"loaded new configuration successfully"
CONFIG_REFUSED = b"could not load/reload configuration"

# ExaBGP's helper compiled from bgpd/bridge.c, as scripts/dev.sh builds it beside the venv's
# python: about 1 MB resident, where the Python bridge is an interpreter of 10 MB for as long as
# ExaBGP runs.
BRIDGE_SOURCE = Path(bridge.__file__).with_name("bridge.c")
BRIDGE_BINARY = "percale-bgp-bridge"


def bridge_command(python: str | None = None) -> list[str]:
    """How ExaBGP runs the bridge, its socket aside: the compiled one while it is current, else
    the Python one, run as a file without site (it needs only the standard library, and
    skipping the package machinery makes it smaller)."""
    binary = compiled.beside_python(BRIDGE_SOURCE, BRIDGE_BINARY)
    return [str(binary)] if binary else [python or sys.executable, "-I", "-S", bridge.__file__]


def refusal_reason(log_text: bytes) -> str | None:
    """Why ExaBGP refused a configuration, from its log after the refusal (its configuration
    logger's lines: "12:00:01 4242  configuration   duplicate peer definition 10.0.0.9");
    None when the text holds no refusal."""
    _, refused, after = log_text.partition(CONFIG_REFUSED)
    if not refused:
        return None
    reason = []
    for line in after.decode(errors="replace").splitlines()[1:]:
        fields = line.split(None, 3)
        if len(fields) < 3 or fields[2] != "configuration":
            break  # another logger's line: the reason has ended
        if len(fields) == 4:
            reason.append(fields[3].strip())
    return "; ".join(reason)


class SpeakerError(Exception):
    """ExaBGP refused a command, or is not there to take it."""


class ExaBGP:
    def __init__(
        self, workdir: Path, on_event: Callable[[str], None], *,
        netns: str | None = None, exabgp: str | None = None, python: str = sys.executable,
        on_connect: Callable[[], None] | None = None, bridge: list[str] | None = None,
    ):
        self.workdir = workdir
        self.on_event = on_event
        # Called when a (new) bridge connects: ExaBGP started or restarted, and knows nothing
        # percale announced before; the agent re-announces and then sends End-of-RIB.
        self.on_connect = on_connect
        self.netns = netns
        # By default ExaBGP through bgpd/exabgp_pace.py (its reactor sleeps while idle), run as a
        # file with `-P`: this directory's modules must not shadow any that ExaBGP imports.
        # Not imported here: that would load ExaBGP into the agent.
        self.exabgp = [exabgp] if exabgp else [python, "-P", str(Path(__file__).with_name("exabgp_pace.py"))]
        self.bridge = bridge or bridge_command(python)
        self.process: asyncio.subprocess.Process | None = None
        self._server: asyncio.AbstractServer | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._acks: deque[asyncio.Future[str]] = deque()
        self._connected = asyncio.Event()
        self._stopping = False
        # Wall-clock seconds: when the running ExaBGP started, and when it was last given a new
        # configuration (NodeStatus's lastBootTime and lastReconfigurationTime). None: never.
        self.started_at: float | None = None
        self.reconfigured_at: float | None = None
        self._reload_lock = asyncio.Lock()
        # The last configuration ExaBGP took; the one it was last started with, until its bridge
        # connects (it has then taken it); and where its log stood at that start.
        self._accepted_config: str | None = None
        self._spawned_config: str | None = None
        self._spawn_log_mark = 0

    @property
    def socket_path(self) -> Path:
        return self.workdir / "exabgp.sock"

    @property
    def config_path(self) -> Path:
        return self.workdir / "exabgp.conf"

    def render(self, router_id: str, neighbors: list[exabgp_config.Neighbor]) -> str:
        helper = " ".join([*self.bridge, str(self.socket_path)])
        return exabgp_config.render(router_id, neighbors, helper)

    async def start(self, config: str) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(config)
        self._server = await serve_unix(self._on_bridge, self.socket_path, limit=2**24)
        await self._spawn()

    @property
    def pid_path(self) -> Path:
        return self.workdir / "exabgp.pid"

    def _stop_leftover(self) -> None:
        """Stop an ExaBGP that an earlier agent of this node started and left running (that
        agent was killed: ExaBGP runs in a session of its own, so it survives, sessions and all,
        but nobody drives it any more). Two ExaBGPs would fight over the node's sessions; this
        one goes, and peers keep our routes through graceful restart until ours are re-sent."""
        try:
            pid = int(self.pid_path.read_text().split()[0])
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError, IndexError):
            return
        if str(self.config_path).encode() not in cmdline:
            return  # the number now belongs to some other process
        log.info("stopping ExaBGP (pid %s) left by an earlier agent", pid)
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + 5
        while _running(pid) and time.monotonic() < deadline:
            time.sleep(0.02)

    async def _spawn(self) -> None:
        self._stop_leftover()
        command = [*self.exabgp, "server", str(self.config_path)]
        if self.netns:
            command = ["ip", "netns", "exec", self.netns, *command]
        env = {**os.environ, **exabgp_config.environment(str(self.log_path))}
        self._spawn_log_mark = self._log_size()
        self._spawned_config = self.config_path.read_text()
        self.process = await asyncio.create_subprocess_exec(
            *command, env=env, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
            start_new_session=True)
        self.started_at = time.time()
        self.pid_path.write_text(f"{self.process.pid}\n")
        log.info("started ExaBGP (pid %s)", self.process.pid)

    async def wait_connected(self, timeout: float = 30) -> None:
        # asyncio.timeout, never wait_for: Python 3.11's wait_for swallows a cancellation that
        # arrives as the awaited thing completes, and the agent, cancelled, then never stops.
        async with asyncio.timeout(timeout):
            await self._connected.wait()

    async def _on_bridge(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._writer is not None:
            self._writer.close()  # an older bridge: ExaBGP replaced it
        self._fail_pending("ExaBGP's helper reconnected")
        self._writer = writer
        if self._spawned_config is not None:
            self._accepted_config, self._spawned_config = self._spawned_config, None
        self._connected.set()
        if self.on_connect:
            self.on_connect()
        try:
            while line := await reader.readline():
                self._dispatch(line.decode(errors="replace").rstrip("\n"))
        finally:
            if self._writer is writer:
                self._writer = None
                self._connected.clear()
                self._fail_pending("ExaBGP's helper went away")

    def _dispatch(self, line: str) -> None:
        if line.startswith("{"):
            self.on_event(line)  # a JSON event; bgpd.exabgp_json reads it
        elif line in ("done", "error"):
            if self._acks:
                future = self._acks.popleft()
                if not future.done():
                    future.set_result(line)
        elif line:
            log.debug("ExaBGP: %s", line)

    def _fail_pending(self, why: str) -> None:
        while self._acks:
            future = self._acks.popleft()
            if not future.done():
                future.set_exception(SpeakerError(why))

    async def send(self, command: str, timeout: float = 30) -> None:
        """Give ExaBGP one command and wait until it acknowledges it; SpeakerError if it refuses."""
        if "\n" in command:
            raise ValueError("one command per call")
        await self.wait_connected(timeout)
        assert self._writer is not None
        ack: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._acks.append(ack)
        self._writer.write(command.encode() + b"\n")
        await self._writer.drain()
        async with asyncio.timeout(timeout):
            answer = await ack
        if answer != "done":
            raise SpeakerError(f"ExaBGP refused: {command}")

    async def reload(self, config: str) -> None:
        """Apply a new configuration. Sessions whose settings did not change stay up; new
        neighbours connect; removed ones are shut down (ExaBGP's SIGUSR1 reload).

        A configuration ExaBGP refuses is logged as an error, with ExaBGP's reason; ExaBGP runs
        on with the one before, and that one goes back into the file, so that an ExaBGP started
        again (after a crash) comes up with it rather than refusing to start at all."""
        self._write_config(config)
        # ExaBGP 5.0 drops a SIGUSR1 that arrives while it still has updates to send (its
        # reactor clears the signal, sees pending adj-rib-out, and moves on): the reload never
        # happens and a node keeps the neighbours it had, possibly none, for good (seen in the rr
        # and k8sop3 labs). So every signal is confirmed in ExaBGP's log and sent again until
        # ExaBGP performs it; the file holds the newest config, so one reload carries every
        # change made meanwhile. Signals are spaced, which gives pending updates time to go.
        async with self._reload_lock:
            for attempt in range(RELOAD_ATTEMPTS):
                last = max(self.reconfigured_at or 0.0, self.started_at or 0.0)
                await asyncio.sleep(max(0.0, last + RELOAD_SPACING - time.time()))
                if not self.process or self.process.returncode is not None:
                    return  # supervise() starts a new ExaBGP, which reads the file
                mark = self._log_size()
                if not self._signal(signal.SIGUSR1, group=False):
                    return  # it exited this moment; supervise() starts one that reads the file
                self.reconfigured_at = time.time()
                outcome = await self._reload_outcome(mark)
                if outcome == "":
                    self._accepted_config, self._spawned_config = config, None
                    return
                if outcome is not None:
                    self._refused(config, outcome)
                    return
                log.info("ExaBGP did not perform reload %d (busy sending updates); signalling again",
                         attempt + 1)
            log.warning("ExaBGP performed none of %d reload signals", RELOAD_ATTEMPTS)

    @property
    def log_path(self) -> Path:
        return self.workdir / "exabgp.log"

    def _log_size(self) -> int:
        try:
            return self.log_path.stat().st_size
        except OSError:
            return 0

    def _log_since(self, since: int) -> bytes:
        try:
            with open(self.log_path, "rb") as log_file:
                log_file.seek(since)
                return log_file.read()
        except OSError:
            return b""

    async def _reload_outcome(self, since: int) -> str | None:
        """What became of a reload signalled when ExaBGP's log was `since` bytes long, waiting
        RELOAD_CONFIRM: None if ExaBGP performed no reload, "" if it took the configuration,
        else why it refused it. A reload performed whose outcome is not logged in time counts
        as taken: signalling again would not tell more."""
        deadline = time.monotonic() + RELOAD_CONFIRM
        performed = False
        while time.monotonic() < deadline:
            text = self._log_since(since)
            performed = RELOAD_SEEN in text
            if performed and RELOAD_TAKEN in text:
                return ""
            if performed and CONFIG_REFUSED in text:
                # ExaBGP logs its reason a moment after the refusal, in a second call.
                await asyncio.sleep(0.1)
                return refusal_reason(self._log_since(since)) or "no reason given"
            await asyncio.sleep(0.05)
        return "" if performed else None

    def _write_config(self, config: str) -> None:
        # Replaced whole, never rewritten in place: ExaBGP reading a half-written file fails the
        # reload and then refuses every later one (seen with 100 peers added at once).
        staging = self.config_path.with_suffix(".new")
        staging.write_text(config)
        os.replace(staging, self.config_path)

    def _refused(self, config: str, reason: str) -> None:
        log.error("ExaBGP refused the new BGP configuration (%s) and runs on with the one "
                  "before; no session changes until a configuration it takes", reason)
        try:
            unchanged = self.config_path.read_text() == config  # no newer one written since
        except OSError:
            unchanged = False
        if unchanged and self._accepted_config is not None:
            self._write_config(self._accepted_config)

    async def supervise(self) -> None:
        """Restart ExaBGP whenever it exits, until stop(); run it as a task."""
        delay = 0.5
        while not self._stopping:
            assert self.process is not None
            code = await self.process.wait()
            if self._stopping:
                return
            # Only one that never took its configuration (its bridge never connected) exited
            # for it: a refused reload leaves ExaBGP running.
            started = self._spawned_config is None
            reason = None if started else refusal_reason(self._log_since(self._spawn_log_mark))
            if reason:
                log.error("ExaBGP refused its BGP configuration (%s) and exited with %s; "
                          "starting it again in %.1fs", reason, code, delay)
            else:
                log.warning("ExaBGP exited with %s; starting it again in %.1fs", code, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10)
            await self._spawn()

    def _signal(self, sig: int, group: bool = True) -> bool:
        """Send ExaBGP (or its whole process group) a signal; False when it is already gone.

        returncode is None is not proof it still runs: asyncio's watcher thread reaps the child
        first and sets returncode a turn of the event loop later, and in between the pid is free."""
        assert self.process is not None
        try:
            (os.killpg if group else os.kill)(self.process.pid, sig)
        except ProcessLookupError:
            return False
        return True

    async def stop(self) -> None:
        """Stop ExaBGP. With graceful restart negotiated it closes sessions without a
        NOTIFICATION, so peers keep percale's routes while the agent is away."""
        self._stopping = True
        if self.process and self.process.returncode is None:
            self._signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(10):
                    await self.process.wait()
            except TimeoutError:
                self._signal(signal.SIGKILL)
                await self.process.wait()
        if self._server:
            self._server.close()
        if self._writer:
            self._writer.close()
        self._fail_pending("stopped")
        self.socket_path.unlink(missing_ok=True)


def _running(pid: int) -> bool:
    """Whether `pid` is a process that has not exited. A killed ExaBGP whose parent (a killed
    agent) is gone stays a zombie until init reaps it, which took seconds here: waiting for
    /proc/<pid> to vanish held the starting agent's event loop, and its CNI requests, that long.
    A zombie holds no socket and no session."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")
