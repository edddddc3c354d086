"""percale-node refuses bad settings at start with one line naming the option, before it
touches the datastore or the kernel: a bogus MTU interface pattern, a non-numeric MTU, an unknown
networking backend, a router ID that is none or 0, a node address no peer could reach, a socket
path the kernel cannot bind. (A pool with VXLAN and IPIP both on is refused by the resource model:
tests/unit/test_resources.py.)"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.cli

AGENT = str(Path(sys.executable).parent / "percale-node")


def start(*args: str) -> subprocess.CompletedProcess:
    # An etcd nobody runs: a bad option must be refused before the agent would wait for it.
    return subprocess.run([AGENT, "--etcd-endpoints", "http://127.0.0.1:1", *args],
                          capture_output=True, text=True, timeout=30)


@pytest.mark.parametrize("args, words", [
    (["--mtu-iface-pattern", "(eth"], "--mtu-iface-pattern: '(eth' is not a regular expression"),
    (["--mtu", "lots"], "Invalid value for '--mtu'"),
    (["--mtu", "70000"], "Invalid value for '--mtu'"),
    (["--networking-backend", "calico"], "--networking-backend: 'calico' is not bgp, vxlan or none"),
    (["--router-id", "node-1"], "--router-id: 'node-1' is neither 'hash' nor an IPv4 address"),
])
def test_bad_options_are_refused_at_start_naming_the_option(args, words):
    done = start(*args)
    assert done.returncode != 0
    assert words in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


def refused(*args: str) -> str:
    """What percale-node says when it refuses `args`: exit 1, one line, no traceback. (Before the
    fixes below each of these waited for the datastore, so the run timed out.)"""
    done = start(*args)
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    return lines[0]


@pytest.mark.parametrize("flag, value, reason", [
    # Reached the datastore, then stopped with a traceback (InvalidResource from the Node model).
    ("--ip6", "fe80::1%eth0/64", "'fe80::1%eth0/64' has a zone (%...): give the address without it"),
    ("--ip6", "::ffff:10.0.0.1/96", "'::ffff:10.0.0.1/96' is an IPv4-mapped address: write the IPv4"
                                    " address 10.0.0.1 with its own prefix length"),
    # Were registered as the node's BGP address.
    ("--ip", "0.0.0.0/0", "0.0.0.0/0: the unspecified address names no host"),
    ("--ip6", "::/64", "::/64: the unspecified address names no host"),
    ("--ip", "127.0.0.1/8", "127.0.0.1/8: a loopback address never leaves this host"),
    ("--ip6", "::1/128", "::1/128: a loopback address never leaves this host"),
    ("--ip", "224.0.0.5/24", "224.0.0.5/24: a multicast address cannot be a BGP session's end"),
    ("--ip6", "ff02::5/64", "ff02::5/64: a multicast address cannot be a BGP session's end"),
    ("--ip", "169.254.3.4/16", "169.254.3.4/16: a link-local address reaches only its own link"),
    ("--ip6", "fe80::5/64", "fe80::5/64: a link-local address reaches only its own link"),
    ("--ip", "240.0.0.1/24", "240.0.0.1/24: an address of 240.0.0.0/4 (reserved"),
    ("--ip", "255.255.255.255/32", "255.255.255.255/32: an address of 240.0.0.0/4 (reserved"),
])
def test_an_address_no_peer_could_use_is_refused_naming_the_flag(flag, value, reason):
    assert refused(flag, value).startswith(f"percale-node: {flag}: {reason}")


def test_router_id_zero_is_refused():
    assert refused("--router-id", "0.0.0.0") == (
        "percale-node: --router-id: '0.0.0.0': a BGP router ID must not be 0 (RFC 6286)")


LONG = "/tmp/" + "d" * 120


@pytest.mark.parametrize("flag, env, value, subject", [
    ("--cni-socket", "PERCALE_CNI_SOCKET", f"{LONG}/cni.sock", "the path is 134"),
    ("--status-socket", "PERCALE_STATUS_SOCKET", f"{LONG}/status.sock", "the path is 137"),
    # ExaBGP's helper connects back to the agent on a socket in --bgp-dir.
    ("--bgp-dir", "PERCALE_BGP_DIR", LONG, f"ExaBGP's socket there, '{LONG}/exabgp.sock', is 137"),
])
def test_a_socket_path_too_long_to_bind_is_refused_at_start(flag, env, value, subject):
    # Was an OSError ("AF_UNIX path too long") only once the datastore answered and the node had
    # registered, naming neither the setting nor the limit.
    assert refused(flag, value) == (
        f"percale-node: {flag} ({env}) '{value}': {subject} bytes long; a UNIX socket path must be"
        " shorter than 108 bytes")

