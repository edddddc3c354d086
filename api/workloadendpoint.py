"""WorkloadEndpoint: one pod interface percale wired up — its addresses, host veth and MAC.

The CNI plugin writes it on ADD (after IPAM and the dataplane succeed) and deletes it on DEL when
the containerID still matches (calico.md §4.2, §4.3). The node agent reads it for the pod routes
it owns, and `percalectl get workloadendpoints` lists it. It is namespaced like the pod, and its
name is derived from node, orchestrator, pod and endpoint exactly as Calico derives it.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, model_validator

from percale.api.fields import CIDR, IPAddress, IPv4Address, IPv6Address, MACAddress, Port
from percale.api.meta import FieldError, Model, ObjectMeta, Resource, register
from percale.api.node import NodeName


def workload_endpoint_name(node: str, orchestrator: str, pod: str, endpoint: str) -> str:
    """Calico's WEP name `<node>-<orchestrator>-<pod>-<endpoint>`, e.g. `node1-k8s-nginx--5d4f-eth0`.

    Every `-` inside a segment is doubled so the single `-` between segments stays unambiguous,
    which is what lets the CNI find a pod's endpoints by the prefix `<node>-k8s-<pod>-`.
    """
    return "-".join(part.replace("-", "--") for part in (node, orchestrator, pod, endpoint))


def _host_network(value: str) -> str:
    # The dataplane routes exactly these addresses to the pod's veth, one host route each.
    if ipaddress.ip_network(value).prefixlen not in (32, 128):
        raise ValueError(f"{value} is not a single address; use a /32 (IPv4) or /128 (IPv6)")
    return value


HostNetwork = Annotated[CIDR, AfterValidator(_host_network)]


class IPNAT(Model):
    """A floating IP: traffic to externalIP is DNATed to the pod's internalIP."""

    internal_ip: IPAddress = Field(alias="internalIP")
    external_ip: IPAddress = Field(alias="externalIP")

    @model_validator(mode="after")
    def _same_family(self) -> IPNAT:
        if ipaddress.ip_address(self.internal_ip).version != ipaddress.ip_address(self.external_ip).version:
            raise FieldError(
                "externalIP",
                f"internalIP {self.internal_ip} and externalIP {self.external_ip} are different IP versions"
            )
        return self


# Kubernetes port names (IANA service names): at most 15 lower-case letters, digits and single
# dashes, with at least one letter.
_PORT_NAME = re.compile(r"(?=.*[a-z])(?!.*--)[a-z0-9]([a-z0-9-]{0,13}[a-z0-9])?")


def _port_name(value: str) -> str:
    if not _PORT_NAME.fullmatch(value):
        raise ValueError(f"{value!r} is not a port name (up to 15 of a-z 0-9 -, with a letter)")
    return value


class WorkloadEndpointPort(Model):
    name: Annotated[str, AfterValidator(_port_name)] | None = None
    protocol: Literal["TCP", "UDP", "SCTP"]
    port: Port
    host_port: Port | None = None
    host_ip: IPAddress | None = Field(None, alias="hostIP")

    @model_validator(mode="after")
    def _named_or_host_port(self) -> WorkloadEndpointPort:
        # A port is recorded either so policy can refer to it by name or to map a host port.
        if self.name is None and self.host_port is None:
            raise FieldError("name", "a port needs a name unless it sets hostPort")
        return self


_INTERFACE_NAME = re.compile(r"[A-Za-z0-9_.-]{1,15}")  # Linux IFNAMSIZ - 1
_CONTAINER_ID = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9]*[A-Za-z0-9])?")


def _interface_name(value: str) -> str:
    if not _INTERFACE_NAME.fullmatch(value):
        raise ValueError(f"{value!r} is not an interface name (up to 15 of A-Z a-z 0-9 _ . -)")
    return value


def _container_id(value: str) -> str:
    if not _CONTAINER_ID.fullmatch(value):
        raise ValueError(f"{value!r} is not a container ID (letters, digits and inner dashes)")
    return value


class WorkloadEndpointSpec(Model):
    orchestrator: str
    # The workload's name for orchestrators other than Kubernetes; Kubernetes uses pod.
    workload: str | None = None
    node: NodeName
    container_id: Annotated[str, AfterValidator(_container_id)] | None = Field(None, alias="containerID")
    pod: str | None = None
    endpoint: str
    service_account_name: str | None = None
    ip_networks: list[HostNetwork] = Field(default_factory=list)
    ip_nats: list[IPNAT] = Field(default_factory=list, alias="ipNATs")
    ipv4_gateway: IPv4Address | None = None
    ipv6_gateway: IPv6Address | None = None
    # kns.<namespace>, ksa.<namespace>.<serviceaccount>
    profiles: list[str] = Field(default_factory=list)
    # The host side of the veth: cali + 11 hex characters of sha1(<namespace>.<pod>).
    interface_name: Annotated[str, AfterValidator(_interface_name)] | None = None
    mac: MACAddress | None = None
    ports: list[WorkloadEndpointPort] = Field(default_factory=list)

    @property
    def workload_name(self) -> str | None:
        """The name segment of the endpoint's name: pod for Kubernetes, else workload."""
        return self.pod or self.workload

    @model_validator(mode="after")
    def _consistent(self) -> WorkloadEndpointSpec:
        if not self.workload_name:
            raise FieldError(
                "pod", "pod is required (or workload, for an orchestrator other than Kubernetes)"
            )
        for i, nat in enumerate(self.ip_nats):
            # A floating IP must land on an address this endpoint actually has.
            internal = ipaddress.ip_address(nat.internal_ip)
            if not any(internal in ipaddress.ip_network(n) for n in self.ip_networks):
                raise FieldError(
                    f"ipNATs.{i}.internalIP",
                    f"ipNATs internalIP {nat.internal_ip} is not one of the endpoint's ipNetworks"
                )
        return self


class WorkloadEndpoint(Resource):
    kind: Literal["WorkloadEndpoint"] = "WorkloadEndpoint"
    metadata: ObjectMeta
    spec: WorkloadEndpointSpec

    @model_validator(mode="after")
    def _named_from_spec(self) -> WorkloadEndpoint:
        spec = self.spec
        expected = workload_endpoint_name(
            spec.node, spec.orchestrator, spec.workload_name or "", spec.endpoint
        )
        if self.metadata.name != expected:
            raise FieldError(
                "metadata.name",
                f"{self.metadata.name!r} does not match spec.node, orchestrator, pod "
                f"and endpoint; this endpoint must be named {expected!r}"
            )
        return self


register(WorkloadEndpoint, plural="workloadendpoints", short_names=("wep", "weps"), namespaced=True)
