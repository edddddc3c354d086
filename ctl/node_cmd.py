"""`percalectl node status`: a node's agent and BGP sessions in calicoctl's words (calico.md §5.2).

    node status                  this node: asks percale-node over its status socket (as root)
    node status --node NAME      any node, from its NodeStatus record in the datastore
    node status --all            every node, one block each headed `Node NAME:`

The local form prints calicoctl's text with percale's name in the running line and ExaBGP's in
the BGP backend line; scripts that read calicoctl's output read this. The datastore forms print
the same block from what the node last published (node/status.py writes it), and say so
when there is no record or it is stale (not refreshed for three update periods). --all says a
record whose Node was deleted is left over from a gone node, and does not fail for it.

Rendering is pure (`render`, `render_record`); the command reads the socket or the datastore.
"""

from __future__ import annotations

import json
import math
import socket
import sys
from datetime import datetime, timezone, tzinfo
from typing import Annotated, Optional

import typer

from percale.ctl import ascii_table
from percale.ctl.context import fail, with_datastore
from percale.datastore import Datastore, Key, NotFound
from percale.bgpd.status import (
    DEFAULT_STATUS_SOCKET,
    STALE_AFTER_PERIODS,
    NodeView,
    from_json,
    staleness,
    view_of_record,
)
from percale.api import NodeStatus
from percale.api.fields import parse_time

node_app = typer.Typer(
    help="A node's percale agent and BGP sessions, as calicoctl node shows them.",
    no_args_is_help=True,
)

RUNNING = "percale process is running."
NOT_RUNNING = "percale process is not running."
BGP_NOT_RUNNING = "The BGP backend process (ExaBGP) is not running."
# calicoctl's words when the caller may not read the agent's state.
NOT_ROOT = "Need super user privileges: Operation not permitted"
PEER_HEADERS = ("PEER ADDRESS", "PEER TYPE", "STATE", "SINCE", "INFO")
# calicoctl gives BIRD 2 s to answer.
QUERY_TIMEOUT_SECONDS = 2.0


# -- pure formatting ---------------------------------------------------------------------------


def _since(since: datetime | str | None, tz: tzinfo | None) -> str:
    if isinstance(since, datetime):
        return since.astimezone(tz).strftime("%H:%M:%S")
    return since or ""


def render(view: NodeView, running_line: str = RUNNING, tz: tzinfo | None = None) -> str:
    """calicoctl's text: the running line; then an IPv4 and an IPv6 table (or `No IPvN peers
    found.`), or the line saying the BGP backend is not running; then one blank line. SINCE is
    shown in `tz` (None: this machine's local time)."""
    out = [f"{running_line}\n"]
    if not view.bgp_running:
        out.append(f"\n{BGP_NOT_RUNNING}\n")
    else:
        for family in (4, 6):
            rows = [[p.address, p.kind, p.state, _since(p.since, tz), p.info]
                    for p in view.peers if p.family == family]
            out.append(f"\nIPv{family} BGP status\n")
            out.append(ascii_table.render(PEER_HEADERS, rows) if rows
                       else f"No IPv{family} peers found.\n")
    out.append("\n")
    return "".join(out)


def render_record(name: str, record: NodeStatus | None, now: datetime,
                  tz: tzinfo | None = None) -> tuple[str, bool]:
    """A node's block from its NodeStatus, and whether the record vouches for the node: False
    when it is missing, never written, or stale (the tables then show what it last said)."""
    if record is None:
        missing = (f"No status for node {name}: there is no NodeStatus {name} "
                   "(percale-node writes it once it runs).\n\n")
        return missing, False
    overdue = staleness(record, now)
    if overdue is not None and math.isinf(overdue):
        return f"Status of node {name} has not been written yet.\n\n", False
    assert record.status is not None and record.status.last_updated is not None
    at = parse_time(record.status.last_updated).astimezone(tz).strftime("%Y-%m-%d %H:%M:%S")
    period = record.spec.update_period_seconds
    if overdue is not None:
        running_line = (f"Status of node {name} is stale: last updated {at}, {overdue:.0f}s ago "
                        f"(percale-node refreshes it every {period}s; stale after "
                        f"{STALE_AFTER_PERIODS * period}s).")
    elif period == 0:
        running_line = (f"Status of node {name} is not refreshed (updatePeriodSeconds is 0); "
                        f"last updated {at}.")
    else:
        running_line = RUNNING
    view = view_of_record(record)
    # A class the record does not ask for is said to be unreported: its absence is no news
    # about the node (a record of class Routes alone once read as ExaBGP not running).
    if record.status.agent is None and record.status.bgp is None:
        text = (f"{running_line}\n\nThe BGP backend and its peers are not reported: NodeStatus "
                f"{name} asks for neither class Agent nor class BGP.\n\n")
    elif view.bgp_running and record.status.bgp is None:
        text = (f"{running_line}\n\nBGP peers are not reported: NodeStatus {name} does not ask "
                "for class BGP.\n\n")
    else:
        text = render(view, running_line, tz)
    return text, overdue is None


