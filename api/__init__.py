"""percale's resource model: one pydantic class per kind, all under apiVersion percale.io/v1.

Importing this package registers every kind, so `parse(document)` and `kind_named("ipp")` know
them all. Kinds and fields follow Calico's (IPPool, BGPPeer, ...), with CalicoNodeStatus called
NodeStatus.
"""

from percale.api.meta import (
    API_VERSION,
    KINDS,
    InvalidResource,
    KindInfo,
    ObjectMeta,
    Problem,
    Resource,
    kind_named,
    parse,
)
from percale.api.ippool import IPPool, IPPoolSpec
from percale.api.ipam import (
    BlockAffinity,
    BlockAffinitySpec,
    IPAMBlock,
    IPAMBlockSpec,
    IPAMConfig,
    IPAMConfigSpec,
    IPAMHandle,
    IPAMHandleSpec,
    IPReservation,
    IPReservationSpec,
)
from percale.api.bgp import (
    BGPConfiguration,
    BGPConfigurationSpec,
    BGPFilter,
    BGPFilterCommunityMatch,
    BGPFilterPrefixLength,
    BGPFilterRule,
    BGPFilterSpec,
    BGPPeer,
    BGPPeerSpec,
)
from percale.api.node import Node, NodeSpec
from percale.api.workloadendpoint import WorkloadEndpoint, WorkloadEndpointSpec
from percale.api.nodestatus import NodeStatus, NodeStatusSpec
from percale.api.policy import GlobalNetworkPolicy, NetworkPolicy, Profile

__all__ = [
    "API_VERSION", "KINDS", "InvalidResource", "KindInfo", "ObjectMeta", "Problem", "Resource",
    "kind_named", "parse",
    "IPPool", "IPPoolSpec",
    "IPAMConfig", "IPAMConfigSpec", "IPAMBlock", "IPAMBlockSpec", "BlockAffinity",
    "BlockAffinitySpec", "IPAMHandle", "IPAMHandleSpec", "IPReservation", "IPReservationSpec",
    "BGPConfiguration", "BGPConfigurationSpec", "BGPPeer", "BGPPeerSpec",
    "BGPFilter", "BGPFilterSpec", "BGPFilterRule", "BGPFilterPrefixLength", "BGPFilterCommunityMatch",
    "Node", "NodeSpec", "WorkloadEndpoint", "WorkloadEndpointSpec", "NodeStatus", "NodeStatusSpec",
    "NetworkPolicy", "GlobalNetworkPolicy", "Profile",
]
