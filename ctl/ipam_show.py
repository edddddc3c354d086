"""`percalectl ipam show` and `percalectl ipam configure`, in calicoctl's words and formats.

    ipam show                       one row per pool: total, in use, free
    ipam show --show-blocks         ... each pool followed by its blocks; orphan blocks last
    ipam show --ip ADDR             who holds one address
    ipam show --show-borrowed       addresses nodes took from other nodes' blocks
    ipam show --show-configuration  the IPAMConfig values in force
    ipam configure [--strictaffinity=true|false] [--max-blocks-per-host=N]
                   [--ip-cooldown-seconds=N]   at least one of them

Counting lives in `percale.ipam.usage`, drawing in `percale.ctl.ascii_table` (calicoctl's classic
tables, calico.md §5.1 and §5.3); this module reads the datastore and formats numbers as Go does.
"""

from __future__ import annotations

import re
import sys
from typing import Annotated, Optional

import typer

from percale.ctl import ascii_table
from percale.ctl.context import fail, with_datastore
from percale.ctl.ipam_app import ipam_app
from percale.datastore import Datastore, DatastoreError
from percale.ipam.allocator import IPAM, Allocation, read_pools, read_reservations
from percale.ipam.usage import Borrowing, Usage, borrowed, usage
from percale.api import IPAMBlock, IPAMConfigSpec
from percale.api.ipam import MAX_IP_COOLDOWN_SECONDS
from percale.api.fields import plain_ip
from percale.api.meta import InvalidResource

USAGE_HEADERS = ("GROUPING", "CIDR", "IPS TOTAL", "IPS IN USE", "IPS FREE")
# With IPReservations, Calico's HEAD column for them between IN USE and FREE; without any, the
# classic table, line for line.
USAGE_HEADERS_RESERVED = ("GROUPING", "CIDR", "IPS TOTAL", "IPS IN USE", "IPS RESERVED", "IPS FREE")
BORROWED_HEADERS = ("IP", "BORROWING-NODE", "BLOCK", "BLOCK OWNER", "TYPE", "ALLOCATED-TO")
CONFIG_HEADERS = ("PROPERTY", "VALUE")


# -- pure formatting ---------------------------------------------------------------------------


def go_count(n: float) -> str:
    """A count as calicoctl prints it, Go's %.5g: 65536, but 1.6777e+07 for a /8."""
    return "%.5g" % n


def usage_row(grouping: str, cidr: str, capacity: int, in_use: int, free: int | None = None,
              reserved: int | None = None) -> list[str]:
    """One row of the utilisation table: `78 (0%)`, `65458 (100%)`; with `reserved`, the IPS
    RESERVED cell too. `free` defaults to what is not in use.

    calicoctl works in float64 and prints percentages with Go's %.f; Python's % formatting rounds
    the same way (the exact binary value, halves to even), so 0.5% shows as 0% in both.
    """
    total = float(capacity)

    def cell(n: float) -> str:
        return f"{go_count(n)} ({'%.0f' % (100 * n / total)}%)"

    counts = [in_use] + ([] if reserved is None else [reserved])
    counts.append(capacity - in_use if free is None else free)
    return [grouping, cidr, go_count(total), *(cell(float(n)) for n in counts)]


def usage_rows(found: Usage, show_blocks: bool, reserved: bool = False) -> list[list[str]]:
    """The table's rows; `reserved`: with the IPS RESERVED column (IPReservations exist)."""
    def row(grouping: str, u) -> list[str]:
        return usage_row(grouping, u.cidr, u.capacity, u.in_use, u.free,
                         u.reserved if reserved else None)

    rows = []
    for pool in found.pools:
        rows.append(row("IP Pool", pool))
        if show_blocks:
            rows += [row("Block", b) for b in pool.blocks]
    if show_blocks:
        # No pool row: there is no pool, and its "total" would mean nothing.
        rows += [row("Block", b) for b in found.orphans]
    return rows


