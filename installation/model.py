"""The `Installation` resource (`operator.percale.io/v1`, cluster-scoped, named `default`): how a
cluster wants percale installed, in the tigera operator's terms where they apply
(kubernetes.md §B1, calico.md §6.1).

The schema (what the CRD enforces, generated from these classes) holds types and the closed sets
of values; what needs the whole spec -- pools that overlap, a block size outside its family's
range, an encapsulation percale does not have yet, and whatever the apiserver, install-cni or
percale-node would refuse once rendered -- is `problems()`, which the operator turns into a
Degraded condition naming the field, changing nothing that runs.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping, Sequence
from typing import Literal

from pydantic import Field, StrictBool, ValidationError

from percale.api import IPPool, ObjectMeta, autodetection
from percale.api.consistency import overlapping_pools
from percale.api.fields import IPV6_MIN_MTU, POD_MTU_MIN
from percale.api.ippool import BLOCK_SIZE_RANGE, DEFAULT_BLOCK_SIZE, IPPoolSpec
from percale.api.meta import Model, Problem, validation_problems
from percale.api.selector import labels_problem

GROUP, VERSION, KIND, PLURAL = "operator.percale.io", "v1", "Installation", "installations"
API_VERSION = f"{GROUP}/{VERSION}"
NAME = "default"

Encapsulation = Literal["IPIP", "IPIPCrossSubnet", "VXLAN", "VXLANCrossSubnet", "None"]
Switch = Literal["Enabled", "Disabled"]
UNSUPPORTED_ENCAPSULATIONS = {"IPIP", "IPIPCrossSubnet"}


class IPPoolEntry(Model):
    name: str | None = None
    cidr: str
    encapsulation: Encapsulation | None = None
    nat_outgoing: Switch | None = None
    node_selector: str | None = None
    block_size: int | None = None
    disable_bgp_export: StrictBool | None = Field(None, alias="disableBGPExport")
    disable_new_allocations: StrictBool | None = None


class NodeAddressAutodetection(Model):
    """One way to find a node's address (Calico's IP_AUTODETECTION_METHOD). At most one method;
    none at all (`{}`, `firstFound: false`, an empty string or list) is tigera's "detection
    disabled": the address is the one written on the Node resource by hand."""

    first_found: StrictBool | None = None
    kubernetes: Literal["NodeInternalIP"] | None = None
    interface: str | None = None
    skip_interface: str | None = None
    can_reach: str | None = None
    cidrs: list[str] | None = None


class CalicoNetworkSpec(Model):
    bgp: Switch | None = None
    ip_pools: list[IPPoolEntry] | None = Field(None, alias="ipPools", max_length=25)
    mtu: int | None = Field(None, ge=0, le=65535)
    node_address_autodetection_v4: NodeAddressAutodetection | None = Field(
        None, alias="nodeAddressAutodetectionV4")
    node_address_autodetection_v6: NodeAddressAutodetection | None = Field(
        None, alias="nodeAddressAutodetectionV6")
    linux_dataplane: Literal["Iptables", "Nftables", "BPF", "VPP"] | None = None


class LocalObjectReference(Model):
    name: str


class RollingUpdate(Model):
    # apps/v1 holds an int32 here: a larger number passed the CRD and the apiserver then refused
    # the DaemonSet, after the ConfigMap was applied.
    max_unavailable: int | None = Field(None, le=2**31 - 1)


class NodeUpdateStrategy(Model):
    type: Literal["RollingUpdate", "OnDelete"] | None = None
    rolling_update: RollingUpdate | None = None


class InstallationSpec(Model):
    registry: str | None = None
    image_pull_secrets: list[LocalObjectReference] | None = None
    control_plane_node_selector: dict[str, str] | None = None
    node_update_strategy: NodeUpdateStrategy | None = None
    calico_network: CalicoNetworkSpec | None = None


class Condition(Model):
    type: Literal["Ready", "Progressing", "Degraded"]
    status: Literal["True", "False", "Unknown"]
    reason: str
    message: str = ""
    last_transition_time: str
    observed_generation: int | None = None


