"""Shared fixtures: one real etcd per test session, wiped between tests."""

from __future__ import annotations

import subprocess

import pytest

from tests.helpers.etcd_server import EtcdServer


@pytest.fixture(scope="session")
def etcd_server():
    server = EtcdServer().start()
    yield server
    server.stop()


@pytest.fixture
def etcd(etcd_server):
    """The session's etcd, emptied of percale keys (with etcd's own client, etcdctl)."""
    subprocess.run(
        ["etcdctl", "--endpoints", etcd_server.endpoint, "del", "--prefix", "/percale/"],
        env={"ETCDCTL_API": "3", "PATH": "/usr/bin:/bin"}, check=True, capture_output=True,
    )
    return etcd_server
