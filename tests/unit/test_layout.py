"""The project's shape that users and CI depend on: the required top level, a valid
docker-compose.yml, and the two README commands wired to CI."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]


def test_required_top_level_entries_exist():
    for entry in ("pyproject.toml", "bgpd", "ipam", "cni-plugin", "crds", "tests", "docker-compose.yml"):
        assert (ROOT / entry).exists(), entry


def test_docker_compose_file_is_valid():
    """No Docker engine runs here, so Debian's docker-compose validates the file instead."""
    done = subprocess.run(
        ["docker-compose", "-f", str(ROOT / "docker-compose.yml"), "config"],
        capture_output=True, text=True, cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    config = yaml.safe_load(done.stdout)
    etcd = config["services"]["etcd"]
    dockerfile = (ROOT / etcd["build"]["dockerfile"]).read_text()
    assert "etcd-server" in dockerfile


def test_readme_opens_with_the_two_commands_and_ci_runs_the_test_one():
    head = (ROOT / "README.md").read_text().splitlines()[:20]
    assert "bash scripts/dev.sh demo" in "\n".join(head)
    assert "bash scripts/dev.sh test" in "\n".join(head)
    assert "bash scripts/dev.sh test" in (ROOT / ".ci/run").read_text()
