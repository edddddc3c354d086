"""Generated topologies: a node-to-node mesh of any size, in the shape of topologies/mesh3.

`mesh(n)` is pure: it returns the containerlab topology as plain data, which
`percale.lab.topology.parse` reads like any `*.clab.yml`. `write_mesh(n, directory)` writes it
with its cluster resources; `percalectl lab generate-mesh` and bench/lab.py call it.

The shape, as mesh3 has it:

  etcd            a node on the management network, at the subnet's .2, healthy when
                  `etcdctl endpoint health` says so; every percale node waits for that
  node1 … nodeN   image percale/node, cmd percale-node, env IP (its fabric address) and
                  ETCD_ENDPOINTS; each puts its address on eth1; node1 applies cluster.yaml
  sw              a switch (kind bridge) that every node's eth1 joins, as port n<i>

Addresses: node i is 10.0.0.0/16 + 10 + i (node1 10.0.0.11, as in mesh3; node250
10.0.1.4). The management network is a /24 of 172.21.0.0/16 chosen by n, so meshes of different
sizes can run side by side under containerlab, where each is a Docker network and Docker refuses
overlapping subnets (mesh3 has 172.20.30.0/24, containerlab's default is 172.20.20.0/24). A /24
holds the gateway (.1), etcd (.2) and at most MAX_NODES percale nodes. The cluster is one IP pool
and Calico's default BGPConfiguration (node-to-node mesh on): Calico advises route reflectors past
about 100 nodes, which a mesh this size does not have.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

import yaml

MAX_NODES = 252  # a /24 management network: 254 hosts, less the gateway and etcd
FABRIC = ipaddress.IPv4Network("10.0.0.0/16")
FABRIC_OFFSET = 10  # node i is FABRIC's address 10 + i, as in mesh3
MGMT_BASE = ipaddress.IPv4Network("172.21.0.0/16")
POD_POOL, POD_BLOCK_SIZE = "10.244.0.0/16", 26  # 1,024 blocks: a few for each of MAX_NODES nodes
SWITCH = "sw"
ETCD_IMAGE, NODE_IMAGE = "percale/etcd", "percale/node"  # docker/*.Dockerfile
CLUSTER_FILE = "cluster.yaml"  # in the directory named after the topology, beside it


def node_name(i: int) -> str:
    return f"node{i}"


def node_address(i: int) -> ipaddress.IPv4Interface:
    """Node i's fabric address (1-based), with FABRIC's prefix length."""
    return ipaddress.IPv4Interface(f"{FABRIC.network_address + FABRIC_OFFSET + i}/{FABRIC.prefixlen}")


def mgmt_subnet(n: int) -> ipaddress.IPv4Network:
    """The management /24 of an n-node mesh: the n'th /24 of MGMT_BASE."""
    return list(MGMT_BASE.subnets(new_prefix=24))[n]


def _check(n: int) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_NODES:
        raise ValueError(f"a mesh has 1 to {MAX_NODES} nodes (a /24 management network), "
                         f"not {n!r}")


def mesh(n: int, name: str | None = None, *, vxlan: bool = False) -> dict:
    """The containerlab topology of n percale nodes meshed on one switch, with etcd; named
    `mesh<n>` unless `name` says otherwise. With `vxlan` the nodes run no BGP (networking backend
    vxlan) and cluster(vxlan=True) routes every block through VXLAN. Raises ValueError for an n
    out of range."""
    _check(n)
    name = name or f"mesh{n}"
    subnet = mgmt_subnet(n)
    etcd_ip = subnet.network_address + 2
    nodes: dict[str, dict] = {
        "etcd": {
            "kind": "linux",
            "image": ETCD_IMAGE,
            "mgmt-ipv4": str(etcd_ip),
            "cmd": (f"etcd --name etcd --data-dir /var/lib/etcd "
                    f"--listen-client-urls http://0.0.0.0:2379 "
                    f"--advertise-client-urls http://{etcd_ip}:2379 "
                    f"--listen-peer-urls http://127.0.0.1:2380 "
                    f"--initial-advertise-peer-urls http://127.0.0.1:2380 "
                    f"--initial-cluster etcd=http://127.0.0.1:2380"),
            "binds": ["__clabNodeDir__/data:/var/lib/etcd"],
            "stages": {},  # etcd waits for nobody (the kind's default waits for etcd)
            "healthcheck": {
                "test": ["CMD-SHELL", "etcdctl --endpoints http://127.0.0.1:2379 endpoint health"],
                "interval": 0.2,
                "retries": 150,
            },
        },
    }
    links = []
    for i in range(1, n + 1):
        address = node_address(i)
        node: dict = {"kind": "linux", "env": {"IP": str(address)},
                      "exec": [f"ip addr add {address} dev eth1"]}
        if i == 1:
            # The first node to start puts the pool in before any pod asks for an address.
            node["binds"] = [f"{name}/{CLUSTER_FILE}:/etc/percale/{CLUSTER_FILE}:ro"]
            node["exec"].append(f"percalectl apply -f /etc/percale/{CLUSTER_FILE}")
        nodes[node_name(i)] = node
        # The switch's port: "n" and the index, at most 4 characters of the 15 a name may have.
        links.append({"endpoints": [f"{node_name(i)}:eth1", f"{SWITCH}:n{i}"]})
    nodes[SWITCH] = {"kind": "bridge"}
    return {
        "name": name,
        "mgmt": {"network": f"percale-{name}", "ipv4-subnet": str(subnet)},
        "topology": {
            "kinds": {
                "linux": {
                    "image": NODE_IMAGE,
                    "cmd": "percale-node",
                    "env": {"ETCD_ENDPOINTS": f"http://{etcd_ip}:2379",
                            **({"PERCALE_NETWORKING_BACKEND": "vxlan"} if vxlan else {})},
                    "stages": {"create": {"wait-for": [{"node": "etcd", "stage": "healthy"}]}},
                },
            },
            "nodes": nodes,
            "links": links,
        },
    }


def cluster(n: int, *, vxlan: bool = False) -> list[dict]:
    """The cluster's resources: one pod pool (vxlanMode Always with `vxlan`); BGPConfiguration
    left at Calico's defaults."""
    _check(n)
    return [{
        "apiVersion": "percale.io/v1",
        "kind": "IPPool",
        "metadata": {"name": "pods"},
        "spec": {"cidr": POD_POOL, "blockSize": POD_BLOCK_SIZE, "ipipMode": "Never",
                 "vxlanMode": "Always" if vxlan else "Never", "natOutgoing": True},
    }]


def write_mesh(n: int, directory: str | Path, name: str | None = None, *, vxlan: bool = False) -> Path:
    """Write `<name>.clab.yml` and `<name>/cluster.yaml` into `directory` (made if missing);
    return the topology file's path."""
    topology = mesh(n, name, vxlan=vxlan)
    name = topology["name"]
    directory = Path(directory)
    (directory / name).mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.clab.yml"
    header = (f"# {name}: {n} percale nodes on one switch ({FABRIC}), meshed node to node; etcd on\n"
              f"# the management network. Written by `percalectl lab generate-mesh --nodes {n}`.\n"
              f"#\n#   percalectl lab up -t {path.name}\n")
    path.write_text(header + yaml.safe_dump(topology, sort_keys=False, width=100))
    (directory / name / CLUSTER_FILE).write_text(
        f"# The cluster's resources for {name}: one pod pool; BGPConfiguration at Calico's\n"
        f"# defaults (AS 64512, node-to-node mesh on).\n"
        + yaml.safe_dump_all(cluster(n, vxlan=vxlan), sort_keys=False))
    return path
