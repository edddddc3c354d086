"""Where each kind lives in etcd: Calico's key layout, rooted at /percale instead of /calico.

    /percale/ipam/v2/assignment/ipv4/block/10.0.0.0-26        IPAMBlock (v6: .../ipv6/block/fd00::-122)
    /percale/ipam/v2/host/<node>/ipv4/block/10.0.0.0-26       BlockAffinity <node>-10.0.0.0-26
    /percale/ipam/v2/handle/<handleID>                        IPAMHandle
    /percale/ipam/v2/config                                   IPAMConfig "default"
    /percale/resources/v1/percale.io/<plural>/<name>          every other kind
    /percale/resources/v1/percale.io/<plural>/<ns>/<name>     namespaced kinds

IPAM keys keep Calico's shape so that a node's affinities are one prefix scan away.
"""

from __future__ import annotations

from percale.datastore.contract import NODE_SCOPED_KINDS, Key
from percale.api import KINDS

ROOT = "/percale"
_IPAM = f"{ROOT}/ipam/v2"
_RESOURCES = f"{ROOT}/resources/v1/percale.io"


def _family(block_name: str) -> str:
    return "ipv6" if ":" in block_name else "ipv4"


def path(key: Key) -> str:
    if key.kind == "IPAMBlock":
        return f"{_IPAM}/assignment/{_family(key.name)}/block/{key.name}"
    if key.kind == "BlockAffinity":
        # The name is <node>-<block name>; a block name holds exactly one "-" (before the prefix
        # length), so the node is everything before the second "-" from the right.
        node, address, prefix_len = key.name.rsplit("-", 2)
        block = f"{address}-{prefix_len}"
        return f"{_IPAM}/host/{node}/{_family(block)}/block/{block}"
    if key.kind == "IPAMHandle":
        return f"{_IPAM}/handle/{key.name}"
    if key.kind == "IPAMConfig":
        return f"{_IPAM}/config"
    plural = KINDS[key.kind].info.plural
    if key.namespace:
        return f"{_RESOURCES}/{plural}/{key.namespace}/{key.name}"
    return f"{_RESOURCES}/{plural}/{key.name}"


def stored_path(key: Key) -> str | None:
    """Where an object of `key` would be stored, or None when no object of its kind can have
    its name (a BlockAffinity `foo` spells no node and block; an IPAMConfig other than
    `default`, which `path` would send to the one config there is): a read or delete of it
    finds nothing. Other names are looked up as they are: an object stored under a name the
    model now refuses (by hand, by an older version) can still be deleted."""
    if key.kind == "IPAMConfig" and not KINDS[key.kind].is_valid_name(key.name):
        return None  # path() would name the one config there is, whatever the name
    try:
        return path(key)
    except ValueError:
        return None


def prefix(kind: str, namespace: str | None = None, *, node: str | None = None) -> str:
    """The key prefix holding every object of a kind (in one namespace, or of one node)."""
    if node is not None and kind not in NODE_SCOPED_KINDS:
        raise ValueError(f"{kind} is not node-scoped")
    if kind == "IPAMBlock":
        return f"{_IPAM}/assignment/"
    if kind == "BlockAffinity":
        return f"{_IPAM}/host/{node}/" if node else f"{_IPAM}/host/"
    if kind == "IPAMHandle":
        return f"{_IPAM}/handle/"
    if kind == "IPAMConfig":
        return f"{_IPAM}/config"
    plural = KINDS[kind].info.plural
    return f"{_RESOURCES}/{plural}/{namespace}/" if namespace else f"{_RESOURCES}/{plural}/"


def key(kind: str, stored_path: str) -> Key:
    """The Key of an object found at `stored_path` while scanning `prefix(kind)`."""
    parts = stored_path.split("/")
    if kind == "BlockAffinity":
        # .../host/<node>/ipv4/block/<block>
        return Key(kind, f"{parts[-4]}-{parts[-1]}")
    if kind == "IPAMConfig":
        return Key(kind, "default")
    if KINDS[kind].info.namespaced:
        return Key(kind, parts[-1], parts[-2])
    return Key(kind, parts[-1])