# -- the command -------------------------------------------------------------------------------


def query(path: str, timeout: float = QUERY_TIMEOUT_SECONDS) -> NodeView:
    """Ask the agent on `path`. FileNotFoundError or ConnectionRefusedError: no agent there;
    PermissionError: not root; other OSError or ValueError: the agent did not answer properly."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(timeout)
        conn.connect(path)
        answer = bytearray()
        while chunk := conn.recv(65536):
            answer += chunk
    return from_json(json.loads(answer))


@node_app.command()
def status(
    context: typer.Context,
    status_socket: Annotated[Optional[str], typer.Option(
        envvar="PERCALE_STATUS_SOCKET", help=f"This node's percale-node status socket (default: {DEFAULT_STATUS_SOCKET})")] = None,
    node: Annotated[Optional[str], typer.Option(
        "--node", help="Another node: read its NodeStatus from the datastore")] = None,
    all_nodes: Annotated[bool, typer.Option(
        "--all", help="Every node's NodeStatus from the datastore, one block each")] = False,
) -> None:
    """Show percale-node's state and its BGP sessions, in calicoctl node status's format.

    Alone: asks this node's agent (as root); exits 1 if it is not running.

    --node, --all: read NodeStatus records; exit 1 if one is missing or stale (3 periods old).
    --all lists a record whose Node was deleted as gone; it does not count as a failure.
    """
    if node is not None and all_nodes:
        raise fail("Give --node NAME or --all, not both.")
    # PERCALE_STATUS_SOCKET is only the local mode's default: it does not refuse --node.
    # (By name: typer carries click's ParameterSource in a copy of its own.)
    source = context.get_parameter_source("status_socket")
    given = source is not None and source.name == "COMMANDLINE"
    if given and (node is not None or all_nodes):
        raise fail("--status-socket asks this node's agent; --node and --all read the "
                   "datastore. Give one or the other.")
    if node is None and not all_nodes:
        _local(status_socket or DEFAULT_STATUS_SOCKET)
    else:
        _from_datastore(node)


def _local(path: str) -> None:
    try:
        view = query(path)
    except (FileNotFoundError, ConnectionRefusedError):
        typer.echo(NOT_RUNNING)  # calicoctl prints its not-running line on stdout
        raise typer.Exit(1) from None
    except PermissionError:
        typer.echo(NOT_ROOT)
        raise typer.Exit(1) from None
    except (OSError, ValueError) as err:
        raise fail(f"Error querying percale-node on {path}: {err}") from None
    sys.stdout.write(render(view))


def render_gone(name: str) -> str:
    """The block of a NodeStatus whose Node no longer exists: its agent is gone with the node,
    and nothing deletes the record, so it would read as stale, and fail --all, for good."""
    return (f"Node {name} is gone: there is no Node {name}; its NodeStatus is left over "
            f"(percalectl delete nodestatus {name} removes it).\n\n")


def _from_datastore(node: str | None) -> None:
    # (name, its record, whether its Node exists)
    async def read(store: Datastore) -> list[tuple[str, NodeStatus | None, bool]]:
        if node is not None:
            try:
                return [(node, (await store.get(Key("NodeStatus", node))).value, True)]
            except NotFound:
                return [(node, None, True)]
        records = {kv.value.metadata.name: kv.value
                   for kv in (await store.list("NodeStatus")).items
                   # The records agents write are named after their node; one a user named
                   # otherwise is not a node's own.
                   if kv.value.metadata.name == kv.value.spec.node}
        nodes = {kv.value.metadata.name for kv in (await store.list("Node")).items}
        return [(name, records.get(name), name in nodes) for name in sorted(nodes | set(records))]

    found = with_datastore(read)
    if not found:
        typer.echo("No nodes found.")
        return
    now = datetime.now(timezone.utc)
    healthy = True
    for name, record, exists in found:
        if exists:
            text, ok = render_record(name, record, now)
            healthy &= ok
        else:
            text = render_gone(name)
        sys.stdout.write(text if node is not None else f"Node {name}:\n{text}")
    if not healthy:
        raise typer.Exit(1)
