"""A containerlab topology realised with network namespaces, no Docker (exabgp.md §3.3).

  node (any kind but bridge)  a namespace `clab-<lab>-<node>`; its `cmd` runs there in the
                              background, then its `exec` commands in order, as containerlab
                              runs them in the container; nodes start several at a time, each
                              once the nodes in its `stages.*.wait-for` are up
  kind: bridge                a Linux bridge, in a namespace of its own (never in the host's)
  link                        a veth pair, ends named as the endpoints say; MTU 9500 unless set
  mgmt network                a bridge in `clab-<lab>-mgmt` with the gateway (.1); each node's
                              eth0 on it, with its mgmt address and the default route
  binds                       there is no mount namespace: a bind's path inside the node is
                              replaced by its host path wherever it appears in cmd, exec and env
  percale nodes               (image percale/node, cmd percale-node) the CNI plugins in the node's
                              directory, and percale's sockets there (PERCALE_* env), as the
                              image has them in /opt/cni/bin and /var/run/percale
  lab kubelets                (cmd percale-lab-kubelet) run in the node's network namespace but
                              the machine's mount namespace, as a kubelet runs on its host
  NODENAME                    set to the node's name, which containerlab makes the hostname

Every process is started in its own session, logged to <lab dir>/<node>/<node>.log, and recorded
(PID and start time) in <lab dir>/state.json before the next step, so `down` stops exactly what
`up` started even after `up` itself crashed. Every namespace is recorded there as soon as
`ip netns add` has made it, never before: `down` removes exactly those (and the pods the lab's
kubelets made in them), so a namespace the lab did not make, whatever its name, is left alone
with its processes. `up` refuses, before making anything, when a namespace it needs exists.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

from percale.lab.topology import (STATE_FILE, STATE_LOCK, STATE_TEMPORARY, Node, Topology,
                                  TopologyError)

LAB_ROOT = Path(os.environ.get("PERCALE_LAB_DIR", "/var/run/percale/lab"))
PERCALE_IMAGE = "percale/node"
CNI_REFERENCE_PLUGINS = Path("/usr/lib/cni")  # Debian's containernetworking-plugins
VENV_BIN = Path(sys.executable).parent
# Nodes started at once: each start is mostly waiting (an interpreter starting, etcd answering).
START_PARALLELISM = 8
# A cmd that cannot run (not found, a bad flag) exits within moments of starting, where Docker
# would refuse to start the container; `up` watches each node's cmd this long after its start
# (waiting, once for the whole lab, only for what is left of it after the last start).
START_GRACE = 0.5
# sun_path in <sys/un.h> holds 108 bytes with the NUL that ends the path: percale-node refuses a
# longer socket path only once it runs, after `up` started. node/main.py's SOCKET_PATH_MAX says
# the same, but the lab imports no other percale package (tests/unit/test_layers.py).
SOCKET_PATH_MAX = 107
# The socket percale-node's ExaBGP helper connects back on, in PERCALE_BGP_DIR (bgpd/speaker.py);
# named here for the same reason. Backends that run no BGP process have none.
EXABGP_SOCKET = "exabgp.sock"
BACKENDS_WITHOUT_BGP = ("vxlan", "none")


class LabError(RuntimeError):
    """A lab step failed; the message says which node and step."""


def sh(*args: str, check: bool = True, env: dict | None = None,
       input: str | None = None, timeout: float | None = 60) -> subprocess.CompletedProcess:
    done = subprocess.run(args, capture_output=True, text=True, env=env, input=input,
                          timeout=timeout)
    if check and done.returncode != 0:
        raise LabError(f"{shlex.join(args)}: {(done.stderr or done.stdout).strip()}")
    return done


def _start_time(pid: int) -> int | None:
    """The process's start time in clock ticks (field 22 of /proc/PID/stat): with the PID, it
    tells our process from a later one that reused the number."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rpartition(")")[2].split()
    if fields[0] in ("Z", "X"):
        return None  # ended; only its exit status is left for its parent to collect
    return int(fields[19])


def alive(record: dict) -> bool:
    # A process recorded without a start time had ended before it was recorded (a node whose
    # cmd is `true`): None == None must not keep `down` waiting for it for ever.
    return record["start"] is not None and _start_time(record["pid"]) == record["start"]


