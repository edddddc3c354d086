"""What percale's objects are called in the Kubernetes API, as Calico's KDD calls them.

Kubernetes names are DNS subdomains: no ":" or "/", lower case. percale's own names keep Calico's
etcd form (`10.244.0.0-26`, `fd00::-122`, handle IDs with their case), so the Kubernetes backend
translates on the way in and reads the percale name back from the spec on the way out:

    IPAMBlock      10.244.0.0-26             ->  10-244-0-0-26        (".", ":", "/" become "-")
    BlockAffinity  node1-10.244.0.0-26       ->  node1-10-244-0-0-26  (hashed when over 253)
    IPAMHandle     k8s-pod-network.ABC       ->  k8s-pod-network.abc  (lower-cased)

A BlockAffinity also carries labels so one node's claims are one label-selected list, whatever
the length of its name (a label value holds at most 63 characters, a node name 253).
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress

from percale.datastore.contract import Key

MAX_NAME = 253
HOSTNAME_HASH_LABEL = "percale.io/hostname-hash"
AFFINITY_TYPE_LABEL = "percale.io/affinity-type"
IP_VERSION_LABEL = "percale.io/ip-version"


def cidr_name(cidr: str) -> str:
    """`10.244.0.0/26` -> `10-244-0-0-26`, `fd00:10::/122` -> `fd00-10---122`."""
    return str(ipaddress.ip_network(cidr)).replace(".", "-").replace(":", "-").replace("/", "-")


def affinity_object_name(node: str, cidr: str) -> str:
    """`<node>-<cidr name>`; when that is too long, the node part is cut and a hash of the whole
    keeps names of different nodes apart."""
    block = cidr_name(cidr)
    name = f"{node}-{block}"
    if len(name) <= MAX_NAME:
        return name
    digest = hashlib.sha256(f"{node}+{block}".encode()).hexdigest()[:11]
    keep = MAX_NAME - len(block) - len(digest) - 2
    return f"{node[:keep].rstrip('-.')}-{digest}-{block}"


def hostname_hash(node: str) -> str:
    """A label value standing for a node name of any length (unpadded base32 of SHA3-256)."""
    return base64.b32encode(hashlib.sha3_256(node.encode()).digest()).decode().rstrip("=").lower()


def node_selector(node: str) -> str:
    """The label selector of one node's BlockAffinities."""
    return f"{HOSTNAME_HASH_LABEL}={hostname_hash(node)}"


def affinity_labels(node: str, cidr: str) -> dict[str, str]:
    return {
        HOSTNAME_HASH_LABEL: hostname_hash(node),
        AFFINITY_TYPE_LABEL: "host",
        IP_VERSION_LABEL: str(ipaddress.ip_network(cidr).version),
    }


def object_name(key: Key, spec: dict | None = None) -> str:
    """The Kubernetes name of a percale object. A BlockAffinity's name is made from its node and
    CIDR; a key alone holds them too (`<node>-<block name>`), so `spec` is optional."""
    if key.kind == "IPAMBlock":
        return cidr_name(_block_cidr(key.name))
    if key.kind == "BlockAffinity":
        if spec is not None:
            return affinity_object_name(spec["node"], spec["cidr"])
        node, address, prefix = key.name.rsplit("-", 2)
        return affinity_object_name(node, f"{address}/{prefix}")
    if key.kind == "IPAMHandle":
        return key.name.lower()
    return key.name


def percale_name(kind: str, name: str, spec: dict) -> str:
    """The percale name of a Kubernetes object, read back from its spec where it was changed."""
    if kind == "IPAMBlock":
        return str(ipaddress.ip_network(spec["cidr"])).replace("/", "-")
    if kind == "BlockAffinity":
        block = str(ipaddress.ip_network(spec["cidr"])).replace("/", "-")
        return f"{spec['node']}-{block}"
    if kind == "IPAMHandle":
        return spec["handleID"]
    return name


def _block_cidr(block_name: str) -> str:
    address, _, prefix = block_name.rpartition("-")
    return f"{address}/{prefix}"
