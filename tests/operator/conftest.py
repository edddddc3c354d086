"""The operator tests' control plane and percale-operator, shared by their modules (one of each
per module)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.kube_apiserver import ROOT, KubeControlPlane
from tests.helpers.processes import stop_process

OPERATOR = str(Path(sys.executable).parent / "percale-operator")


@pytest.fixture(scope="module")
def plane():
    plane = KubeControlPlane().start(controller_manager=True)
    yield plane
    plane.stop()


@pytest.fixture(scope="module")
def operator(plane):
    """percale-operator with the identity manifests/operator.yaml gives it (its service account's
    user name on a client certificate), not as an administrator."""
    plane.kubectl("apply", "-f", str(ROOT / "manifests" / "operator.yaml"))
    identity = plane.kubeconfig("system:serviceaccount:percale-operator:percale-operator")
    log = open(plane.work / "operator.log", "ab")
    process = subprocess.Popen([OPERATOR], env={**os.environ, "KUBECONFIG": identity},
                               stdout=log, stderr=subprocess.STDOUT)
    log.close()
    yield process
    stop_process(process, 15)
