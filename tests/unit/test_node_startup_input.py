"""percale-node's settings checked before it starts: a bad one is a one-line error naming the
setting and exit 1, before the datastore is contacted, never a traceback once the node has
registered and serves CNI.

The entry point runs for real, with an etcd nobody listens on: a setting that got past the
checks would leave it waiting for the datastore until the timeout."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from percale.api import IPPool, parse
from percale.node import registration
from percale.api.listen import listen_address
from percale.node.main import resolve_node_name
from percale.vxlan.plan import HOST_MTU_MIN, POD_MTU_MIN, MTUTooSmall, pod_mtu

pytestmark = pytest.mark.unit

NODE = Path(sys.executable).with_name("percale-node")
UNREACHABLE_ETCD = "http://127.0.0.1:9"


def start_node(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    settings = {k: v for k, v in os.environ.items() if k not in ("NODENAME", "IP", "IP6", "AS")}
    settings |= {"ETCD_ENDPOINTS": UNREACHABLE_ETCD, "NODENAME": "n1", "IP": "none",
                 "PERCALE_CNI_SOCKET": str(tmp_path / "cni.sock"),
                 "PERCALE_STATUS_SOCKET": str(tmp_path / "status.sock"),
                 "PERCALE_MTU_FILE": str(tmp_path / "mtu"), "PERCALE_BGP_DIR": str(tmp_path / "bgp")}
    return subprocess.run([str(NODE)], env=settings | env, capture_output=True, text=True, timeout=20)


@pytest.mark.parametrize("setting, value", [
    ("PERCALE_HEALTH_LISTEN", "bogus"),            # was ValueError: invalid literal for int()
    ("PERCALE_HEALTH_LISTEN", "127.0.0.1:99999"),  # was OverflowError from bind()
    ("PERCALE_HEALTH_LISTEN", "::1:9099"),
    ("PERCALE_HEALTH_LISTEN", "192.0.2.1:9099"),   # not this machine's: was found after registering
    ("NODENAME", "Node_1"),                        # was InvalidResource, after serving CNI
    ("NODENAME", " n1 "),
    ("PERCALE_MTU", "1"),                          # was a pod MTU of -49 in the MTU file
    ("PERCALE_MTU", str(HOST_MTU_MIN - 1)),
])
def test_a_bad_setting_stops_the_node_before_it_starts(tmp_path, setting, value):
    done = start_node(tmp_path, **{setting: value})
    assert done.returncode == 1
    assert setting in done.stderr and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert not (tmp_path / "cni.sock").exists()


def test_a_health_port_in_use_stops_the_node_before_it_registers(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = start_node(tmp_path, PERCALE_HEALTH_LISTEN=f"127.0.0.1:{port}")
    assert done.returncode == 1
    assert done.stderr.strip().startswith(
        f"percale-node: --health-listen (PERCALE_HEALTH_LISTEN) '127.0.0.1:{port}': cannot listen "
        "there"), done.stderr
    assert "address already in use" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert not (tmp_path / "cni.sock").exists()


def test_a_bad_log_level_is_an_error_not_a_traceback(tmp_path):
    done = subprocess.run([str(NODE), "--log-level", "bogus"], capture_output=True, text=True, timeout=20,
                          env=os.environ | {"ETCD_ENDPOINTS": UNREACHABLE_ETCD})
    assert done.returncode == 1
    assert "--log-level" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize("listen, expected", [
    ("127.0.0.1:9099", ("127.0.0.1", 9099)),
    (":9099", ("127.0.0.1", 9099)),
    ("0.0.0.0:65535", ("0.0.0.0", 65535)),
    ("[::1]:9099", ("::1", 9099)),
    ("localhost:1", ("localhost", 1)),
])
def test_health_listen_is_host_and_port(listen, expected):
    assert listen_address(listen) == expected


@pytest.mark.parametrize("listen, reason", [
    ("bogus", "not HOST:PORT"),
    ("127.0.0.1:99999", "1 to 65535"),
    ("127.0.0.1:0", "1 to 65535"),  # a port the kernel picks: no probe would find it
    ("127.0.0.1:", "1 to 65535"),
    ("127.0.0.1:-1", "1 to 65535"),
    ("::1:9099", "brackets"),
    ("[1.2.3.4]:9099", "not an IPv6 address"),
    ("no_such host:9099", "neither an IP address nor a host name"),
])
def test_a_bad_health_listen_says_why(listen, reason):
    with pytest.raises(ValueError, match=reason):
        listen_address(listen)


def test_the_default_node_name_is_the_host_name_and_checked(monkeypatch):
    monkeypatch.setattr("socket.gethostname", lambda: "Worker-1\n")
    assert resolve_node_name(None) == resolve_node_name("") == "worker-1"
    assert resolve_node_name("n1") == "n1"
    monkeypatch.setattr("socket.gethostname", lambda: "worker_1")
    with pytest.raises(registration.RegistrationError, match="host name.*NODENAME.*'worker_1'"):
        resolve_node_name(None)
    with pytest.raises(registration.RegistrationError, match="NODENAME.*'n1 '"):
        resolve_node_name("n1 ")


def pool(cidr: str, vxlan: str) -> IPPool:
    return parse({"apiVersion": "percale.io/v1", "kind": "IPPool", "metadata": {"name": "p"},
                  "spec": {"cidr": cidr, "vxlanMode": vxlan}})  # type: ignore[return-value]


def test_the_pod_mtu_is_never_below_the_smallest_usable_one():
    assert pod_mtu(HOST_MTU_MIN, [pool("fd00::/48", "Always")]) == POD_MTU_MIN
    assert pod_mtu(600, [pool("10.244.0.0/16", "Never")]) == 600
    # A host interface with a tiny MTU, as detected: refused, not written as a negative pod MTU.
    with pytest.raises(MTUTooSmall, match="host MTU 1 .* 50 bytes .* -49"):
        pod_mtu(1, [pool("10.244.0.0/16", "Always")])
    with pytest.raises(MTUTooSmall):
        pod_mtu(600, [pool("10.244.0.0/16", "Always")])
