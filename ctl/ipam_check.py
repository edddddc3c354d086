"""`percalectl ipam check` and `percalectl ipam release`: find leaked addresses, give them back.

`check` is Calico's read-only scan (percale/ipam/check.py) printed line for line as calicoctl
prints it (calico.md §5.4), with `-o report.json` for the release. `release --ip` frees one
address; `release --from-report` frees what a report found leaked (§5.5).

Better than Calico: Calico asks for the datastore to be locked between the check and the release
(`calicoctl datastore migrate lock`), because its release trusts the report. percale has no lock
and does not need one: `--from-report` scans again just before releasing and frees an address only
if it is still allocated to the same handle with the same sequence number and still listed by no
WorkloadEndpoint (nor, for a tunnel address, by its Node). The release itself is guarded by that
sequence number, so an address that was freed and handed to a new pod since the report - even in
the instant between the re-check and the write - is never freed. Handles are deleted or corrected
only if they are unchanged since the report. A report from another cluster matches nothing.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Optional

import typer

from percale.ctl import __version__
from percale.ctl.context import fail, with_datastore
from percale.ctl.ipam_app import ipam_app
from percale.datastore import Datastore
from percale.ipam.allocator import IPAM
from percale.ipam.check import (
    Report,
    ReportAllocation,
    ReportError,
    ReportFile,
    ReportHandle,
    parse_report,
    report_document,
)
from percale.ipam.check import check as scan
from percale.ipam.gc import release_leaks, released_by_handle, repair_handle
from percale.api.fields import format_time, plain_ip

VERSION = f"v{__version__}"
TOP_NODES = 20


# --------------------------------------------------------------------------------------------
# check


def check_lines(report: Report, *, show_all_ips: bool, show_problem_ips: bool) -> list[str]:
    """calicoctl's output, in calicoctl's order, for a finished scan."""
    show_problems = show_all_ips or show_problem_ips
    out = ["Checking IPAM for inconsistencies...", ""]

    out += ["Loading all IPAM blocks...", f"Found {len(report.blocks)} IPAM blocks."]
    # percale's addition: a block the check cannot read is a problem it names, not a failure.
    out += [f"  IPAM block {cidr} cannot be read, skipping it: {why}"
            for cidr, why in report.unreadable_blocks.items()]
    if show_all_ips:
        for spec in sorted(report.blocks, key=lambda b: (b.network.version, b.network)):
            out.append(f" IPAM block {spec.cidr} affinity={spec.affinity or '<none>'}:")
            for allocs in report.allocations.values():
                out += [f"  {a.ip} allocated; attrs {a.attr_string()}" for a in allocs
                        if a.block == spec.cidr]
    out += [f"IPAM blocks record {report.allocation_count} allocations."]
    if report.cooling:
        out.append(f"IPAM blocks hold {report.cooling} released IPs cooling down (ipCooldownSeconds).")
    out += [f"  IPAM block {cidr} has IPs released in the future, suggesting clock skew between "
            "nodes" for cidr in report.released_in_future]
    out.append("")

    out += ["Loading all IPAM pools..."]
    out += [f"  {cidr}" for cidr in report.active_pools]
    out += [f"Found {len(report.active_pools)} active IP pools.", ""]
    # percale's addition, as for blocks: an object that cannot be read is named, and whatever
    # it may own is judged neither in use nor leaked.
    if report.unreadable:
        out += [f"  {key} cannot be read, skipping it: {why}"
                for key, why in report.unreadable.items()]
        out += [f"Holding back {len(report.held_back)} IPs that an object which cannot be read "
                "may use.", ""]
        if show_problems:
            out[-1:-1] = [f"  {a.ip} held back for {a.unreadable_owner}; attrs {a.attr_string()}"
                          for a in report.held_back]

    out += ["Loading all nodes."]
    if show_all_ips:
        out += [f"  {ip} belongs to {owner}" for ip, owner in report.node_ips]
    out += [f"Found {len(report.node_ips)} node tunnel IPs.", ""]

    # Calico's HEAD skips this when no LoadBalancer controller is configured; percale has none.
    out += ["Loading all service load balancer IPs.",
            "percale has no LoadBalancer IP controller, skipping service check", ""]

    out += ["Loading all workload endpoints."]
    if show_all_ips:
        out += [f"  {ip} belongs to {owner}" for ip, owner in report.workload_ips]
    out += [f"Found {len(report.workload_ips)} workload IPs.",
            f"Workloads and nodes are using {len(report.in_use)} IPs.", ""]

    out += ["Loading all handles", f"Looking for top (up to {TOP_NODES}) nodes by allocations..."]
    by_node = report.allocations_by_node()
    out += [f"  {node} has {count} allocations" for node, count in by_node[:TOP_NODES]]
    if by_node:
        # Calico's median: the middle entry of the list sorted most-first.
        out.append(f"Node with most allocations has {by_node[0][1]}; "
                   f"median is {by_node[len(by_node) // 2][1]}")
    out.append("")

    out.append("Scanning for IPs that are allocated but not actually in use...")
    if show_problems:
        out += [f"  {a.ip} leaked; attrs {a.attr_string()}" for a in report.leaked]
    out.append(f"Found {len(report.leaked_ips)} IPs that are allocated in IPAM but not actually in use.")
    out.append("Scanning for IPs that are in use by a workload or node but not allocated in IPAM...")
    if show_problems:
        for ip, owners in report.in_use.items():
            if len(owners) > 1:
                out.append(f"  {ip} has multiple owners.")
        out += [f"  {ip} in use by {owner} is not in any active IP pool."
                for ip, owners in report.not_in_pool for owner in owners]
        out += [f"  {ip} in use by {owner} and in active IPAM pool but has no IPAM allocation."
                for ip, owners in report.not_allocated for owner in owners]
    out += [f"Found {len(report.not_in_pool)} in-use IPs that are not in active IP pools.",
            (f"Found {len(report.not_allocated)} in-use IPs that are in active IP pools but have "
             "no corresponding IPAM allocation."), ""]

    out.append("Scanning for IPAM handles with no matching IPs...")
    if show_problems:
        out += [f"  {h.id} doesn't have any active IPs." for h in report.leaked_handles]
    out.append(f"Found {len(report.leaked_handles)} handles with no matching IPs "
               f"(and {report.handles_with_matches} handles with matches).")
    if show_problems:
        out += [f"  {h.id} records {recorded} IPs in block {cidr}, which holds {actual}."
                for h in report.overstated_handles
                for cidr, (recorded, actual) in h.overstated.items()]
    out.append(f"Found {len(report.overstated_handles)} handles whose counts overstate the IPs "
               "in their blocks.")
    out.append("Scanning for IPs with missing handle...")
    if show_problems:
        out += [f"  {h} is in use in a block but doesn't exist." for h in report.missing_handles]
    out.append(f"Found {len(report.missing_handles)} handles mentioned in blocks with no matching "
               "handle resource.")
    out.append(f"Check complete; found {report.problems} problems.")
    return out


CHECK_HELP = (
    "Check IPAM for leaked addresses and inconsistent handles (read-only).\n\n"
    "Compares every allocation with the workload endpoints and nodes using it: addresses "
    "allocated but unused, addresses used but not allocated, and handles that do not match their "
    "blocks. Write a report with -o and give it to `percalectl ipam release --from-report`."
)


@ipam_app.command("check", help=CHECK_HELP,
                  short_help="Check IPAM for leaked addresses and inconsistent handles (read-only).")
def check_command(
    output: Annotated[Optional[Path], typer.Option(
        "--output", "-o", help="Write a JSON report here, for `ipam release --from-report`",
        dir_okay=False)] = None,
    show_all_ips: Annotated[bool, typer.Option(
        "--show-all-ips", help="Print every IP that is checked")] = False,
    show_problem_ips: Annotated[bool, typer.Option(
        "--show-problem-ips", help="Print every IP that is leaked or not allocated properly")] = False,
) -> None:
    """Print calicoctl's check lines; with -o, write the JSON report too."""
    report = with_datastore(scan)
    typer.echo("\n".join(check_lines(report, show_all_ips=show_all_ips,
                                     show_problem_ips=show_problem_ips)))
    if output is not None:
        document = report_document(report, version=VERSION,
                                   generated_at=format_time(datetime.now(timezone.utc)))
        try:
            output.write_text(json.dumps(document, indent=2) + "\n")
        except OSError as err:
            raise fail(f"Failed to write the report to {output}: {err.strerror or err}") from None


