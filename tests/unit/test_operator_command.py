"""percale-operator's command line: kopf run with the operator's module, standalone and
cluster-wide unless the options choose otherwise, and a --help that says so."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from percale.installation.operator import kopf_arguments

pytestmark = pytest.mark.unit

MODULE = ["run", "-m", "percale.installation.operator"]


@pytest.mark.parametrize("args, expected", [
    ([], ["--standalone", "--all-namespaces"]),
    # An option about something else keeps both defaults (it once dropped them).
    (["-v"], ["--standalone", "--all-namespaces", "-v"]),
    (["--namespace", "percale-operator"], ["--standalone", "--namespace", "percale-operator"]),
    (["-npercale-operator"], ["--standalone", "-npercale-operator"]),
    (["--peering=percale"], ["--all-namespaces", "--peering=percale"]),
    (["-P", "percale", "-A"], ["-P", "percale", "-A"]),
])
def test_defaults_stay_unless_an_option_chooses_otherwise(args, expected):
    assert kopf_arguments(args) == MODULE + expected


def test_help_says_what_percale_operator_runs():
    done = subprocess.run([str(Path(sys.executable).parent / "percale-operator"), "--help"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("percale-operator: installs percale from the Installation")
    assert "kopf run -m percale.installation.operator --standalone --all-namespaces" in done.stdout
    assert "--peering TEXT" in done.stdout  # kopf's own options follow