def borrowed_report(found: Borrowing) -> str:
    out = ascii_table.render(BORROWED_HEADERS, [
        [a.address, a.borrowing_node, a.block, a.block_owner, a.type, a.allocated_to]
        for a in found.addresses
    ])
    if found.unclassified:
        out += (f"\nNote: found {found.unclassified} IP allocations without an explicit node "
                "association. Unable to determine if they are borrowed.\n")
    return out


def allocation_report(address: str, allocation: Allocation | None) -> str:
    if allocation is None:
        return f"{address} is not assigned\n"
    lines = [f"IP {address} is in use", f"Handle ID: {allocation.handle_id or '<none>'}"]
    if allocation.attributes:
        lines.append("Active Owner Attributes:")
        lines += [f"  {k}: {v}" for k, v in sorted(allocation.attributes.items())]
    else:
        lines.append("No Active Owner attributes defined")
    return "\n".join(lines) + "\n"


def go_value(value: bool | int) -> str:
    """A value as Go's %#v prints a bool or an int."""
    return str(value).lower() if isinstance(value, bool) else str(value)


def configuration_rows(config: IPAMConfigSpec) -> list[list[str]]:
    """calicoctl's rows: one per field of its IPAMConfig, in the struct's order, named as the
    field (show.go walks the struct). Its KubeVirtVMAddressPersistence has no counterpart here."""
    # The stored maxBlocksPerHost, 0 when unset, as calicoctl shows it; the allocator then
    # applies its default cap.
    return [
        ["StrictAffinity", go_value(config.strict_affinity)],
        ["AutoAllocateBlocks", go_value(config.auto_allocate_blocks)],
        ["MaxBlocksPerHost", go_value(config.max_blocks_per_host)],
        ["IPCooldownSeconds", go_value(config.ip_cooldown_seconds)],
    ]


# Go's strconv.ParseBool, which calicoctl uses for --strictaffinity.
_GO_BOOLS = {
    **dict.fromkeys(("1", "t", "T", "TRUE", "true", "True"), True),
    **dict.fromkeys(("0", "f", "F", "FALSE", "false", "False"), False),
}

# Go's strconv.Atoi, which calicoctl uses for --max-blocks-per-host: an optional sign and decimal
# digits, nothing else (Python's int() would take spaces and underscores too), within int64.
_GO_INT = re.compile(r"[+-]?[0-9]+")
_INT64 = range(-(2**63), 2**63)


def go_atoi(text: str) -> int | None:
    """`text` as strconv.Atoi reads it; None where it refuses it."""
    if not _GO_INT.fullmatch(text):
        return None
    number = int(text)
    return number if number in _INT64 else None


# -- commands ----------------------------------------------------------------------------------


@ipam_app.command()
def show(
    ip: Annotated[Optional[str], typer.Option(
        "--ip", help="Report whether this specific IP address is in use.")] = None,
    show_blocks: Annotated[bool, typer.Option(
        "--show-blocks", help="Show detailed information for IP blocks as well as pools.")] = False,
    show_borrowed: Annotated[bool, typer.Option(
        "--show-borrowed", help='Show detailed information for "borrowed" IP addresses.')] = False,
    show_configuration: Annotated[bool, typer.Option(
        "--show-configuration", help="Show current IPAM configuration.")] = False,
) -> None:
    """Show IP pool and block usage, who holds an address, borrowed addresses or the config."""
    if (ip is not None) + show_blocks + show_borrowed + show_configuration > 1:
        raise fail("Give at most one of --ip, --show-blocks, --show-borrowed and --show-configuration.")
    if ip is not None:
        try:
            address = str(plain_ip(ip))
        except ValueError:
            raise fail(f"Error executing command: invalid IP address specified: {ip}") from None
        allocation = with_datastore(lambda store: IPAM(store).get_allocation(address))
        sys.stdout.write(allocation_report(address, allocation))
    elif show_borrowed:
        found = with_datastore(_read_blocks)
        sys.stdout.write(borrowed_report(borrowed(found)))
    elif show_configuration:
        config = with_datastore(lambda store: IPAM(store).get_config())
        sys.stdout.write(ascii_table.render(CONFIG_HEADERS, configuration_rows(config)))
    else:
        found, reserved = with_datastore(_read_usage)
        headers = USAGE_HEADERS_RESERVED if reserved else USAGE_HEADERS
        sys.stdout.write(ascii_table.render(headers, usage_rows(found, show_blocks, reserved)))


