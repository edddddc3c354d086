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


@pytest.fixture(scope="session")
def kube_server():
    """One real kube-apiserver (and its etcd) per session, with percale's CRDs installed; the
    binaries are built on first use (scripts/k8s-binaries.sh)."""
    from tests.helpers.kube_apiserver import KubeControlPlane

    server = KubeControlPlane().start()
    yield server
    server.stop()


@pytest.fixture
def kube(kube_server):
    """The session's apiserver with no percale objects left from an earlier test."""
    kube_server.wipe()
    return kube_server


@pytest.fixture(params=["etcd", "kubernetes"])
def real_datastore(request) -> str:
    """Each real backend in turn, named as worker processes open it: an etcd URL or a kubeconfig
    (tests/helpers/store.py)."""
    if request.param == "etcd":
        return request.getfixturevalue("etcd").endpoint
    return request.getfixturevalue("kube").admin
