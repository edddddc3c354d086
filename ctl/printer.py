"""Output of `percalectl get`: calicoctl's tables, or YAML/JSON that `apply` takes back unchanged.

Tables are laid out as Go's text/tabwriter lays out calicoctl's (minimum cell width 5, padding 3,
spaces), so scripts written against calicoctl's columns keep working; as calicoctl's printer
(commands/common/printer.go), each table ends with a blank line, and a namespaced kind has a
NAMESPACE column first when -n or -A was given.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from decimal import Decimal

import yaml

from percale.api import API_VERSION, KINDS, Resource

Row = Callable[[Resource, "Context"], str]


class Context:
    """What a column may need beyond the resource itself."""

    def __init__(self, default_as_number: int):
        self.default_as_number = default_as_number


def _bool(value: bool | None) -> str:
    return "-" if value is None else str(value).lower()


def _unset(value: object) -> str:
    return "-" if value is None else str(value)


def _peer_node(peer: Resource, _: Context) -> str:
    spec = peer.spec
    if spec.node:
        return spec.node
    return spec.node_selector or "(global)"


def _node_asn(node: Resource, ctx: Context) -> str:
    bgp = node.spec.bgp
    if bgp is None:
        return ""  # no BGP on this node (VXLAN only): calicoctl leaves the cell empty
    if bgp.as_number is not None:
        return str(bgp.as_number)
    # Inherited from the global BGPConfiguration: calicoctl shows it in parentheses.
    return f"({ctx.default_as_number})"


def _node_ip(version: int) -> Row:
    def cell(node: Resource, _: Context) -> str:
        bgp = node.spec.bgp
        value = None if bgp is None else (bgp.ipv4_address if version == 4 else bgp.ipv6_address)
        return value or ""

    return cell


_NAME: tuple[str, Row] = ("NAME", lambda r, _: r.metadata.name)


def _truncated(text: str, width: int) -> str:
    return text if len(text) <= width else text[:width - 3] + "..."

_BGP_PEER = [
    _NAME,
    ("PEERIP", lambda r, _: r.spec.peer_ip or ""),
    ("NODE", _peer_node),
    # calicoctl prints the number as stored, 0 when unset (a peerSelector peer's AS is each
    # selected node's).
    ("ASN", lambda r, _: str(r.spec.as_number or 0)),
]
_BGP_CONFIGURATION = [
    _NAME,
    ("LOGSEVERITY", lambda r, _: _unset(r.spec.log_severity_screen)),
    ("MESHENABLED", lambda r, _: _bool(r.spec.node_to_node_mesh_enabled)),
    ("ASNUMBER", lambda r, _: _unset(r.spec.as_number)),
]
# calicoctl's: how many rules each list holds.
_BGP_FILTER = [
    _NAME,
    ("NUMEXPORTV4", lambda r, _: str(len(r.spec.export_v4))),
    ("NUMIMPORTV4", lambda r, _: str(len(r.spec.import_v4))),
    ("NUMEXPORTV6", lambda r, _: str(len(r.spec.export_v6))),
    ("NUMIMPORTV6", lambda r, _: str(len(r.spec.import_v6))),
]
_IPAM_CONFIG = [
    _NAME,
    ("STRICTAFFINITY", lambda r, _: _bool(r.spec.strict_affinity)),
    ("AUTOALLOCATEBLOCKS", lambda r, _: _bool(r.spec.auto_allocate_blocks)),
]
_IPAM_CONFIG_WIDE = [
    *_IPAM_CONFIG, ("MAXBLOCKSPERHOST", lambda r, _: str(r.spec.max_blocks_per_host))]
_BLOCK_AFFINITY = [
    _NAME,
    ("NODE", lambda r, _: r.spec.node),
    ("CIDR", lambda r, _: r.spec.cidr),
    ("STATE", lambda r, _: r.spec.state),
]
_IPAM_HANDLE = [
    _NAME,
    ("BLOCKS", lambda r, _: ",".join(f"{b}:{n}" for b, n in sorted(r.spec.block.items()))),
]
_NODE_STATUS = [_NAME, ("NODE", lambda r, _: r.spec.node or "")]
_NODE_STATUS_WIDE = [*_NODE_STATUS, ("CLASSES", lambda r, _: ",".join(r.spec.classes))]


def go_float(value: float) -> str:
    """`value` as Go's %v prints a float64 (calicoctl's {{.Spec.Order}}): the shortest digits
    that read back as the same float, in exponent form when the decimal exponent is below -4
    or at least 6 (1234567 -> 1.234567e+06, 1e-05). Rounded to six digits (%g), 1234.5678 and
    1234.5679 both printed 1234.57: two policies looked tied that are not."""
    if value != value or value in (float("inf"), float("-inf")):
        return {"nan": "NaN", "inf": "+Inf", "-inf": "-Inf"}[repr(value)]
    sign, digits, exponent = Decimal(repr(value)).normalize().as_tuple()
    if digits == (0,):
        return "-0" if sign else "0"
    text = "".join(map(str, digits))
    point = len(digits) + exponent  # the decimal exponent is point - 1
    if -4 <= point - 1 < 6:
        if point <= 0:
            text = "0." + "0" * -point + text
        elif point < len(text):
            text = f"{text[:point]}.{text[point:]}"
        else:
            text += "0" * (point - len(text))
    else:
        mantissa = text[0] + (f".{text[1:]}" if len(text) > 1 else "")
        text = f"{mantissa}e{'-' if point - 1 < 0 else '+'}{abs(point - 1):02d}"
    return ("-" if sign else "") + text


def _order(resource, _) -> str:
    order = resource.spec.order
    return "" if order is None else go_float(order)


def _source(resource, _) -> str:
    # Kubernetes NetworkPolicies are stored converted (knp.default.<name>), marked where they
    # came from; percale's own have no mark.
    return "kubernetes" if resource.metadata.annotations.get("percale.io/source") else "percale"


_NAMESPACE = ("NAMESPACE", lambda r, _: r.metadata.namespace or "")
_SELECTOR = ("SELECTOR", lambda r, _: r.spec.selector)
_TIER = ("TIER", lambda r, _: r.spec.tier)

# kind -> (default columns, wide columns)
COLUMNS: dict[str, tuple[list[tuple[str, Row]], list[tuple[str, Row]]]] = {
    "IPPool": (
        [_NAME, ("CIDR", lambda r, _: r.spec.cidr),
         ("SELECTOR", lambda r, _: r.spec.node_selector)],
        [
            _NAME,
            ("CIDR", lambda r, _: r.spec.cidr),
            ("NAT", lambda r, _: _bool(r.spec.nat_outgoing)),
            ("IPIPMODE", lambda r, _: r.spec.ipip_mode or "Never"),
            ("VXLANMODE", lambda r, _: r.spec.vxlan_mode or "Never"),
            ("DISABLED", lambda r, _: _bool(r.spec.disabled)),
            ("DISABLEBGPEXPORT", lambda r, _: _bool(r.spec.disable_bgp_export)),
            ("SELECTOR", lambda r, _: r.spec.node_selector),
            # calicoctl v3.30 and later end the wide table with it.
            ("ASSIGNMENTMODE", lambda r, _: r.spec.assignment_mode),
        ],
    ),
    "Node": (
        [_NAME],
        # calicoctl's four, then percale's: the VXLAN tunnel address in use, if any.
        [_NAME, ("ASN", _node_asn), ("IPV4", _node_ip(4)), ("IPV6", _node_ip(6)),
         ("VXLANTUNNEL", lambda r, _: str(r.spec.ipv4_vxlan_tunnel_addr or ""))],
    ),
    "BGPPeer": (_BGP_PEER, _BGP_PEER),
    "BGPConfiguration": (_BGP_CONFIGURATION, _BGP_CONFIGURATION),
    "BGPFilter": (_BGP_FILTER, _BGP_FILTER),
    "WorkloadEndpoint": (
        [
            ("WORKLOAD", lambda r, _: r.spec.pod or r.spec.workload or ""),
            ("NODE", lambda r, _: r.spec.node or ""),
            ("NETWORKS", lambda r, _: ",".join(r.spec.ip_networks)),
            ("INTERFACE", lambda r, _: r.spec.interface_name or ""),
        ],
        [
            _NAME,
            ("WORKLOAD", lambda r, _: r.spec.pod or r.spec.workload or ""),
            ("NODE", lambda r, _: r.spec.node or ""),
            ("NETWORKS", lambda r, _: ",".join(r.spec.ip_networks)),
            ("INTERFACE", lambda r, _: r.spec.interface_name or ""),
            ("PROFILES", lambda r, _: ",".join(r.spec.profiles)),
        ],
    ),
    "IPAMConfig": (_IPAM_CONFIG, _IPAM_CONFIG_WIDE),
    # calicoctl's: the CIDRs joined, cut at 80 characters.
    "IPReservation": ([_NAME], [_NAME, ("CIDRS", lambda r, _: _truncated(
        ",".join(r.spec.reserved_cidrs), 80))]),
    "IPAMBlock": (
        [_NAME, ("CIDR", lambda r, _: r.spec.cidr),
         ("AFFINITY", lambda r, _: r.spec.affinity or "")],
        [
            _NAME,
            ("CIDR", lambda r, _: r.spec.cidr),
            ("AFFINITY", lambda r, _: r.spec.affinity or ""),
            ("IN USE", lambda r, _: str(sum(a is not None for a in r.spec.allocations))),
            ("FREE", lambda r, _: str(len(r.spec.unallocated))),
        ],
    ),
    "BlockAffinity": (_BLOCK_AFFINITY, _BLOCK_AFFINITY),
    "IPAMHandle": (_IPAM_HANDLE, _IPAM_HANDLE),
    "NodeStatus": (_NODE_STATUS, _NODE_STATUS_WIDE),
    # calicoctl's, then percale's SOURCE: kubernetes for a converted Kubernetes policy.
    "NetworkPolicy": (
        [_NAME, _TIER],
        [_NAME, _TIER, ("ORDER", _order), _SELECTOR, ("SOURCE", _source)],
    ),
    "GlobalNetworkPolicy": ([_NAME, _TIER], [_NAME, _TIER, ("ORDER", _order), _SELECTOR]),
    "Profile": ([_NAME], [_NAME, ("LABELS", lambda r, _: ",".join(
        f"{k}={v}" for k, v in sorted(r.spec.labels_to_apply.items())))]),
}


def tabwrite(rows: list[list[str]], minwidth: int = 5, padding: int = 3) -> str:
    """Go text/tabwriter with calicoctl's settings: each column but the last is padded to its
    widest cell plus `padding`, and at least `minwidth`."""
    widths = [
        max(minwidth, max(len(row[i]) for row in rows) + padding)
        for i in range(len(rows[0]) - 1)
    ]
    return "".join(
        "".join(c.ljust(w) for c, w in zip(row[:-1], widths, strict=True)) + row[-1] + "\n"
        for row in rows
    )


def table(kind: str, resources: list[Resource], wide: bool, ctx: Context,
          namespace_column: bool = False) -> str:
    """One table, then the blank line calicoctl leaves after each. `namespace_column`
    (calicoctl's, when -n or -A is given) puts a namespaced kind's NAMESPACE first."""
    columns = COLUMNS.get(kind, ([_NAME], [_NAME]))[1 if wide else 0]
    if namespace_column and kind in KINDS and KINDS[kind].info.namespaced:
        columns = [_NAMESPACE, *columns]
    rows = [[title for title, _ in columns]]
    rows += [[cell(r, ctx) for _, cell in columns] for r in resources]
    return tabwrite(rows) + "\n"


def document(kind: str, resources: list[Resource], revision: str | None, single: bool) -> dict:
    """One resource as itself; several as a `<Kind>List`, which `apply -f` takes back."""
    if single:
        return resources[0].to_document()
    return {
        "apiVersion": API_VERSION,
        "kind": f"{kind}List",
        "metadata": {"resourceVersion": revision} if revision else {},
        "items": [r.to_document() for r in resources],
    }


def as_yaml(doc: dict) -> str:
    return yaml.safe_dump(doc, sort_keys=False, default_flow_style=False)


def as_json(doc: dict) -> str:
    return json.dumps(doc, indent=2) + "\n"