@ipam_app.command()
def configure(
    strictaffinity: Annotated[Optional[str], typer.Option(
        "--strictaffinity", metavar="true|false",
        help="Set StrictAffinity to true/false. When StrictAffinity is true, borrowing IP "
             "addresses is not allowed.")] = None,
    max_blocks_per_host: Annotated[Optional[str], typer.Option(
        "--max-blocks-per-host", metavar="NUMBER",
        help="Set the maximum number of blocks that can be affine to a host (above 0 only "
             "with StrictAffinity true; 0: the default cap of 20).")] = None,
    ip_cooldown_seconds: Annotated[Optional[int], typer.Option(
        "--ip-cooldown-seconds", metavar="SECONDS", min=0, max=MAX_IP_COOLDOWN_SECONDS,
        help="Set the minimum time between release and re-allocation of an IP address.")] = None,
) -> None:
    """Modify configuration for IP address management: give at least one setting."""
    # As calicoctl: an empty value is a setting not given.
    strict: bool | None = None
    if strictaffinity:
        strict = _GO_BOOLS.get(strictaffinity)
        if strict is None:
            raise fail("Invalid value. Use true or false to set strictaffinity")
    max_blocks: int | None = None
    if max_blocks_per_host:
        max_blocks = go_atoi(max_blocks_per_host)
        if max_blocks is None:
            raise fail("Invalid value for maxblockhost. Use a valid number")
    # (calicoctl's field name, percale's, the value), in calicoctl's order of reporting.
    settings = [(name, field, value) for name, field, value in (
        ("StrictAffinity", "strict_affinity", strict),
        ("MaxBlocksPerHost", "max_blocks_per_host", max_blocks),
        ("IPCooldownSeconds", "ip_cooldown_seconds", ip_cooldown_seconds),
    ) if value is not None]
    if not settings:
        raise fail("at least one configuration option must be specified")

    async def apply(store: Datastore) -> list[str]:
        try:
            await IPAM(store).set_config(**{field: value for _, field, value in settings})
        except InvalidResource as err:
            return [str(p) for p in err.problems]
        return []

    problems = with_datastore(apply)
    if problems:
        asked = " and ".join(f"{name} to {go_value(value)}" for name, _, value in settings)
        raise fail(f"Cannot set {asked} in IPAMConfig 'default':",
                   *(f"  {p}" for p in problems), "IPAMConfig was not changed.")
    for name, _, value in settings:
        typer.echo(f"Successfully set {name} to: {go_value(value)}")


# -- datastore ---------------------------------------------------------------------------------


async def _read_blocks(store: Datastore) -> list[IPAMBlock]:
    """Every block that can be read. One that cannot (written by hand or by another tool) is
    named on stderr and left out, rather than hiding every other block's figures."""
    found = []
    for kv in (await store.list("IPAMBlock", defer_errors=True)).items:
        try:
            found.append(kv.value)
        except DatastoreError as err:
            typer.echo(f"warning: left out of these figures: {err}", err=True)
    return found


async def _read_usage(store: Datastore) -> tuple[Usage, bool]:
    """The usage, and whether any IPReservation exists."""
    def left_out(err: DatastoreError) -> None:
        typer.echo(f"warning: left out of these figures: {err}", err=True)

    pools = await read_pools(store, left_out)
    reservations = await read_reservations(store, left_out)
    return usage(pools, await _read_blocks(store), reservations), bool(reservations)