class InstallationStatus(Model):
    mtu: int | None = None
    computed: InstallationSpec | None = None
    conditions: list[Condition] = Field(default_factory=list)


class Installation(Model):
    api_version: Literal["operator.percale.io/v1"] = API_VERSION
    kind: Literal["Installation"] = KIND
    metadata: ObjectMeta
    spec: InstallationSpec = Field(default_factory=InstallationSpec)
    status: InstallationStatus | None = None


# -- defaults, written back into the spec as tigera does -----------------------------------------

DEFAULT_POOL_CIDR = "192.168.0.0/16"


def _network(cidr: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    try:
        return ipaddress.ip_network(cidr, strict=False)
    except ValueError:
        return None


def _family(cidr: str) -> int | None:
    network = _network(cidr)
    return None if network is None else network.version


def with_defaults(spec: InstallationSpec, stored_pools: Mapping[str, str] | None = None,
                  platform_cidrs: Sequence[str] = ()) -> InstallationSpec:
    """The spec with every default filled in (tigera's fillDefaults, in percale's terms): BGP on;
    no pool list means, in a cluster with no pool yet, a pool for each of `platform_cidrs`
    (kubeadm's podSubnet, `kubeadm_pod_cidrs`) or else one IPv4 pool 192.168.0.0/16, and in a
    cluster that has pools already none at all (they are managed out of band, as tigera reads
    it; an empty list always means none); a pool with no name takes that of the cluster's pool
    of its CIDR (`stored_pools`: name -> CIDR), else
    default-ipv4-ippool or default-ipv6-ippool, else one from its CIDR; IPv4 pools
    VXLANCrossSubnet and NAT on (IPIP, tigera's default, needs a device this kernel may lack),
    IPv6 pools no encapsulation and no NAT -- VXLAN for both when BGP is off; /26 and /122
    blocks; first-found address detection for each family that has a pool; the nftables
    dataplane; rolling updates one node at a time."""
    network = (spec.calico_network or CalicoNetworkSpec()).model_copy(deep=True)
    network.bgp = network.bgp or "Enabled"
    bgp = network.bgp == "Enabled"
    if network.ip_pools is None:
        # Written back as []: the Installation goes on leaving those pools alone, and a pool the
        # administrator deletes later is not replaced by 192.168.0.0/16 on the next resync.
        network.ip_pools = ([] if stored_pools else _platform_pools(platform_cidrs)
                            or [IPPoolEntry(cidr=DEFAULT_POOL_CIDR)])
    named_by_cidr = {parsed: name for name, cidr in (stored_pools or {}).items()
                     if (parsed := _network(cidr)) is not None}
    pools = []
    for pool in network.ip_pools:
        family = _family(pool.cidr)
        v6 = family == 6
        pools.append(pool.model_copy(update={
            "name": pool.name or named_by_cidr.get(_network(pool.cidr)) or (
                f"default-ipv{family or 4}-ippool"
                if sum(_family(p.cidr) == family for p in network.ip_pools) == 1
                else pool_name_from_cidr(pool.cidr)),
            "encapsulation": pool.encapsulation or ("VXLAN" if not bgp else "None" if v6 else "VXLANCrossSubnet"),
            "nat_outgoing": pool.nat_outgoing or ("Disabled" if v6 else "Enabled"),
            "node_selector": pool.node_selector or "all()",
            # An explicit 0 is kept, for problems() to refuse, not taken for "unset".
            "block_size": (DEFAULT_BLOCK_SIZE[family or 4] if pool.block_size is None
                           else pool.block_size),
            "disable_bgp_export": bool(pool.disable_bgp_export),
            "disable_new_allocations": bool(pool.disable_new_allocations),
        }))
    network.ip_pools = pools
    families = {_family(p.cidr) for p in pools}
    if network.node_address_autodetection_v4 is None and 4 in families:
        network.node_address_autodetection_v4 = NodeAddressAutodetection(first_found=True)
    if network.node_address_autodetection_v6 is None and 6 in families:
        network.node_address_autodetection_v6 = NodeAddressAutodetection(first_found=True)
    network.linux_dataplane = network.linux_dataplane or "Nftables"
    strategy = (spec.node_update_strategy or NodeUpdateStrategy()).model_copy(deep=True)
    strategy.type = strategy.type or "RollingUpdate"
    if strategy.type == "RollingUpdate":
        # `rollingUpdate: {}` is an object, so truthy: without this it rendered maxUnavailable: null.
        rolling = strategy.rolling_update or RollingUpdate()
        if rolling.max_unavailable is None:
            rolling.max_unavailable = 1
        strategy.rolling_update = rolling
    return spec.model_copy(update={"calico_network": network, "node_update_strategy": strategy,
                                   "registry": spec.registry or ""})


KUBEADM_CONFIG = ("kube-system", "kubeadm-config")  # the ConfigMap `kubeadm init` writes
_POD_SUBNET = re.compile(r"podSubnet: (.*)")


def kubeadm_pod_cidrs(data: Mapping[str, str]) -> list[str]:
    """The pod CIDRs kubeadm was given (`--pod-network-cidr`), from the data of its ConfigMap:
    ClusterConfiguration's `networking.podSubnet`, "v4,v6" in a dual-stack cluster; as tigera
    reads it, the first `podSubnet:` line of any key. ValueError when there is none or a CIDR
    does not read: the default pool would otherwise sit outside the cluster's pod range."""
    found = next((m for text in data.values() if (m := _POD_SUBNET.search(text))), None)
    if found is None:
        raise ValueError("kubeadm configuration is missing required podSubnet field")
    cidrs = [cidr.strip().strip("\"'") for cidr in found.group(1).split(",")]
    for cidr in cidrs:
        if _network(cidr) is None:
            raise ValueError(f"kubeadm's podSubnet {found.group(1).strip()!r}: "
                             f"{cidr!r} is not a CIDR")
    return cidrs


def _platform_pools(cidrs: Sequence[str]) -> list[IPPoolEntry]:
    """A pool for each platform CIDR: the first of each family takes its default-ipvN-ippool
    name, the others one from their CIDR (tigera's mergePlatformPodCIDRs)."""
    entries, named = [], set()
    for cidr in cidrs:
        family = _family(cidr)
        entries.append(IPPoolEntry(cidr=cidr, name=None if family in named
                                   else f"default-ipv{family}-ippool"))
        named.add(family)
    return entries


def pool_name_from_cidr(cidr: str) -> str:
    """A pool name for a CIDR, from its canonical text: "FD00::/48" and "fd00::/48" are one pool,
    and an upper-case hex digit would make the name invalid."""
    try:
        # ip_interface, not ip_network: host bits are kept, so the name still shows the CIDR
        # the user wrote (problems() refuses host bits on the cidr field).
        cidr = str(ipaddress.ip_interface(cidr))
    except ValueError:
        pass  # problems() reports the CIDR itself
    return "pool-" + cidr.replace(".", "-").replace(":", "-").replace("/", "-").strip("-")


# -- what the operator refuses (Degraded) ------------------------------------------------------------

def ip_pool(entry: IPPoolEntry) -> IPPool:
    """The percale IPPool an effective pool entry stands for (raises ValidationError)."""
    encapsulation = entry.encapsulation or "None"
    vxlan = {"VXLAN": "Always", "VXLANCrossSubnet": "CrossSubnet"}.get(encapsulation, "Never")
    return IPPool.model_validate({
        "metadata": {"name": entry.name},
        "spec": {"cidr": entry.cidr, "blockSize": entry.block_size, "vxlanMode": vxlan,
                 "natOutgoing": entry.nat_outgoing == "Enabled", "nodeSelector": entry.node_selector,
                 "disableBGPExport": bool(entry.disable_bgp_export),
                 "disabled": bool(entry.disable_new_allocations)},
    })


# The IPPool fields whose Installation spelling differs: what problems() names, so the user
# finds the field they wrote (an invalid name is refused on IPPool's whole metadata).
_ENTRY_FIELDS = {"metadata": "name", "metadata.name": "name", "spec.vxlanMode": "encapsulation",
                 "spec.ipipMode": "encapsulation", "spec.disabled": "disableNewAllocations"}


def _entry_field(pool_field: str) -> str:
    return _ENTRY_FIELDS.get(pool_field, pool_field.removeprefix("spec."))


def _encapsulation_problem(entry: IPPoolEntry, bgp: Switch | None) -> str | None:
    if entry.encapsulation in UNSUPPORTED_ENCAPSULATIONS:
        return f"{entry.encapsulation} is not supported by percale yet; use VXLAN, VXLANCrossSubnet or None"
    # Without BGP nothing tells the other nodes where an unencapsulated pool's blocks are
    # (tigera refuses the same).
    if entry.encapsulation == "None" and bgp == "Disabled":
        return ("Unencapsulated IP pools require that BGP is enabled; use VXLAN or VXLANCrossSubnet, "
                "or bgp: Enabled")
    return None


def _pool_problems(network: CalicoNetworkSpec, stored_pools: Mapping[str, str]) -> list[Problem]:
    found: list[Problem] = []
    good: list[IPPool] = []
    where_of: dict[str, str] = {}
    for i, entry in enumerate(network.ip_pools or []):
        where = f"spec.calicoNetwork.ipPools[{i}]"
        if problem := _encapsulation_problem(entry, network.bgp):
            found.append(Problem(f"{where}.encapsulation", problem))
        if problem := _zero_block_size_problem(entry):
            found.append(Problem(f"{where}.blockSize", problem))
            continue
        try:
            pool = ip_pool(entry)
        except ValidationError as err:
            found += [Problem(f"{where}.{_entry_field(p.field)}", p.reason) for p in validation_problems(err)]
            continue
        before = stored_pools.get(pool.metadata.name)
        if before is not None and before != pool.spec.cidr:
            found.append(Problem(f"{where}.cidr", f"pool {pool.metadata.name} was installed with "
                                 f"{before}; a pool's CIDR cannot be changed after install"))
        good.append(pool)
        where_of[pool.metadata.name] = where
    names = [p.metadata.name for p in good]
    for name in {n for n in names if names.count(n) > 1}:
        found.append(Problem(f"{where_of[name]}.name", f"two pools are named {name}"))
    for position, problem in overlapping_pools(good, _stored(stored_pools)).items():
        found.append(Problem(f"{where_of[good[position].metadata.name]}.cidr", problem.reason))
    return found


def _zero_block_size_problem(entry: IPPoolEntry) -> str | None:
    """tigera holds an Installation pool's blockSize, 0 included, to its family's range; an
    IPPool reads 0 as Calico's "not set" (api/ippool.py), so the pool would be made with 26 (122)
    without a word."""
    if entry.block_size != 0:
        return None
    try:
        version = ipaddress.ip_network(entry.cidr, strict=False).version
    except ValueError:
        return None  # the CIDR's own problem is named when the pool is made
    low, high = BLOCK_SIZE_RANGE[version]
    return f"0 is outside {low}-{high} for an IPv{version} pool"


def _detection_methods(method: NodeAddressAutodetection) -> list[str]:
    """The methods a detection setting names, counted as tigera counts them (and as render picks
    one): firstFound only when true, an empty string or list not at all."""
    return [field.alias or name for name, field in NodeAddressAutodetection.model_fields.items()
            if getattr(method, name)]


def _autodetection_problems(network: CalicoNetworkSpec, version: int) -> list[Problem]:
    where = f"spec.calicoNetwork.nodeAddressAutodetectionV{version}"
    method: NodeAddressAutodetection | None = getattr(network, f"node_address_autodetection_v{version}")
    if method is None:
        return []
    found = []
    if len(named := _detection_methods(method)) > 1:
        found.append(Problem(where, f"set no more than one detection method (found {', '.join(named)})"))
    # The rules percale-node applies to the rendered method (api/autodetection.py): what they
    # refuse would stop it at start on every node.
    for i, cidr in enumerate(method.cidrs or []):
        if problem := autodetection.cidr_problem(cidr, version):
            found.append(Problem(f"{where}.cidrs[{i}]", problem))
    for field, regexes in (("interface", method.interface), ("skipInterface", method.skip_interface)):
        if regexes and (problem := autodetection.interfaces_problem(regexes)):
            found.append(Problem(f"{where}.{field}", problem))
    if method.can_reach and (problem := autodetection.can_reach_problem(method.can_reach, version)):
        found.append(Problem(f"{where}.canReach", problem))
    return found


def _node_problems(spec: InstallationSpec) -> list[Problem]:
    """What the apiserver or install-cni would refuse in the DaemonSet and Deployment."""
    found = []
    mtu = (spec.calico_network or CalicoNetworkSpec()).mtu
    # install-cni would refuse a smaller one on every node and crash-loop.
    if mtu and mtu < POD_MTU_MIN:
        found.append(Problem("spec.calicoNetwork.mtu",
                             f"{mtu} is below {POD_MTU_MIN}, the smallest pod MTU install-cni takes; "
                             f"use 0 (detect it) or {POD_MTU_MIN}-65535"))
    elif mtu and mtu < IPV6_MIN_MTU and any(
            _family(pool.cidr) == 6 for pool in (spec.calico_network.ip_pools or [])):
        # Pods get IPv6 from such a pool, and CNI ADD refuses them an MTU IPv6 cannot carry.
        found.append(Problem("spec.calicoNetwork.mtu",
                             f"{mtu} is below {IPV6_MIN_MTU}, the smallest MTU IPv6 carries, and "
                             "an IPv6 pool gives pods IPv6 addresses"))
    rolling = (spec.node_update_strategy or NodeUpdateStrategy()).rolling_update
    if rolling is not None and rolling.max_unavailable is not None and rolling.max_unavailable < 1:
        found.append(Problem("spec.nodeUpdateStrategy.rollingUpdate.maxUnavailable",
                             f"{rolling.max_unavailable} must be at least 1: no rolling update can "
                             "start with no node allowed down, and the apiserver refuses the DaemonSet"))
    if problem := labels_problem(spec.control_plane_node_selector or {}):
        found.append(Problem("spec.controlPlaneNodeSelector", problem))
    return found


def _stored(stored_pools: Mapping[str, str]) -> list[IPPool]:
    """The cluster's pools as models, to compare with the Installation's (one whose CIDR does
    not read is left out: it overlaps nothing the apiserver would take)."""
    pools = []
    for name, cidr in stored_pools.items():
        try:
            pools.append(IPPool(metadata=ObjectMeta(name=name), spec=IPPoolSpec(cidr=cidr)))
        except ValidationError:
            continue
    return pools


def problems(spec: InstallationSpec,
             stored_pools: Mapping[str, str] | None = None) -> list[Problem]:
    """What is wrong with an effective spec, each naming its field. `stored_pools` maps the
    names of the cluster's IP pools to their CIDRs: a pool's CIDR cannot change after install,
    and no pool of the Installation may overlap another pool of the cluster (percalectl refuses
    that too)."""
    network = spec.calico_network or CalicoNetworkSpec()
    found = _pool_problems(network, stored_pools or {})
    if network.linux_dataplane not in (None, "Nftables"):
        found.append(Problem("spec.calicoNetwork.linuxDataplane",
                             f"{network.linux_dataplane} is not supported; percale's dataplane is Nftables"))
    for version in (4, 6):
        found += _autodetection_problems(network, version)
    return found + _node_problems(spec)


def parse_installation(document: dict) -> Installation:
    return Installation.model_validate(document)


__all__ = ["Installation", "InstallationSpec", "IPPoolEntry", "ObjectMeta", "problems",
           "with_defaults", "ip_pool", "kubeadm_pod_cidrs"]