# --------------------------------------------------------------------------------------------
# release


RELEASE_HELP = (
    "Release IP addresses: one (--ip) or every address a check report found leaked "
    "(--from-report).\n\n"
    "Releasing does not remove the address from an endpoint still using it: use --ip only for "
    "addresses of endpoints that were not cleanly removed.\n\n"
    "--from-report needs no datastore lock (unlike Calico). Just before releasing it checks "
    "again, and frees an address only if it is still allocated to the same handle with the same "
    "sequence number and still used by no WorkloadEndpoint or Node. The release is held to that "
    "sequence number, so an address re-used since the report is never freed. Handles are deleted "
    "or corrected only if unchanged since the report. With several reports, only addresses "
    "leaked in all of them (same handle, same sequence number) are released: take them some "
    "minutes apart to be sure no address was just being set up."
)


def _load_reports(paths: list[Path]) -> list[ReportFile]:
    reports = []
    for path in paths:
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as err:
            raise fail(f"Failed to read the report {path}: {err.strerror or err}") from None
        except UnicodeDecodeError as err:  # e.g. saved again as UTF-16 by an editor
            raise fail(f"The report {path} is not UTF-8 text, as `percalectl ipam check -o` "
                       f"writes it: byte {err.start} cannot be read") from None
        try:
            document = json.loads(text)
        except json.JSONDecodeError as err:
            raise fail(f"The report {path} is not valid JSON: {err.msg} "
                       f"(line {err.lineno}, column {err.colno})") from None
        except RecursionError:
            raise fail(f"The report {path} nests too deeply to be a report") from None
        try:
            reports.append(parse_report(document))
        except ReportError as err:
            raise fail(f"The report {path} is not a percalectl ipam check report: {err}") from None
    return reports