@contextlib.contextmanager
def _starting(what: str):
    """Popen's refusals as a LabError, "<what> could not start (<why>)": reading the topology
    refuses what it can (a NUL byte, an env name with '='), but not a command line too long for
    the kernel (E2BIG), a program missing from this machine or a directory removed meanwhile."""
    try:
        yield
    except UnicodeError:
        raise  # output that is not text: the process did start
    except ValueError as err:
        raise LabError(f"{what} could not start ({err})") from None
    except OSError as err:
        where = f": {err.filename}" if err.filename else ""
        raise LabError(f"{what} could not start ({err.strerror or err}{where})") from None


def exit_status(returncode: int) -> str:
    """A process's end, as a returncode says it (negative: the signal that ended it)."""
    return f"killed by signal {-returncode}" if returncode < 0 else f"exit status {returncode}"


@dataclass
class Lab:
    topology: Topology
    # The processes this Lab started: node -> (Popen, monotonic start), for their exit status.
    _started: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    # -- where things are --------------------------------------------------------------------

    @property
    def dir(self) -> Path:
        return LAB_ROOT / self.topology.name

    def node_dir(self, node: str) -> Path:
        return self.dir / node

    @property
    def state_file(self) -> Path:
        return self.dir / STATE_FILE

    def state(self) -> dict:
        try:
            return json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            return {"namespaces": [], "processes": [], "pods": {}}

    @contextlib.contextmanager
    def _editing(self):
        """The state, read and written back under a lock (pods may be added in parallel)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.dir / STATE_LOCK, "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            state = self.state()
            yield state
            temporary = self.dir / STATE_TEMPORARY
            temporary.write_text(json.dumps(state, indent=1))
            os.replace(temporary, self.state_file)

    def is_up(self) -> bool:
        """The lab has state: `up` made something (and may still be making it), `down` has not
        run since."""
        return self.state_file.exists()

    def _needed_namespaces(self) -> list[str]:
        return [self.topology.mgmt_namespace,
                *(self.topology.namespace(n) for n in self.topology.nodes)]

    def owns(self, namespace: str) -> bool:
        """The namespace exists and this lab made it."""
        return namespace in self.state()["namespaces"] and self._namespace_exists(namespace)

    @staticmethod
    def _namespace_exists(name: str) -> bool:
        return Path("/var/run/netns", name).exists()

    def is_percale(self, node: Node) -> bool:
        """A node running percale-node from percale's image (the image also runs
        percale-controllers, which serves no pods)."""
        return node.image.split(":")[0] == PERCALE_IMAGE and node.cmd.split()[:1] == ["percale-node"]

    @staticmethod
    def is_kubelet(node: Node) -> bool:
        """A node whose cmd is a lab kubelet (lab/kubelet.py)."""
        return node.cmd.split()[:1] == ["percale-lab-kubelet"]

    # -- the node's view: binds, environment -------------------------------------------------

    def binds(self, node: Node) -> list[tuple[str, str]]:
        """(host path, path in the node), placeholders expanded, longest node path first."""
        found = []
        for host, target in node.binds:
            host = host.replace("__clabNodeDir__", str(self.node_dir(node.name)))
            host = host.replace("__clabDir__", str(self.dir))
            found.append((host, target))
        return sorted(found, key=lambda b: -len(b[1]))

    def rewrite(self, node: Node, text: str) -> str:
        """`text` with each bind's path in the node replaced by its host path, in one pass: a
        host path is never rewritten again (with /srv/x bound on /srv, /srv/sub is /srv/x/sub,
        not /srv/x/x/sub), so call it once on any text, as Lab.exec does."""
        binds = self.binds(node)
        if not binds:
            return text
        hosts: dict[str, str] = {}
        for host, target in binds:
            hosts.setdefault(target, host)
        # Longest path first (binds() sorts them): /etc/x.yaml before /etc.
        paths = "|".join(re.escape(target) for target in hosts)
        return re.sub(rf"(?<![\w/.-])(?:{paths})(?=$|[/\s'\":;,=])",
                      lambda match: hosts[match[0]], text)

    def kubelet_roots(self) -> dict[str, Path]:
        """Each lab kubelet node's --root, where the kubelet records its pods: as `up` recorded
        it when it started the kubelet (all `down` has when the file no longer reads), else as
        the topology's cmd says."""
        roots = {}
        for node in self.topology.nodes.values():
            if self.is_kubelet(node):
                root = kubelet_root(self.rewrite(node, node.cmd))
                if root is not None:
                    roots[node.name] = root
        for record in self.state()["processes"]:
            if record.get("kubelet_root"):
                roots[record["node"]] = Path(record["kubelet_root"])
        return roots

    def socket_path_problem(self) -> str | None:
        """Why a percale node's agent could not bind one of its sockets here, which it finds
        only once it runs, after `up` has started: its path (under the lab's directory, named
        by the lab and the node, or set in its env) is past SOCKET_PATH_MAX. The phrase says
        which field to change, as a TopologyError does."""
        for node in self.topology.nodes.values():
            if not self.is_percale(node):
                continue
            env = self.environment(node)
            sockets = {"PERCALE_CNI_SOCKET": env["PERCALE_CNI_SOCKET"],
                       "PERCALE_STATUS_SOCKET": env["PERCALE_STATUS_SOCKET"]}
            if env.get("PERCALE_NETWORKING_BACKEND", "bgp") not in BACKENDS_WITHOUT_BGP:
                sockets["PERCALE_BGP_DIR"] = str(Path(env["PERCALE_BGP_DIR"]) / EXABGP_SOCKET)
            variable, path = max(sockets.items(), key=lambda item: len(os.fsencode(item[1])))
            size = len(os.fsencode(path))
            if size <= SOCKET_PATH_MAX:
                continue
            if variable in node.env:
                field_name = f"topology.nodes.{node.name}.env.{variable}"
                remedy = "a shorter path"
            else:
                field_name = "name"
                remedy = "a shorter lab or node name, or PERCALE_LAB_DIR"
            return (f"{field_name}: node {node.name}'s socket {path!r} would be {size} bytes long;"
                    f" a UNIX socket path has at most {SOCKET_PATH_MAX} ({remedy})")
        return None

    def environment(self, node: Node) -> dict[str, str]:
        env = {
            "PATH": f"{VENV_BIN}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME": os.environ.get("HOME", "/root"), "LANG": "C.UTF-8",
            "NODENAME": node.name, "CLAB_LABEL_CLAB_NODE_NAME": node.name,
        }
        if self.is_percale(node):
            run = self.node_dir(node.name) / "run"
            env.update(PERCALE_CNI_SOCKET=str(run / "cni.sock"),
                       PERCALE_STATUS_SOCKET=str(run / "status.sock"),
                       PERCALE_BGP_DIR=str(run / "bgp"))
        env.update({key: self.rewrite(node, value) for key, value in node.env.items()})
        return env

    # -- up ----------------------------------------------------------------------------------

    def up(self, progress=lambda message: None) -> None:
        """Create every namespace, link and process; on any failure remove all of it again."""
        if self.is_up():
            raise LabError(f"lab {self.topology.name!r} is already up "
                           f"(percalectl lab down -t {self.topology.path} first)")
        taken = [name for name in self._needed_namespaces() if self._namespace_exists(name)]
        if taken:
            # Not ours to use, nor to delete when `up` fails: refused before anything is made.
            what = (f"network namespace {taken[0]!r} exists" if len(taken) == 1 else
                    f"network namespaces {', '.join(map(repr, taken))} exist")
            raise LabError(f"lab {self.topology.name!r}: {what} already, made by something other "
                           f"than this lab: remove {'it' if len(taken) == 1 else 'them'} (ip netns "
                           "del NAME) or change the topology's prefix or node names")
        if warning := neighbour_table_warning(self.topology):
            progress(warning)
        self.dir.mkdir(parents=True, exist_ok=True)
        with self._editing() as state:
            state.update(topology=str(self.topology.path), started=time.time())
        self._started.clear()
        try:
            self._networks(progress)
            self._start_nodes(progress)
            self._check_started(list(self._started))
        except BaseException:
            self.down()
            raise

    def _start_nodes(self, progress) -> None:
        """Start every host, several at once as containerlab does: a node as soon as the nodes
        it waits for are up (and healthy, when they have a healthcheck). The first failure
        stops further starts; those under way finish before `up` cleans up."""
        pending = {node.name: node for node in self.topology.start_order()}
        done: set[str] = set()
        with ThreadPoolExecutor(START_PARALLELISM) as pool:
            running: dict = {}
            try:
                while pending or running:
                    for name, node in list(pending.items()):
                        if set(node.wait_for) <= done:
                            running[pool.submit(self._start_node, node, progress)] = name
                            del pending[name]
                    finished, _ = wait(running, return_when=FIRST_COMPLETED)
                    for future in finished:
                        future.result()  # a failure: raised here, the rest are not started
                        done.add(running.pop(future))
            finally:
                for future in running:
                    future.cancel()

    def _namespace(self, name: str) -> None:
        self.make_namespace(name, lambda state: state["namespaces"].append(name))
        sh("ip", "netns", "exec", name, "ip", "link", "set", "lo", "up")

    def make_namespace(self, name: str, record) -> None:
        """`ip netns add NAME`, then `record(state)` under the state's lock.

        Recorded only once made: `ip netns add` fails on a name that exists, and a name recorded
        before would have `down` delete someone else's namespace and kill what runs in it. The
        price is a namespace left behind if the runner is killed in the moment between (`up`
        names it next time); an exception there (Ctrl-C, or `record` refusing) removes it."""
        sh("ip", "netns", "add", name)
        try:
            with self._editing() as state:
                record(state)
        except BaseException:
            sh("ip", "netns", "del", name, check=False)
            raise

    def _networks(self, progress) -> None:
        topology = self.topology
        mgmt = topology.mgmt_namespace
        self._namespace(mgmt)
        gateway = topology.mgmt_gateway
        sh("ip", "netns", "exec", mgmt, "ip", "link", "add", "mgmt", "type", "bridge")
        sh("ip", "netns", "exec", mgmt, "ip", "addr", "add",
           f"{gateway}/{topology.mgmt_subnet.prefixlen}", "dev", "mgmt")
        sh("ip", "netns", "exec", mgmt, "ip", "link", "set", "mgmt", "up")
        addresses = topology.mgmt_addresses()
        for index, node in enumerate(topology.nodes.values()):
            ns = topology.namespace(node.name)
            self._namespace(ns)
            self.node_dir(node.name).mkdir(parents=True, exist_ok=True)
            if node.is_bridge:
                sh("ip", "netns", "exec", ns, "ip", "link", "add", node.name[:15], "type", "bridge")
                sh("ip", "netns", "exec", ns, "ip", "link", "set", node.name[:15], "up")
                continue
            port = f"m{index}"
            sh("ip", "link", "add", "eth0", "netns", ns, "type", "veth", "peer", "name", port,
               "netns", mgmt)
            sh("ip", "netns", "exec", mgmt, "ip", "link", "set", port, "master", "mgmt", "up")
            sh("ip", "netns", "exec", ns, "ip", "addr", "add", str(addresses[node.name]), "dev", "eth0")
            sh("ip", "netns", "exec", ns, "ip", "link", "set", "eth0", "up")
            sh("ip", "netns", "exec", ns, "ip", "route", "add", "default", "via", str(gateway))
        progress(f"{len(topology.nodes)} nodes and the management network {topology.mgmt_subnet}")
        for link in topology.links:
            a, b = link.a, link.b
            sh("ip", "link", "add", a.interface, "netns", topology.namespace(a.node), "mtu",
               str(link.mtu), "type", "veth", "peer", "name", b.interface, "netns",
               topology.namespace(b.node), "mtu", str(link.mtu))
            for end in (a, b):
                ns = topology.namespace(end.node)
                if end.mac:
                    sh("ip", "netns", "exec", ns, "ip", "link", "set", end.interface, "address", end.mac)
                for address in (end.ipv4, end.ipv6):
                    if address:
                        sh("ip", "netns", "exec", ns, "ip", "addr", "add", address, "dev", end.interface)
                if topology.nodes[end.node].is_bridge:
                    sh("ip", "netns", "exec", ns, "ip", "link", "set", end.interface, "master",
                       end.node[:15])
                sh("ip", "netns", "exec", ns, "ip", "link", "set", end.interface, "up")
        progress(f"{len(topology.links)} links")

    def _start_node(self, node: Node, progress) -> None:
        for other in node.wait_for:
            self._wait_healthy(self.topology.nodes[other])
        for host, _ in self.binds(node):
            if str(self.dir) in host and not Path(host).suffix:
                Path(host).mkdir(parents=True, exist_ok=True)  # a node directory bind
        if self.is_percale(node):
            self._install_cni(node)
        if node.cmd:
            self.start_process(node)
        if self.is_percale(node):
            self._wait_for_agent(node)
        self._wait_healthy(node)
        for command in node.exec:
            done = self.exec(node.name, ["sh", "-c", command], capture=True)
            if done.returncode != 0:
                output = (done.stderr or done.stdout).strip()
                raise LabError(f"node {node.name}: exec {command!r} failed "
                               f"({exit_status(done.returncode)})"
                               + (f": {output}" if output else ""))
        self._check_running(node)
        progress(f"{node.name} started")

    def _exited(self, node: str) -> int | None:
        """The exit status of the node's cmd as this Lab started it, None while it runs."""
        started = self._started.get(node)
        return None if started is None else started[0].poll()

    def _check_running(self, node: Node) -> None:
        """A cmd that ended with an error has failed to start, as Docker fails to start a
        container whose command cannot run; one that ended with status 0 is a node whose work
        is done (a finished container), and stays `exited`."""
        status = self._exited(node.name)
        if status:
            raise LabError(f"node {node.name}: cmd {node.cmd!r} ended ({exit_status(status)})"
                           + self.log_tail(node.name))

    def _check_started(self, nodes: list[str]) -> None:
        """The nodes' cmds (started by this Lab) still running, or ended well, START_GRACE
        after the last of them started."""
        if not nodes:
            return
        deadline = max(self._started[name][1] for name in nodes) + START_GRACE
        while True:
            for name in nodes:
                self._check_running(self.topology.nodes[name])
            if time.monotonic() >= deadline:
                return
            time.sleep(0.05)

    def start_process(self, node: Node) -> dict:
        """Start the node's cmd in its namespace, in a session of its own; record it."""
        ns = self.topology.namespace(node.name)
        log = open(self.node_dir(node.name) / f"{node.name}.log", "a")
        # `ip netns exec` gives the process a mount namespace of its own; a lab kubelet keeps
        # the machine's, as a kubelet runs in its host's: the pod network namespaces it adds
        # must be visible to the lab's tools and to the pods it starts later.
        enter = (["nsenter", f"--net=/var/run/netns/{ns}"] if self.is_kubelet(node)
                 else ["ip", "netns", "exec", ns])
        with log, _starting(f"node {node.name}: cmd {node.cmd!r}"):
            process = subprocess.Popen(
                [*enter, "sh", "-c", "exec " + self.rewrite(node, node.cmd)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env=self.environment(node), cwd=self.node_dir(node.name), start_new_session=True)
        self._started[node.name] = (process, time.monotonic())
        record = {"node": node.name, "pid": process.pid, "start": _start_time(process.pid),
                  "cmd": node.cmd}
        if self.is_kubelet(node):
            # Where it records its pods, for `down` even once the file no longer reads.
            root = kubelet_root(self.rewrite(node, node.cmd))
            record["kubelet_root"] = str(root) if root is not None else None
        with self._editing() as state:
            state["processes"].append(record)
        return record

    def _install_cni(self, node: Node) -> None:
        cni = self.node_dir(node.name) / "cni"
        env = self.environment(node)
        sh(str(VENV_BIN / "percalectl"), "cni", "install", "--bin-dir", str(cni / "bin"),
           "--conf-dir", str(cni / "net.d"), "--node-name", node.name,
           "--agent-socket", env["PERCALE_CNI_SOCKET"], "--python", sys.executable, env=env)
        # The reference plugins beside ours, as in a node's /opt/cni/bin (portmap is chained).
        for plugin in CNI_REFERENCE_PLUGINS.iterdir():
            target = cni / "bin" / plugin.name
            if not target.exists():
                target.symlink_to(plugin)

    def _wait_for_agent(self, node: Node, timeout: float = 60) -> None:
        socket = Path(self.environment(node)["PERCALE_CNI_SOCKET"])
        deadline = time.monotonic() + timeout
        while not socket.exists():
            if not self.node_running(node.name) or time.monotonic() > deadline:
                status = self._exited(node.name)
                why = (exit_status(status) if status is not None
                       else "it stopped" if not self.node_running(node.name)
                       else f"no socket {socket} after {timeout:g} s")
                raise LabError(f"node {node.name}: percale-node did not start ({why})"
                               + self.log_tail(node.name))
            time.sleep(0.05)

    def _wait_healthy(self, node: Node) -> None:
        check = node.healthcheck
        if check is None:
            return
        time.sleep(check.start_period)
        last = ""
        for _ in range(max(check.retries, 1)):
            try:
                done = self.exec(node.name, ["sh", "-c", check.test], capture=True,
                                 timeout=check.timeout)
                if done.returncode == 0:
                    return
                output = (done.stderr or done.stdout).strip()
                last = exit_status(done.returncode) + (f": {output}" if output else "")
            except subprocess.TimeoutExpired:
                last = f"timed out after {check.timeout:g} s"
            if node.cmd and not self.node_running(node.name):
                status = self._exited(node.name)
                last += "; its cmd ended"
                if status is not None:
                    last += f" ({exit_status(status)})"
                break
            time.sleep(check.interval)
        raise LabError(f"node {node.name}: not healthy ({check.test!r}: {last})"
                       + self.log_tail(node.name))

    def log_tail(self, node: str, lines: int = 15) -> str:
        """The end of the node's log on lines of its own, or "" when it wrote nothing."""
        log = self.node_dir(node) / f"{node}.log"
        try:
            tail = log.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            return ""
        return "".join(f"\n{line}" for line in tail)

    # -- using a running lab -----------------------------------------------------------------

    def node(self, name: str) -> Node:
        try:
            return self.topology.nodes[name]
        except KeyError:
            raise LabError(f"lab {self.topology.name!r} has no node {name!r} (nodes: "
                           f"{', '.join(self.topology.nodes)})") from None

    def exec(self, node: str, argv: list[str], *, capture: bool = False,
             timeout: float | None = None, input: str | None = None) -> subprocess.CompletedProcess:
        """Run argv in the node, with its environment, from its directory; bind paths in argv
        are rewritten as in the node's own commands (here only: callers pass argv as written
        for the node)."""
        spec = self.node(node)
        ns = self.topology.namespace(node)
        if not self.owns(ns):
            raise LabError(f"node {node} is not up (percalectl lab up -t {self.topology.path})")
        argv = [self.rewrite(spec, arg) for arg in argv]
        with _starting(f"node {node}: {shlex.join(argv)!r}"):
            return subprocess.run(["ip", "netns", "exec", ns, *argv], env=self.environment(spec),
                                  cwd=self.node_dir(node), capture_output=capture, text=True,
                                  timeout=timeout, input=input)

    def processes(self, node: str) -> list[dict]:
        return [p for p in self.state()["processes"] if p["node"] == node]

    def node_running(self, node: str) -> bool:
        records = self.processes(node)
        return bool(records) and all(alive(r) for r in records[-1:])

    def stop(self, node: str, sig: int = signal.SIGTERM, timeout: float = 15) -> None:
        """Stop the node's cmd as a container stops: `sig` to its process group (with SIGTERM
        the agent stops its own children), and once it has gone, SIGKILL to whatever it started
        that is still running. percale-node starts ExaBGP in a session of its own, so a killed
        agent would otherwise leave ExaBGP holding the node's BGP sessions up, driven by
        nobody, where a killed container takes them down."""
        for record in self.processes(node):
            started = _descendants(record["pid"]) if alive(record) else []
            _signal_session(record, sig, timeout)
            _kill_all(started)

    def start(self, node: str) -> None:
        """Start a stopped node's cmd again (and wait for a percale agent's socket)."""
        spec = self.node(node)
        if not self.owns(self.topology.namespace(node)):
            # Before anything is written: a state file made here would read as a lab that is up.
            raise LabError(f"node {node} is not up (percalectl lab up -t {self.topology.path})")
        if self.node_running(node):
            raise LabError(f"node {node} is already running")
        if not spec.cmd:
            raise LabError(f"node {node} has no cmd to start")
        with self._editing() as state:
            state["processes"] = [p for p in state["processes"] if p["node"] != node]
        if self.is_percale(spec):
            Path(self.environment(spec)["PERCALE_CNI_SOCKET"]).unlink(missing_ok=True)
        self.start_process(spec)
        if self.is_percale(spec):
            self._wait_for_agent(spec)
        self._check_started([node])

    def status(self) -> list[dict]:
        """One row per node: name, kind, image, state, management address, PIDs."""
        addresses = self.topology.mgmt_addresses()
        ours = self.state()["namespaces"]
        rows = []
        for node in self.topology.nodes.values():
            ns = self.topology.namespace(node.name)
            records = self.processes(node.name)
            if ns not in ours or not self._namespace_exists(ns):
                state = "absent"
            elif node.is_bridge or not node.cmd:
                state = "up"
            elif records and all(alive(r) for r in records):
                state = "running"
            else:
                state = "exited"
            rows.append({"name": node.name, "namespace": ns, "kind": node.kind,
                         "image": node.image, "state": state,
                         "ipv4": str(addresses.get(node.name, "")),
                         "pids": [r["pid"] for r in records if alive(r)]})
        return rows

    # -- down --------------------------------------------------------------------------------

    def down(self) -> list[str]:
        """Stop every recorded process, then remove the namespaces the lab made and every
        process in them: those recorded (nodes, the management network, pods), and the pods of
        its lab kubelets; then the lab's directory. A namespace the lab did not make is left
        alone, whatever it is called: with `prefix: ""` a node's name may be anyone's."""
        state = self.state()
        # Read before the processes stop: a kubelet removes its pods when stopped, and one
        # killed before it finished leaves them, with its records of them.
        names = self._kubelet_pod_namespaces(state)
        for record in state["processes"]:
            _signal_session(record, signal.SIGTERM, 10)
        names |= set(state["namespaces"])
        names |= {pod["namespace"] for pod in state.get("pods", {}).values()}
        removed = []
        # Pods first (their veths' host ends live in the nodes), then nodes.
        for name in sorted(names, key=lambda n: ("." not in n, n)):
            if not self._namespace_exists(name):
                continue
            for pid in sh("ip", "netns", "pids", name, check=False).stdout.split():
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
            for _ in range(50):
                if not sh("ip", "netns", "pids", name, check=False).stdout.split():
                    break
                time.sleep(0.1)
            sh("ip", "netns", "del", name, check=False)
            removed.append(name)
        shutil.rmtree(self.dir, ignore_errors=True)
        return removed

    def _kubelet_pod_namespaces(self, state: dict) -> set[str]:
        """The pod namespaces the lab's kubelets recorded (<root>/pods/*/pod.json), not those
        named like them: a kubelet names its pods `<its node's namespace>.<namespace>-<pod>`,
        and so may another lab name its nodes (lab `A-k.b` beside lab A's node k). Only a
        kubelet in a namespace this lab made, and only pods named under it (a root two labs
        share holds the other's too)."""
        found = set()
        for node, record in _kubelet_records(self):
            node_namespace = self.topology.namespace(node)
            netns = record.get("netns")
            if node_namespace in state["namespaces"] and isinstance(netns, str) \
                    and netns.startswith(f"{node_namespace}."):
                found.add(netns)
        return found


NEIGHBOUR_LIMIT = Path("/proc/sys/net/ipv4/neigh/default/gc_thresh3")


def neighbour_entries(topology: Topology) -> int:
    """ARP entries the lab needs when every node talks to every node on each shared segment:
    k hosts on one bridge hold k*(k-1) entries; on the management network each node knows the
    gateway and etcd-like neighbours, and those know every node (counted as 3 per node)."""
    hosts = [n for n in topology.nodes.values() if not n.is_bridge]
    total = 3 * len(hosts)
    for bridge in (n for n in topology.nodes.values() if n.is_bridge):
        ports = sum(1 for link in topology.links for end in (link.a, link.b) if end.node == bridge.name)
        total += ports * (ports - 1)
    return total


def neighbour_table_warning(topology: Topology) -> str | None:
    """The kernel's ARP table is one for the whole machine, every namespace included
    (gc_thresh3, 1024 by default): past it, neighbours stay INCOMPLETE and sends fail with
    ENOBUFS, and a big lab's BGP sessions flap for no visible reason. Say so before `up`."""
    try:
        limit = int(NEIGHBOUR_LIMIT.read_text())
    except (OSError, ValueError):
        return None
    needed = neighbour_entries(topology)
    if needed <= limit * 0.8:
        return None
    return (f"warning: this lab needs about {needed} ARP entries and the kernel's table holds "
            f"{limit} for the whole machine (net.ipv4.neigh.default.gc_thresh3); raise it, e.g. "
            f"sysctl -w net.ipv4.neigh.default.gc_thresh3={needed * 2} "
            f"net.ipv4.neigh.default.gc_thresh2={needed * 2}")


def _signal_session(record: dict, sig: int, timeout: float) -> None:
    """Signal the recorded process's session (it leads it), wait for it to go, then SIGKILL."""
    if not alive(record):
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(record["pid"], sig)
    deadline = time.monotonic() + timeout
    while alive(record) and time.monotonic() < deadline:
        _reap(record["pid"])
        time.sleep(0.05)
    if alive(record):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(record["pid"], signal.SIGKILL)
        while alive(record):
            _reap(record["pid"])
            time.sleep(0.02)


def _descendants(pid: int) -> list[dict]:
    """Every process below `pid` (children, theirs, ...) as records `alive` can check."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue  # ended while we looked
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, queue = [], list(children.get(pid, []))
    while queue:
        child = queue.pop()
        found.append({"pid": child, "start": _start_time(child)})
        queue += children.get(child, [])
    return [r for r in found if r["start"] is not None]


def _kill_all(records: list[dict], timeout: float = 10) -> None:
    """SIGKILL each recorded process still running, and wait until none is."""
    for record in records:
        if alive(record):
            with contextlib.suppress(ProcessLookupError):
                os.kill(record["pid"], signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while any(alive(r) for r in records) and time.monotonic() < deadline:
        time.sleep(0.02)


def _reap(pid: int) -> None:
    """Collect a child of this process that has ended (when `up` and `down` share a process)."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def kubelet_root(cmd: str) -> Path | None:
    """The --root of a lab kubelet's command line, read as the kubelet's argparse reads it
    (lab/kubelet.py): `--root DIR` or `--root=DIR`, the last one given. None when it has none
    or the line does not split: such a kubelet does not start, and has no pods."""
    parser = argparse.ArgumentParser(add_help=False, exit_on_error=False)
    parser.add_argument("--root")
    try:
        known, _ = parser.parse_known_args(shlex.split(cmd)[1:])
    except (ValueError, argparse.ArgumentError):
        return None
    return Path(known.root) if known.root else None


def _kubelet_records(lab: Lab) -> list[tuple[str, dict]]:
    """(node, record) for each pod a lab kubelet records (lab/kubelet.py: pod.json)."""
    found = []
    for node, root in lab.kubelet_roots().items():
        for path in sorted(root.glob("pods/*/pod.json")):
            try:
                record = json.loads(path.read_text())
            except (OSError, ValueError):
                continue  # the pod is going away
            if isinstance(record, dict):
                found.append((node, record))
    return found


def kubelet_pods(lab: Lab) -> list[dict]:
    """The records lab kubelets keep of the pods they run (lab/kubelet.py: pod.json)."""
    return [record for _, record in _kubelet_records(lab)]


def open_lab(path: str | Path) -> Lab:
    """The lab a topology file describes; TopologyError when the file cannot be run."""
    from percale.lab.topology import load

    lab = Lab(load(path))
    if problem := lab.socket_path_problem():
        raise TopologyError(f"{lab.topology.path}: {problem}")
    return lab


__all__ = ["Lab", "LabError", "TopologyError", "kubelet_pods", "open_lab"]
