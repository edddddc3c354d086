"""`percalectl cni install` run as a user runs it, into temporary directories. It needs no
datastore, so these tests start no etcd."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path

import pytest

from percale.node.cni_types import parse_netconf
from tests.cli.conftest import CLI, Result
from tests.helpers.shims import compiled_shim

pytestmark = pytest.mark.cli

SHIM = Path(__file__).resolve().parents[2] / "cni-plugin" / "percale_cni" / "shim.py"
PLUGINS = ("percale", "percale-ipam")


@pytest.fixture
def percalectl() -> CLI:
    # Nothing listens on this endpoint: a command that opened the datastore would fail.
    return CLI(endpoint="http://127.0.0.1:9")


@pytest.fixture
def dirs(tmp_path: Path) -> tuple[Path, Path]:
    # Both below directories that do not exist yet: install creates them.
    return tmp_path / "opt" / "cni" / "bin", tmp_path / "etc" / "cni" / "net.d"


def install(percalectl: CLI, dirs: tuple[Path, Path], *extra: str) -> Result:
    bin_dir, conf_dir = dirs
    return percalectl("cni", "install", "--bin-dir", str(bin_dir), "--conf-dir", str(conf_dir), *extra)


def leftovers(*directories: Path) -> list[str]:
    """Anything install left besides the files it is meant to write."""
    expected = {*PLUGINS, "portmap", "10-percale.conflist"}
    return [p.name for d in directories if d.is_dir() for p in d.iterdir() if p.name not in expected]


def test_install_writes_both_plugins_and_the_conflist(percalectl, dirs):
    bin_dir, conf_dir = dirs
    done = install(percalectl, dirs, "--node-name", "node1", "--agent-socket", "/run/p/cni.sock",
                   "--mtu", "1410", "--cni-version", "1.1.0", "--python", "/usr/local/bin/python3.11",
                   "--shim", "python")
    assert done.code == 0, done.err

    shim = SHIM.read_text()
    for name in PLUGINS:
        plugin = bin_dir / name
        assert stat.S_IMODE(plugin.stat().st_mode) == 0o755
        first, rest = plugin.read_text().split("\n", 1)
        assert first == "#!/usr/local/bin/python3.11 -IS"
        assert rest == shim.split("\n", 1)[1]
        assert str(plugin) in done.out

    conflist = conf_dir / "10-percale.conflist"
    assert stat.S_IMODE(conflist.stat().st_mode) == 0o644
    assert json.loads(conflist.read_text()) == {
        "name": "k8s-pod-network",
        "cniVersion": "1.1.0",
        "plugins": [
            {"type": "percale", "nodename": "node1", "agent_socket": "/run/p/cni.sock", "mtu": 1410,
             "ipam": {"type": "percale-ipam", "assign_ipv4": "true", "assign_ipv6": "false"}},
            {"type": "portmap", "snat": True, "capabilities": {"portMappings": True}},
        ],
    }
    assert str(conflist) in done.out
    # The plugin the conflist chains, from the reference plugins (Debian's, as in the image).
    assert (bin_dir / "portmap").read_bytes() == Path("/usr/lib/cni/portmap").read_bytes()
    assert leftovers(bin_dir, conf_dir) == []


def test_without_portmap_the_conflist_leaves_it_out(percalectl, dirs, tmp_path):
    """A conflist naming a plugin the runtime cannot find fails every pod's sandbox."""
    done = install(percalectl, dirs, "--plugins-dir", str(tmp_path / "none"))
    assert done.code == 0, done.err
    assert "No portmap in" in done.out
    plugins = json.loads((dirs[1] / "10-percale.conflist").read_text())["plugins"]
    assert [p["type"] for p in plugins] == ["percale"]
    assert not (dirs[0] / "portmap").exists()


def test_the_defaults(percalectl, dirs):
    compiled = compiled_shim()  # what the README's set-up builds beside percalectl
    done = install(percalectl, dirs)
    assert done.code == 0, done.err
    bin_dir, conf_dir = dirs
    for name in PLUGINS:
        assert (bin_dir / name).read_bytes() == compiled.read_bytes()
        assert f"{bin_dir / name} (compiled)" in done.out
    plugin = json.loads((conf_dir / "10-percale.conflist").read_text())["plugins"][0]
    assert plugin["nodename"] == os.uname().nodename.lower()
    assert (plugin["agent_socket"], plugin["mtu"]) == ("/var/run/percale/cni.sock", 0)
    assert json.loads((conf_dir / "10-percale.conflist").read_text())["cniVersion"] == "1.0.0"


