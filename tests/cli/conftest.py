"""percalectl as a user runs it: the installed console script, against the session's etcd."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers.store import store_env

PERCALECTL = shutil.which("percalectl", path=str(Path(sys.executable).parent)) or "percalectl"


@dataclass
class Result:
    code: int
    out: str
    err: str


@dataclass
class CLI:
    # An etcd URL, or a kubeconfig for the Kubernetes datastore (tests/helpers/store.py).
    endpoint: str

    def __call__(self, *args: str, stdin: str | None = None, env: dict | None = None,
                 cwd: Path | None = None) -> Result:
        environ = {**os.environ, **store_env(self.endpoint), **(env or {})}
        done = subprocess.run(
            [PERCALECTL, *args], input=stdin, capture_output=True, text=True, env=environ,
            timeout=60, cwd=cwd,
        )
        assert "Traceback" not in done.stderr, done.stderr
        return Result(done.returncode, done.stdout, done.stderr)

    def stored(self) -> dict[str, tuple[int, str]]:
        """Every percale key in etcd with its mod_revision and value, read with etcdctl."""
        out = subprocess.run(
            ["etcdctl", "--endpoints", self.endpoint, "get", "--prefix", "/percale/", "-w", "json"],
            env={"ETCDCTL_API": "3", "PATH": "/usr/bin:/bin"}, capture_output=True, text=True,
            check=True,
        ).stdout
        kvs = json.loads(out).get("kvs", [])
        return {
            base64.b64decode(kv["key"]).decode(): (int(kv["mod_revision"]), base64.b64decode(kv["value"]).decode())
            for kv in kvs
        }


@pytest.fixture
def cli(etcd) -> CLI:
    return CLI(etcd.endpoint)


@pytest.fixture
def examples() -> Path:
    return Path(__file__).resolve().parents[2] / "examples"
