"""Node: percale's record of one host — its BGP addresses and AS, and its tunnel addresses.

The node agent writes it at startup (autodetected addresses, `spec.bgp`) and the tunnel-address
reconciler fills in the IPIP/VXLAN addresses it allocates (calico.md §1.10). The BGP speaker reads
every Node to compute its sessions (mesh peers, route reflectors, peerSelector peerings), and
VXLAN/CrossSubnet routing reads the prefix lengths of `ipv4Address`/`ipv6Address`. Fields and their
spellings follow Calico's internal Node (`libcalico-go/lib/apis/internalapi/node.go`).
"""

from __future__ import annotations

import ipaddress
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, model_validator

from percale.api.fields import (
    ASNumber,
    IPv4Address,
    IPv4Interface,
    IPv6Address,
    IPv6Interface,
    MACAddress,
)
from percale.api.meta import Model, ObjectMeta, Resource, register


class NodeBGPSpec(Model):
    # CIDR form (10.0.0.5/24): the prefix is the subnet CrossSubnet compares against, so a bare
    # address or a /32 silently turns every peer into a "remote" one (calico.md §2.3, §7).
    ipv4_address: IPv4Interface | None = None
    ipv6_address: IPv6Interface | None = None
    # None: the node takes BGPConfiguration's asNumber (64512 unless set there).
    as_number: ASNumber | None = None
    # Its presence makes the node a route reflector for that cluster ID.
    route_reflector_cluster_id: IPv4Address | None = Field(None, alias="routeReflectorClusterID")
    ipv4_ipip_tunnel_addr: IPv4Address | None = Field(None, alias="ipv4IPIPTunnelAddr")

    @model_validator(mode="after")
    def _not_empty(self) -> NodeBGPSpec:
        # Calico's rule: an empty bgp section is a mistake, not "BGP with defaults"; a node that
        # does not speak BGP omits the section.
        if all(getattr(self, name) is None for name in type(self).model_fields):
            raise ValueError("bgp cannot be empty; set ipv4Address or ipv6Address, or omit bgp")
        return self


def _address_or_cidr(value: str) -> str:
    """An address (InternalIP/ExternalIP) or an address with its prefix (CalicoNodeIP)."""
    if not isinstance(value, str):
        raise ValueError("must be an IP address such as 10.0.0.5 or 10.0.0.5/24")
    try:
        return str(ipaddress.ip_interface(value)) if "/" in value else str(ipaddress.ip_address(value))
    except ValueError:
        raise ValueError(f"{value!r} is not an IP address such as 10.0.0.5 or 10.0.0.5/24") from None


class NodeAddress(Model):
    address: Annotated[str, AfterValidator(_address_or_cidr)]
    type: Literal["CalicoNodeIP", "InternalIP", "ExternalIP"]


class OrchRef(Model):
    # The orchestrator's own name for this host, which may differ from the Node's name.
    node_name: str | None = None
    orchestrator: str


class NodeSpec(Model):
    bgp: NodeBGPSpec | None = None
    ipv4_vxlan_tunnel_addr: IPv4Address | None = Field(None, alias="ipv4VXLANTunnelAddr")
    vxlan_tunnel_mac_addr: MACAddress | None = Field(None, alias="vxlanTunnelMACAddr")
    ipv6_vxlan_tunnel_addr: IPv6Address | None = Field(None, alias="ipv6VXLANTunnelAddr")
    vxlan_tunnel_mac_addr_v6: MACAddress | None = Field(None, alias="vxlanTunnelMACAddrV6")
    addresses: list[NodeAddress] = Field(default_factory=list)
    orch_refs: list[OrchRef] = Field(default_factory=list)


class Node(Resource):
    kind: Literal["Node"] = "Node"
    metadata: ObjectMeta
    spec: NodeSpec = Field(default_factory=NodeSpec)


register(Node, plural="nodes", short_names=("no", "nos"))


def _node_name(value: str) -> str:
    if len(value) > 253 or not Node.name_pattern.fullmatch(value):
        raise ValueError(f"{value!r} is not a node name (a lower-case DNS name such as node-1)")
    return value


# A reference to a Node by name (BlockAffinity, BGPPeer, WorkloadEndpoint, NodeStatus): it must be
# a name a Node could have, so a typo fails at apply time instead of matching nothing forever.
NodeName = Annotated[str, AfterValidator(_node_name)]
