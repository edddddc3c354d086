"""NodeStatus (Calico's CalicoNodeStatus): ask one node to publish its BGP state cluster-wide.

A user creates it (spec: which node, which classes of information, how often); that node's agent
fills `status` every `updatePeriodSeconds` from its BGP speaker, so `percalectl` and operators can
see sessions and routes without a shell on the node (the cluster-wide counterpart of
`percalectl node status`, calico.md §5.2).

Deviation from Calico: Calico's `status.agent.birdV4`/`birdV6` describe the BIRD daemons; percale's
speaker is not BIRD, so the same objects are called `status.agent.bgpV4`/`bgpV6`. Every other
field keeps Calico's name and meaning.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, NonNegativeInt, field_validator

from percale.api.fields import CIDR, IPAddress, Timestamp
from percale.api.meta import Model, ObjectMeta, Resource, register
from percale.api.node import NodeName

NodeStatusClass = Literal["Agent", "BGP", "Routes"]
# Calico caps the refresh period at one day; 0 means "do not refresh".
MAX_UPDATE_PERIOD_SECONDS = 86400


class NodeStatusSpec(Model):
    node: NodeName
    classes: list[NodeStatusClass]
    update_period_seconds: int = Field(ge=0, le=MAX_UPDATE_PERIOD_SECONDS)

    @field_validator("classes")
    @classmethod
    def _unique(cls, classes: list[str]) -> list[str]:
        if len(set(classes)) != len(classes):
            raise ValueError("each class may be listed only once")
        return classes


class BGPDaemonStatus(Model):
    state: Literal["Ready", "NotReady"] | None = None
    version: str | None = None
    router_id: str | None = Field(None, alias="routerID")
    # As the speaker reports them; Calico copies BIRD's own text here, not RFC 3339.
    last_boot_time: str | None = None
    last_reconfiguration_time: str | None = None


class NodeAgentStatus(Model):
    bgp_v4: BGPDaemonStatus | None = None
    bgp_v6: BGPDaemonStatus | None = None


BGPSessionState = Literal["Idle", "Connect", "Active", "OpenSent", "OpenConfirm", "Established", "Close"]


class NodePeerStatus(Model):
    peer_ip: IPAddress = Field(alias="peerIP")
    # NodeMesh: a mesh session; NodePeer / GlobalPeer: from a node-scoped or global BGPPeer.
    type: Literal["NodeMesh", "NodePeer", "GlobalPeer"]
    state: BGPSessionState
    since: str | None = None


class NodeBGPStatus(Model):
    number_established_v4: NonNegativeInt = 0
    number_not_established_v4: NonNegativeInt = 0
    number_established_v6: NonNegativeInt = 0
    number_not_established_v6: NonNegativeInt = 0
    peers_v4: list[NodePeerStatus] = Field(default_factory=list)
    peers_v6: list[NodePeerStatus] = Field(default_factory=list)


class RouteLearnedFrom(Model):
    source_type: Literal["Kernel", "Static", "Direct", "NodeMesh", "BGPPeer"]
    # The router that sent the route, for NodeMesh and BGPPeer sources.
    peer_ip: IPAddress | None = Field(None, alias="peerIP")


class NodeRouteStatus(Model):
    # FIB: installed in the kernel; RIB: known to the speaker but not the chosen path.
    type: Literal["FIB", "RIB"]
    destination: CIDR
    gateway: IPAddress | None = None
    interface: str | None = None
    learned_from: RouteLearnedFrom | None = None


class NodeRoutesStatus(Model):
    routes_v4: list[NodeRouteStatus] = Field(default_factory=list)
    routes_v6: list[NodeRouteStatus] = Field(default_factory=list)


class NodeStatusStatus(Model):
    last_updated: Timestamp | None = None
    agent: NodeAgentStatus | None = None
    bgp: NodeBGPStatus | None = None
    routes: NodeRoutesStatus | None = None


class NodeStatus(Resource):
    kind: Literal["NodeStatus"] = "NodeStatus"
    metadata: ObjectMeta
    spec: NodeStatusSpec
    status: NodeStatusStatus | None = None


register(NodeStatus, plural="nodestatuses", short_names=("caliconodestatus", "caliconodestatuses"))
