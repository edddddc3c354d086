"""percalectl's exit status: a command line that does not parse is 1, as calicoctl's, while a
command `lab exec` runs keeps its own status, 2 included."""

from __future__ import annotations

import types

import pytest

from percale.ctl import lab_cmd
from percale.ctl import main as ctl_main

pytestmark = pytest.mark.unit


def _exit_status(monkeypatch, argv: list[str]) -> object:
    monkeypatch.setattr("sys.argv", ["percalectl", *argv])
    with pytest.raises(SystemExit) as done:
        ctl_main.main()
    return done.value.code


@pytest.mark.parametrize("status", [0, 1, 2, 137])
def test_lab_exec_passes_its_commands_status_on(monkeypatch, status):
    class Lab:
        def exec(self, node, command):
            return types.SimpleNamespace(returncode=status)
    monkeypatch.setattr(lab_cmd, "_lab", lambda topology: Lab())
    assert _exit_status(monkeypatch, ["lab", "exec", "-t", "x.clab.yml", "node1", "--",
                                      "grep", "-q", "x", "/nonexistent"]) == status


def test_a_command_line_that_does_not_parse_is_1(monkeypatch, capsys):
    assert _exit_status(monkeypatch, ["get", "ippools", "--no-such-flag"]) == 1
    assert "No such option" in capsys.readouterr().err
