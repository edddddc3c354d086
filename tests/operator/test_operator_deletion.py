"""Deleting the Installation while one of the operator's timers is running: kopf holds the
Installation (its finalizer) until the timer has stopped, and with kopf's defaults it looks
again only 60 s later, so the garbage collector took what the Installation owned a minute late
(the operator's resync timer runs every 5 s; a busy machine made the overlap likely). The
operator has kopf look again every STOP_POLL seconds."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from percale.installation.operator import STOP_POLL
from tests.helpers.kube_apiserver import ROOT, KubeControlPlane
from tests.helpers.processes import stop_process
from tests.operator import busy_timer
from tests.operator.test_operator import get, wait_for

pytestmark = pytest.mark.operator


def test_an_installation_deleted_while_a_timer_runs_goes_once_the_timer_ends(tmp_path):
    plane = KubeControlPlane().start()
    mark = tmp_path / "busy"
    log = open(tmp_path / "operator.log", "ab")
    operator = subprocess.Popen(
        [str(Path(sys.executable).parent / "kopf"), "run", "--standalone", "--all-namespaces",
         "-m", "tests.operator.busy_timer"],
        env={**os.environ, "KUBECONFIG": plane.admin, "PERCALE_TEST_MARK": str(mark),
             "PYTHONPATH": str(ROOT)},
        cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    log.close()
    try:
        plane.kubectl("create", "-f", str(ROOT / "manifests" / "installation.yaml"))
        assert wait_for(lambda: mark.exists(), 60), (tmp_path / "operator.log").read_text()
        mark.unlink()
        assert wait_for(lambda: mark.exists(), 30, 0.05)  # a run of the timer has just begun
        deleted = time.monotonic()
        plane.kubectl("delete", "installation", "default", "--wait=false")
        gone = wait_for(lambda: get(plane, "installation", "default") is None, 90, 0.1)
        took = time.monotonic() - deleted
        assert gone and took < busy_timer.BUSY + STOP_POLL + 10, (
            f"the Installation went {took:.1f} s after its deletion",
            (tmp_path / "operator.log").read_text()[-3000:])
    finally:
        stop_process(operator, 15)
        plane.stop()
