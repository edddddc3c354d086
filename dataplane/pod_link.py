"""What the agent's own process knows of a pod's kernel side: names, results and errors.

The netlink work itself (pod_network, which imports pyroute2) runs only in the dataplane worker
processes; the agent names the function to run (`in_worker`) instead of importing it, which
keeps pyroute2 (~20 MB resident) out of the agent.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

HOST_VETH_PREFIX = "pcl"
HOST_VETH_MAC = "ee:ee:ee:ee:ee:ee"
GATEWAY_V4 = "169.254.1.1"
# The link-local address the kernel gives a host veth with HOST_VETH_MAC (EUI-64).
GATEWAY_V6 = "fe80::ecee:eeff:feee:eeee"


class DataplaneError(Exception):
    """The kernel refused a step; whatever pod_network had set up is gone again."""


class InterfaceExists(DataplaneError):
    pass


def host_veth_name(namespace: str, pod: str) -> str:
    """pcl + 12 hex digits of SHA-1("<namespace>.<pod>"): stable for a pod across restarts and
    container IDs, so DEL finds it from the pod's name alone; 15 characters, the kernel's limit."""
    return HOST_VETH_PREFIX + hashlib.sha1(f"{namespace}.{pod}".encode()).hexdigest()[:12]


@dataclass(frozen=True)
class PodLink:
    host_name: str
    host_mac: str
    container_name: str
    container_mac: str
    mtu: int


def in_worker(name: str, *args: Any) -> Any:
    """Run pod_network.<name>(*args); called in a dataplane worker process."""
    from percale.dataplane import pod_network

    return getattr(pod_network, name)(*args)
