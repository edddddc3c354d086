"""docker-compose.yml, checked where no Docker engine runs.

Debian's `docker-compose config` (v1) validates and resolves the file without an engine. The rest
checks what compose cannot: that the addresses three files must share agree (each node's `--ip`,
the neighbours of docker/bird-rr.conf, the BGPPeer of docker/cluster.yaml), that BIRD parses its
configuration, that percalectl accepts cluster.yaml, and that the node image is installed by the
README's own steps (scripts/dev.sh).
"""

from __future__ import annotations

import fnmatch
import ipaddress
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from percale.ctl.documents import load
from percale.api import BGPConfiguration, BGPPeer, IPPool, parse

pytestmark = pytest.mark.cli

ROOT = Path(__file__).resolve().parents[2]
NODES = ("node1", "node2", "node3")
NODE_DOCKERFILE = "docker/node.Dockerfile"
BIRD_CONF = ROOT / "docker" / "bird-rr.conf"
CLUSTER = ROOT / "docker" / "cluster.yaml"
# Where node.Dockerfile copies the repository, so where `setup` finds cluster.yaml.
IMAGE_ROOT = "/percale"
ETCD = "http://etcd:2379"
AS_NUMBER = 64512


@pytest.fixture(scope="module")
def compose() -> dict:
    """The file as `docker-compose config` resolves it (anchors merged, paths absolute)."""
    binary = shutil.which("docker-compose")
    assert binary, "docker-compose (Debian's v1 package) is not installed: run bash scripts/dev.sh setup"
    done = subprocess.run([binary, "-f", str(ROOT / "docker-compose.yml"), "config"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    return yaml.safe_load(done.stdout)


def _network(compose: dict) -> tuple[str, ipaddress.IPv4Network]:
    """The one user-defined network and its fixed subnet."""
    (name, network), = compose["networks"].items()
    (config,) = network["ipam"]["config"]
    return name, ipaddress.IPv4Network(config["subnet"])


def _address(compose: dict, service: str) -> ipaddress.IPv4Address:
    name, _ = _network(compose)
    return ipaddress.IPv4Address(compose["services"][service]["networks"][name]["ipv4_address"])


def _command(service: dict) -> list[str]:
    command = service.get("command", [])
    return shlex.split(command) if isinstance(command, str) else list(command)


def _option(command: list[str], flag: str) -> str | None:
    for i, arg in enumerate(command):
        if arg == flag and i + 1 < len(command):
            return command[i + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    return None


def _node_ip(service: dict) -> ipaddress.IPv4Interface:
    """What percale-node registers as its BGP address: `--ip`, or the IP environment variable."""
    value = _option(_command(service), "--ip")
    if value is None:
        environment = service.get("environment") or {}
        value = environment.get("IP")
    assert value, "the node is given no --ip (or IP) address"
    return ipaddress.IPv4Interface(value)


def _bird_neighbours() -> dict[str, tuple[ipaddress.IPv4Address, int]]:
    """protocol name -> (neighbour address, AS) for each `protocol bgp` in bird-rr.conf."""
    text = re.sub(r"#.*", "", BIRD_CONF.read_text())
    found = {}
    for name, body in re.findall(r"protocol\s+bgp\s+(\w+)[^{]*\{(.*?)\}", text, re.DOTALL):
        match = re.search(r"neighbor\s+([0-9.]+)\s+as\s+(\d+)\s*;", body)
        assert match, f"protocol bgp {name} in {BIRD_CONF.name} names no neighbour"
        found[name] = (ipaddress.IPv4Address(match[1]), int(match[2]))
    return found


def test_config_is_valid_and_has_every_service(compose):
    assert {"etcd", "setup", "controllers", "bird-rr", *NODES} <= set(compose["services"])
    assert compose["services"]["controllers"]["command"][0] == "percale-controllers"


def test_nodes_are_privileged_node_images_running_the_agent(compose):
    for node in NODES:
        service = compose["services"][node]
        assert service.get("privileged") is True, node
        assert service["build"]["dockerfile"] == NODE_DOCKERFILE, node
        assert Path(service["build"]["context"]).resolve() == ROOT, node
        command = _command(service)
        assert command[0] == "percale-node", node
        assert _option(command, "--node-name") == node
        assert _option(command, "--etcd-endpoints") == ETCD, node
        # `docker compose exec nodeN percalectl ...` reads the same datastore as the agent.
        assert service["environment"]["ETCD_ENDPOINTS"] == ETCD, node
        # Nodes start once etcd answers and `setup` has turned the mesh off.
        assert service["depends_on"]["etcd"]["condition"] == "service_healthy", node
        assert service["depends_on"]["setup"]["condition"] == "service_completed_successfully", node


def test_addresses_are_fixed_inside_the_subnet_and_distinct(compose):
    name, subnet = _network(compose)
    addresses = {}
    for service_name, service in compose["services"].items():
        assert name in service.get("networks", {}), f"{service_name} is not on the {name} network"
        address = _address(compose, service_name)
        assert address in subnet, service_name
        addresses[service_name] = address
    assert len(set(addresses.values())) == len(addresses), addresses


def test_each_node_registers_its_compose_address(compose):
    _, subnet = _network(compose)
    for node in NODES:
        ip = _node_ip(compose["services"][node])
        assert ip.ip == _address(compose, node), node
        assert ip.network == subnet, node
        # It is what percale-node writes into the Node: the resource must accept it.
        parse({"apiVersion": "percale.io/v1", "kind": "Node", "metadata": {"name": node},
               "spec": {"bgp": {"ipv4Address": str(ip)}}})


def test_bird_config_parses():
    done = subprocess.run(["bird", "-p", "-c", str(BIRD_CONF)], capture_output=True, text=True,
                          timeout=30, check=False)
    assert done.returncode == 0, done.stderr


def test_bird_reflects_for_every_node_and_only_them(compose):
    text = re.sub(r"#.*", "", BIRD_CONF.read_text())
    rr = _address(compose, "bird-rr")
    assert re.search(rf"router id {re.escape(str(rr))}\s*;", text)
    assert re.search(rf"local {re.escape(str(rr))} as {AS_NUMBER}\s*;", text)
    assert "rr client;" in text
    assert "graceful restart on;" in text
    neighbours = _bird_neighbours()
    expected = {_node_ip(compose["services"][node]).ip for node in NODES}
    assert {address for address, _ in neighbours.values()} == expected
    assert {asn for _, asn in neighbours.values()} == {AS_NUMBER}


def test_cluster_yaml_points_the_nodes_at_the_reflector(compose):
    resources = [document.resource for document in load([str(CLUSTER)])]
    pools = [r for r in resources if isinstance(r, IPPool)]
    configs = [r for r in resources if isinstance(r, BGPConfiguration)]
    peers = [r for r in resources if isinstance(r, BGPPeer)]
    assert len(pools) == len(configs) == len(peers) == 1, resources

    (pool,), (config,), (peer,) = pools, configs, peers
    assert pool.spec.cidr == "10.244.0.0/16"
    assert pool.spec.block_size == 26
    assert (pool.spec.ipip_mode, pool.spec.vxlan_mode) == ("Never", "Never")
    assert pool.spec.nat_outgoing is True

    assert config.metadata.name == "default"
    # Set, not left to the defaults (the mesh's default is on; the AS's happens to be 64512).
    assert config.spec.node_to_node_mesh_enabled is False
    assert config.spec.as_number == AS_NUMBER

    assert peer.spec.scope == "global"
    assert ipaddress.ip_address(peer.spec.peer_ip) == _address(compose, "bird-rr")
    assert peer.spec.as_number == AS_NUMBER


def test_setup_applies_cluster_yaml_from_the_node_image(compose):
    setup = compose["services"]["setup"]
    assert setup["build"]["dockerfile"] == NODE_DOCKERFILE
    assert setup["depends_on"]["etcd"]["condition"] == "service_healthy"
    command = _command(setup)
    assert command[0] == "percalectl"
    assert _option(command, "--etcd-endpoints") == ETCD
    assert "apply" in command
    target = _option(command, "-f")
    assert target == f"{IMAGE_ROOT}/{CLUSTER.relative_to(ROOT)}"
    ignored = _dockerignore()
    assert not any(fnmatch.fnmatch(part, pattern)
                   for pattern in ignored for part in ("docker", "docker/cluster.yaml")), ignored


def test_percalectl_applies_cluster_yaml(cli):
    done = cli("apply", "-f", str(CLUSTER))
    assert done.code == 0, done.err
    peers = cli("get", "bgppeers", "-o", "yaml")
    assert peers.code == 0, peers.err
    assert "172.30.0.3" in peers.out


def _dockerignore() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def _case(script: str, name: str) -> str:
    match = re.search(rf"^\s*{name}\)\n(.*?)^\s*;;", script, re.DOTALL | re.MULTILINE)
    assert match, f"scripts/dev.sh has no `{name}` command"
    return match[1]


def test_node_image_is_installed_by_the_readme_steps():
    dockerfile = (ROOT / NODE_DOCKERFILE).read_text()
    instructions = [line.strip() for line in dockerfile.splitlines()
                    if line.strip() and not line.lstrip().startswith("#")]
    assert instructions[0] == "FROM debian:bookworm"
    assert f"COPY . {IMAGE_ROOT}" in instructions
    assert f"WORKDIR {IMAGE_ROOT}" in instructions
    assert any(line.startswith("RUN bash scripts/dev.sh setup") for line in instructions)
    assert any(line.startswith("ENV PATH=") and f"{IMAGE_ROOT}/.venv/bin" in line
               for line in instructions)

    # `setup` installs exactly what the README's `demo` and `test` install before they run.
    script = (ROOT / "scripts" / "dev.sh").read_text()
    steps = {name: re.findall(r"\binstall_\w+", _case(script, name)) for name in ("setup", "test", "demo")}
    assert steps["setup"] == steps["test"] == steps["demo"], steps
    assert steps["setup"], steps

    # The host's venv would carry its stamp into the image, and dev.sh would then skip the install.
    ignored = _dockerignore()
    assert ".venv" in ignored and ".git" in ignored