@pytest.mark.parametrize("ipv4, ipv6, says", [("true", "true", "IPv4 and IPv6"),
                                              ("false", "true", "IPv6)")])
def test_the_families_a_pod_gets_reach_the_agent(percalectl, dirs, ipv4, ipv6, says):
    """What the operator passes for a dual-stack or IPv6-only Installation: the agent reads
    the installed conflist as giving pods those families."""
    done = install(percalectl, dirs, "--assign-ipv4", ipv4, "--assign-ipv6", ipv6)
    assert done.code == 0, done.err
    assert says in done.out
    config = json.loads((dirs[1] / "10-percale.conflist").read_text())
    plugin = {"cniVersion": config["cniVersion"], "name": config["name"], **config["plugins"][0]}
    parsed = parse_netconf(json.dumps(plugin))
    assert (parsed.ipam.assign_ipv4, parsed.ipam.assign_ipv6) == (ipv4 == "true", ipv6 == "true")


@pytest.mark.parametrize("shim", ["compiled", "python"])
def test_the_installed_plugin_runs_as_a_runtime_runs_it(percalectl, dirs, shim):
    compiled_shim()
    assert install(percalectl, dirs, "--shim", shim).code == 0
    done = subprocess.run([str(dirs[0] / "percale-ipam")], input='{"cniVersion": "1.0.0"}',
                          env={"CNI_COMMAND": "VERSION"}, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["cniVersion"] == "1.0.0"


def test_rerunning_replaces_the_files_in_place(percalectl, dirs):
    bin_dir, conf_dir = dirs
    assert install(percalectl, dirs, "--node-name", "old").code == 0
    first = {p.name: p.read_bytes() for p in (*bin_dir.iterdir(), *conf_dir.iterdir())}
    (bin_dir / "percale").chmod(0o700)

    again = install(percalectl, dirs, "--node-name", "old")
    assert again.code == 0, again.err
    assert {p.name: p.read_bytes() for p in (*bin_dir.iterdir(), *conf_dir.iterdir())} == first
    assert stat.S_IMODE((bin_dir / "percale").stat().st_mode) == 0o755

    assert install(percalectl, dirs, "--node-name", "new").code == 0
    assert json.loads((conf_dir / "10-percale.conflist").read_text())["plugins"][0]["nodename"] == "new"
    assert leftovers(bin_dir, conf_dir) == []


def test_a_target_that_cannot_be_replaced_fails_and_leaves_no_temporary_file(percalectl, dirs):
    # A directory where percale-ipam goes: the temporary file is written, the rename fails.
    bin_dir, conf_dir = dirs
    (bin_dir / "percale-ipam" / "in-the-way").mkdir(parents=True)

    done = install(percalectl, dirs)

    assert done.code == 1
    assert "cannot write" in done.err and str(bin_dir / "percale-ipam") in done.err
    assert sorted(p.name for p in bin_dir.iterdir()) == ["percale", "percale-ipam"]
    assert not (conf_dir / "10-percale.conflist").exists()


def test_a_directory_that_cannot_be_created_fails_with_its_name(percalectl, dirs, tmp_path):
    (tmp_path / "a-file").write_text("")
    done = install(percalectl, (dirs[0], tmp_path / "a-file" / "net.d"))
    assert done.code == 1
    assert "cannot create" in done.err and str(tmp_path / "a-file" / "net.d") in done.err


@pytest.mark.parametrize("option, value, word", [
    ("--cni-version", "2.0.0", "--cni-version"),
    ("--agent-socket", "relative.sock", "--agent-socket"),
    ("--python", "python3", "--python"),
    ("--node-name", "", "--node-name"),
    ("--node-name", "Bad Name", "--node-name 'Bad Name': not a node name"),
    ("--mtu", "70000", "--mtu 70000: must be 0 (percale-node detects it) or 576-65535"),
    ("--mtu", "100", "--mtu 100"),
    ("--shim", "rust", "--shim"),
    ("--assign-ipv6", "yes", "--assign-ipv6 'yes': use true or false"),
    ("--assign-ipv4", "false", "--assign-ipv4 and --assign-ipv6 are both false"),
])
def test_bad_options_install_nothing(percalectl, dirs, option, value, word):
    done = install(percalectl, dirs, option, value)
    assert done.code == 1
    assert word in done.err and "Nothing was installed." in done.err
    assert not dirs[0].exists() and not dirs[1].exists()
