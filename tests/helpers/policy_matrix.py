"""A network-policy conformance world on two real percale nodes (dataplane.md §C3): pods x/a ..
z/c spread over the nodes, each serving TCP and UDP on 80 and 81 with named ports
serve-<port>-<tcp|udp>, and one host outside the pools; every ordered pair probed on each port and
protocol, all probes at once.

Probes are made from the test process: a socket is created inside the source's network namespace
(setns on this thread, create, setns back: a socket stays in the namespace it was made in), then
every TCP connect and UDP exchange runs concurrently with one timeout.
"""

from __future__ import annotations

import ctypes
import os
import selectors
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass

CLONE_NEWNET = 0x40000000
PORTS = (80, 81)
PROTOCOLS = ("TCP", "UDP")
NAMED_PORTS = tuple((f"serve-{port}-{proto.lower()}", proto, port) for port in PORTS for proto in PROTOCOLS)

_libc = ctypes.CDLL(None, use_errno=True)
_setns_lock = threading.Lock()

# Serves TCP (echo, until the client closes) and UDP (echo) on the ports in argv (default 80 and
# 81) on every address of its namespace.
SERVER = """
import selectors, socket, sys
sel = selectors.DefaultSelector()
for port in [int(p) for p in sys.argv[1:]] or [80, 81]:
    t = socket.socket(); t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    t.bind(("0.0.0.0", port)); t.listen(256); t.setblocking(False); sel.register(t, selectors.EVENT_READ, "listen")
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(("0.0.0.0", port))
    u.setblocking(False); sel.register(u, selectors.EVENT_READ, "udp")
print("serving", flush=True)
while True:
    for key, _ in sel.select():
        try:
            if key.data == "listen":
                conn, _ = key.fileobj.accept(); conn.setblocking(False)
                sel.register(conn, selectors.EVENT_READ, "conn")
            elif key.data == "conn":
                data = key.fileobj.recv(4096)
                if data:
                    key.fileobj.sendall(data)
                else:
                    sel.unregister(key.fileobj); key.fileobj.close()
            else:
                data, peer = key.fileobj.recvfrom(512); key.fileobj.sendto(data, peer)
        except OSError:
            pass
"""


def _setns(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns {path}")
    finally:
        os.close(fd)


def socket_in(netns: str, kind: int) -> socket.socket:
    """A non-blocking IPv4 socket inside network namespace `netns` (a name under /run/netns)."""
    with _setns_lock:
        home = f"/proc/self/task/{threading.get_native_id()}/ns/net"
        home_fd = os.open(home, os.O_RDONLY)
        try:
            _setns(f"/run/netns/{netns}")
            made = socket.socket(socket.AF_INET, kind)
        finally:
            if _libc.setns(home_fd, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns back")
            os.close(home_fd)
    made.setblocking(False)
    return made


@dataclass(frozen=True)
class Party:
    name: str  # x/a, or "external"
    netns: str
    address: str


def serve(netns: str, ports: tuple[int, ...] = PORTS) -> subprocess.Popen:
    process = subprocess.Popen(["ip", "netns", "exec", netns, sys.executable, "-c", SERVER,
                                *map(str, ports)],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert process.stdout.readline().strip() == "serving", f"server in {netns} did not start"
    return process


Probe = tuple[str, str, str, int]  # (from, to, protocol, port)


def reaches(source: Party, destination: Party, protocol: str, port: int, timeout: float = 0.5) -> bool:
    """One probe, as probe_all makes them."""
    return probe_many([(source, destination, protocol, port)], timeout)[0]


def probe_many(probes: list[tuple[Party, Party, str, int]], timeout: float = 0.5) -> list[bool]:
    """Some probes at once: (source, destination, protocol, port) -> reached, in order."""
    selector = selectors.DefaultSelector()
    results = [False] * len(probes)
    pending: dict[socket.socket, int] = {}
    for i, (source, destination, protocol, port) in enumerate(probes):
        if protocol == "TCP":
            sock = socket_in(source.netns, socket.SOCK_STREAM)
            sock.connect_ex((destination.address, port))
            selector.register(sock, selectors.EVENT_WRITE)
        else:
            sock = socket_in(source.netns, socket.SOCK_DGRAM)
            sock.sendto(b"probe", (destination.address, port))
            selector.register(sock, selectors.EVENT_READ)
        pending[sock] = i
    deadline = time.monotonic() + timeout
    while pending and time.monotonic() < deadline:
        for key, _ in selector.select(max(0.0, deadline - time.monotonic())):
            sock = key.fileobj
            i = pending.pop(sock)
            selector.unregister(sock)
            if probes[i][2] == "TCP":
                results[i] = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0
            else:
                try:
                    results[i] = sock.recv(64) == b"probe"
                except OSError:
                    results[i] = False
            sock.close()
    for sock in pending:
        selector.unregister(sock)
        sock.close()
    selector.close()
    return results


def probe_all(parties: list[Party], timeout: float = 1.0) -> dict[Probe, bool]:
    """Every ordered pair of distinct parties, each port and protocol: reached or not."""
    probes = [(a, b, protocol, port) for a in parties for b in parties if a is not b
              for protocol in PROTOCOLS for port in PORTS]
    return {(a.name, b.name, protocol, port): ok
            for (a, b, protocol, port), ok in zip(probes, probe_many(probes, timeout), strict=True)}


def differences(observed: dict[Probe, bool], expected: dict[Probe, bool]) -> list[str]:
    return [f"{a} -> {b} {proto}/{port}: expected {'allowed' if expected[k] else 'denied'}, "
            f"{'reached' if observed[k] else 'blocked'}"
            for k in sorted(expected) if observed.get(k) != expected[k]
            for a, b, proto, port in [k]]


def empty_etcd(server) -> None:
    """The session's etcd without percale keys (a module-scoped world starts from nothing)."""
    subprocess.run(["etcdctl", "--endpoints", server.endpoint, "del", "--prefix", "/percale/"],
                   env={"ETCDCTL_API": "3", "PATH": "/usr/bin:/bin"}, check=True, capture_output=True)


EXTERNAL_ADDRESS = "198.51.100.2"


def add_external_host(a, b) -> str:
    """A namespace outside the pools, behind node `a` on 198.51.100.0/24 (node `b` routes there
    through `a`); removed with `a`. Its name."""
    from tests.helpers.cni_node import sh

    external = "pclext" + a.name[-4:]
    sh("ip", "netns", "add", external)
    a.pods.append(external)
    sh("ip", "link", "add", "ext", "netns", a.name, "type", "veth", "peer", "name", "eth0",
       "netns", external)
    a.exec("ip", "addr", "add", "198.51.100.1/24", "dev", "ext")
    a.exec("ip", "link", "set", "ext", "up")
    for command in (["ip", "addr", "add", f"{EXTERNAL_ADDRESS}/24", "dev", "eth0"],
                    ["ip", "link", "set", "eth0", "up"], ["ip", "link", "set", "lo", "up"],
                    ["ip", "route", "add", "default", "via", "198.51.100.1"]):
        sh("ip", "netns", "exec", external, *command)
    routed = b.exec("ip", "route", "replace", "198.51.100.0/24", "via", "10.99.0.1", check=False)
    assert routed.returncode == 0, routed.stderr
    return external
