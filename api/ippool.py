"""IPPool: a range pods (and tunnel devices) take addresses from, cut into blocks for nodes.

Fields, defaults and rules follow Calico's IPPool. Rules that need other pools (no overlap) live in
`percale.api.consistency`, because one pool alone cannot know them.

`ipipMode` is read as Calico stores it, but percale has no IPIP dataplane: a new pool asking for
IPIP is refused where it is written (`percale.api.consistency`), and a stored one stays readable
(its addresses still route, unencapsulated; percale-node says so in its log).
"""

from __future__ import annotations

import ipaddress
from typing import Annotated, Literal

from pydantic import BeforeValidator, Field, StrictBool, ValidationInfo, field_validator, model_validator

from percale.api.fields import CIDR, LINK_LOCAL, Selector, network_of, whole_number
from percale.api.meta import FieldError, Model, ObjectMeta, Resource, register

EncapMode = Literal["Never", "Always", "CrossSubnet"]
AllowedUse = Literal["Workload", "Tunnel", "LoadBalancer"]

DEFAULT_BLOCK_SIZE = {4: 26, 6: 122}
BLOCK_SIZE_RANGE = {4: (20, 32), 6: (116, 128)}

_IPV4_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")


def _zero_is_unset(zero: object, default: object) -> BeforeValidator:
    """A before-validator giving `default` for Go's zero value of the field (and null, which Go
    decodes to it): Calico's validateAndSetDefaults reads a zero value as "not set" and fills
    the default in, so `blockSize: 0` or `nodeSelector: ""` from a Calico manifest means it."""

    def filled(value: object) -> object:
        # `type(...) is`: false is not 0 here (whole_number refuses it), nor is 0.0.
        if value is None or (type(value) is type(zero) and value == zero):
            return default
        return value

    return BeforeValidator(filled)


class IPPoolSpec(Model):
    cidr: CIDR
    # Left out (or 0), it becomes the family's default: 26 for IPv4, 122 for IPv6. The
    # before-validators of an Annotated run last first: 0 is made None before whole_number.
    block_size: Annotated[int | None, BeforeValidator(whole_number), _zero_is_unset(0, None)] \
        = Field(None, validate_default=True)
    ipip_mode: Annotated[EncapMode, _zero_is_unset("", "Never")] = "Never"
    vxlan_mode: Annotated[EncapMode, _zero_is_unset("", "Never")] = "Never"
    nat_outgoing: StrictBool = False
    disabled: StrictBool = False
    disable_bgp_export: StrictBool = Field(False, alias="disableBGPExport")
    node_selector: Annotated[Selector, _zero_is_unset("", "all()")] = "all()"
    namespace_selector: Selector | None = None
    allowed_uses: Annotated[list[AllowedUse], _zero_is_unset([], ["Workload", "Tunnel"])] \
        = Field(default_factory=lambda: ["Workload", "Tunnel"])
    assignment_mode: Literal["Automatic", "Manual"] = "Automatic"

    @property
    def network(self) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
        return network_of(self.cidr)

    # Checks that involve one field and the CIDR are field validators, so the error points at
    # that field (spec.blockSize) rather than at the whole spec. They run in declaration order,
    # after cidr; if cidr itself was invalid they have nothing to check against.

    @field_validator("cidr")
    @classmethod
    def _not_link_local(cls, cidr: str) -> str:
        net = ipaddress.ip_network(cidr)
        for reserved in LINK_LOCAL:
            if net.version == reserved.version and net.overlaps(reserved):
                raise ValueError(f"{cidr} overlaps the link-local range {reserved}")
        return cidr

    @field_validator("cidr")
    @classmethod
    def _not_ipv4_mapped(cls, cidr: str) -> str:
        # ::ffff:0:0/96 names IPv4 addresses as a socket sees them; no packet carries one, so
        # a pool there would hand pods addresses nothing can reach.
        net = ipaddress.ip_network(cidr)
        if net.version == 6 and net.subnet_of(_IPV4_MAPPED):  # type: ignore[arg-type]
            mapped = ipaddress.ip_network(
                (int(net.network_address) & 0xFFFFFFFF, max(net.prefixlen - 96, 0)), strict=False)
            raise ValueError(f"{cidr} is an IPv4-mapped IPv6 range; give the IPv4 pool {mapped}")
        return cidr

    @field_validator("block_size")
    @classmethod
    def _block_fits_pool(cls, size: int | None, info: ValidationInfo) -> int | None:
        if "cidr" not in info.data:
            return size
        net = ipaddress.ip_network(info.data["cidr"])
        if size is None:
            return DEFAULT_BLOCK_SIZE[net.version]  # held to the pool by _default_block_fits_pool
        low, high = BLOCK_SIZE_RANGE[net.version]
        if not low <= size <= high:
            raise ValueError(f"{size} is outside {low}-{high} for an IPv{net.version} pool")
        if size < net.prefixlen:
            raise ValueError(
                f"blockSize /{size} is larger than the pool {net}; "
                f"use a block size of at least {net.prefixlen}"
            )
        return size

    @model_validator(mode="after")
    def _default_block_fits_pool(self) -> IPPoolSpec:
        # As Calico fills the default in before checking: a /28 pool stored with /26 blocks
        # could never be read back, and with it no pool at all. A model check, so the error
        # names spec.blockSize (pydantic names a default's errors by the Python name).
        net = self.network
        # Whether left out or given as 0: a blockSize given otherwise was held to the pool
        # by _block_fits_pool, and this does not run when that refused it.
        if self.block_size is not None and self.block_size < net.prefixlen:
            raise FieldError("blockSize", f"blockSize /{self.block_size} (the default) is larger "
                             f"than the pool {net}; give a blockSize of at least {net.prefixlen}")
        return self

    @field_validator("ipip_mode")
    @classmethod
    def _ipip_is_ipv4_only(cls, mode: str, info: ValidationInfo) -> str:
        cidr = info.data.get("cidr")
        if mode != "Never" and cidr and ipaddress.ip_network(cidr).version == 6:
            raise ValueError("must be Never for an IPv6 pool (IPIP carries IPv4 only)")
        return mode

    @field_validator("vxlan_mode")
    @classmethod
    def _one_encapsulation(cls, mode: str, info: ValidationInfo) -> str:
        if mode != "Never" and info.data.get("ipip_mode", "Never") != "Never":
            raise ValueError("ipipMode and vxlanMode cannot both be enabled; percale has no IPIP "
                             "dataplane, so set ipipMode to Never")
        return mode

    @model_validator(mode="after")
    def _load_balancer_rules(self) -> IPPoolSpec:
        if "LoadBalancer" in self.allowed_uses:
            if len(self.allowed_uses) > 1:
                raise FieldError(
                    "allowedUses", "allowedUses LoadBalancer cannot be combined with Workload or Tunnel"
                )
            if self.ipip_mode != "Never" or self.vxlan_mode != "Never":
                mode = "ipipMode" if self.ipip_mode != "Never" else "vxlanMode"
                raise FieldError(mode, "a LoadBalancer pool cannot use IPIP or VXLAN")
            if self.disable_bgp_export:
                raise FieldError("disableBGPExport", "a LoadBalancer pool cannot set disableBGPExport")
            if self.node_selector.strip() != "all()":
                raise FieldError("nodeSelector", "a LoadBalancer pool needs nodeSelector all()")
        return self


class IPPool(Resource):
    kind: Literal["IPPool"] = "IPPool"
    metadata: ObjectMeta
    spec: IPPoolSpec


register(IPPool, plural="ippools", short_names=("ippool", "ipp", "ipps", "pool", "pools"))