def _merge(reports: list[ReportFile]) -> tuple[list[ReportAllocation], list[ReportHandle]]:
    """Leaks and handles common to every report (same handle and sequence number; same handle
    revision), in the first report's order."""
    def leak_keys(r: ReportFile) -> set[tuple[str, str | None, int | None]]:
        return {(a.ip, a.handle, a.sequence_number) for a in r.leaks()}

    def handle_keys(r: ReportFile) -> set[tuple[str, str]]:
        return {(h.id, h.revision) for h in (r.leaked_handles or []) + (r.overstated_handles or [])}

    common_leaks = set.intersection(*(leak_keys(r) for r in reports))
    common_handles = set.intersection(*(handle_keys(r) for r in reports))
    first = reports[0]
    leaks = list({a.ip: a for a in first.leaks()
                  if (a.ip, a.handle, a.sequence_number) in common_leaks}.values())
    handles = [h for h in (first.leaked_handles or []) + (first.overstated_handles or [])
               if (h.id, h.revision) in common_handles]
    return leaks, handles


async def _release_from_reports(store: Datastore, reports: list[ReportFile]) -> None:
    ipam = IPAM(store)
    leaks, handles = _merge(reports)
    released: dict[str, dict[str, int]] = {}
    if leaks:
        typer.echo(f"Releasing {len(leaks)} old IPs...")
        result = await release_leaks(ipam, leaks, await scan(store))
        released = released_by_handle(result.released)
        typer.echo(f"Released {len(result.released)} IPs successfully")
        if result.already_free:
            typer.echo(f"{len(result.already_free)} addresses marked as leaked in the report had "
                       "already been cleaned up.")
        if result.changed:
            typer.echo(f"{len(result.changed)} addresses marked as leaked in the report are in use "
                       "again or were re-allocated since; they were left alone.")
    else:
        typer.echo("Report didn't contain any leaked IPs to clean up.")

    if not handles:
        typer.echo("Report didn't contain any handles to clean up.")
        return
    # Handles are judged against a scan taken after the addresses above were released.
    fresh = await scan(store)
    typer.echo(f"Deleting {len(handles)} handles...")
    if any(h.in_blocks for h in handles):
        typer.echo("Key: '.' = Deleted OK; 'c' = count corrected, handle kept (it still has IPs); "
                   "'x' = skip, handle missing/changed.")
    else:
        typer.echo("Key: '.' = Deleted OK; 'x' = skip, handle missing/changed.")
    results = [await repair_handle(ipam, h.as_info(), fresh, released.get(h.id)) for h in handles]
    marks = {"deleted": ".", "corrected": "c", "skipped": "x", "error": "E"}
    typer.echo("".join(marks[r.outcome] for r in results))
    for r in results:
        if r.outcome == "error":
            typer.echo(f"Deleting handle {r.handle} failed: {r.error}.")
    count = {outcome: sum(r.outcome == outcome for r in results) for outcome in marks}
    typer.echo(f"Released {count['deleted']} handles; {count['skipped']} skipped; "
               f"{count['error']} errors.")
    if count["corrected"]:
        typer.echo(f"Corrected the counts of {count['corrected']} handles that still hold IPs.")


async def _release_one(store: Datastore, ip: str) -> bool:
    result = await IPAM(store).release_ips([ip])
    return bool(result.released)


@ipam_app.command("release", help=RELEASE_HELP,
                  short_help="Release an IP address, or the leaked addresses of a check report.")
def release_command(
    ip: Annotated[Optional[str], typer.Option("--ip", help="IP address to release")] = None,
    from_report: Annotated[Optional[list[Path]], typer.Option(
        "--from-report", dir_okay=False,
        help="Release the leaked addresses of this `ipam check -o` report (repeatable: only "
             "leaks common to all reports)")] = None,
    force: Annotated[bool, typer.Option(
        "--force", help="Release from a report that another version of percalectl wrote")] = False,
) -> None:
    if bool(ip) == bool(from_report):
        raise fail("Give either --ip ADDR or --from-report REPORT (see --help).")
    if from_report:
        reports = _load_reports(from_report)
        # As calicoctl: another version may have judged leaks by other rules.
        for path, report in zip(from_report, reports, strict=True):
            if report.version == VERSION:
                continue
            if not force:
                raise fail(f"The report {path} was produced by another version ({report.version}) "
                           f"of percalectl than this one ({VERSION}). Refusing to release; "
                           "check again, or give --force")
            typer.echo(f"WARNING: the report {path} was produced by another version "
                       f"({report.version}) of percalectl. Going on, as --force asks")
        with_datastore(lambda store: _release_from_reports(store, reports))
        return
    assert ip is not None
    try:
        address = str(plain_ip(ip))
    except ValueError:
        raise fail(f"Invalid IP address specified: {ip!r}") from None
    if not with_datastore(lambda store: _release_one(store, address)):
        raise fail(f"IP address {address} is not assigned")
    typer.echo(f"Successfully released IP address {address}")
