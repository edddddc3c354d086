"""`percalectl node status` text, byte for byte: calicoctl's format (calico.md §5.2) with
percale's running line and ExaBGP's backend line, from the agent's answer and from a NodeStatus."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone

import pytest
from typer.testing import CliRunner

from percale.ctl import node_cmd
from percale.ctl.main import app
from percale.ctl.node_cmd import render, render_record
from percale.bgpd.status import (
    NodeView,
    PeerRow,
    from_json,
    session_state,
    status_record,
    to_json,
    view_of_record,
)
from percale.api import NodeStatus, NodeStatusSpec, ObjectMeta, parse
from percale.datastore import MemoryDatastore

pytestmark = pytest.mark.unit

UTC = timezone.utc


def at(clock: str) -> datetime:
    hours, minutes, seconds = map(int, clock.split(":"))
    return datetime(2026, 5, 1, hours, minutes, seconds, tzinfo=UTC)


MESH_V4 = NodeView(True, (
    PeerRow("172.17.8.102", 4, "node-to-node mesh", "up", "Established", at("23:30:04")),
    PeerRow("10.0.0.9", 4, "global", "start", "Connect", at("23:31:10")),
))

# calico.md §5.2's healthy v4 mesh with IPv6 running and no IPv6 peers; percale's running line.
HEALTHY = """\
percale process is running.

IPv4 BGP status
+--------------+-------------------+-------+----------+-------------+
| PEER ADDRESS |     PEER TYPE     | STATE |  SINCE   |    INFO     |
+--------------+-------------------+-------+----------+-------------+
| 172.17.8.102 | node-to-node mesh | up    | 23:30:04 | Established |
| 10.0.0.9     | global            | start | 23:31:10 | Connect     |
+--------------+-------------------+-------+----------+-------------+

IPv6 BGP status
No IPv6 peers found.

"""


def test_healthy_v4_mesh_and_no_v6_peers_is_calicos_text():
    assert render(MESH_V4, tz=UTC) == HEALTHY


def test_no_peers_at_all():
    assert render(NodeView(True), tz=UTC) == (
        "percale process is running.\n"
        "\n"
        "IPv4 BGP status\n"
        "No IPv4 peers found.\n"
        "\n"
        "IPv6 BGP status\n"
        "No IPv6 peers found.\n"
        "\n")


def test_bgp_not_running_says_so_as_calico_does_for_bird():
    # A node without a BGP address (VXLAN only): ExaBGP is never started.
    assert render(NodeView(False), tz=UTC) == (
        "percale process is running.\n"
        "\n"
        "The BGP backend process (ExaBGP) is not running.\n"
        "\n")


def test_an_ipv6_table_shows_full_addresses_after_the_ipv4_one():
    view = NodeView(True, (
        PeerRow("fd00:99::2", 6, "node-to-node mesh", "up", "Established", at("08:01:02")),
        PeerRow("2001:db8:ffff:1:2:3:4:5", 6, "node specific", "start",
                "Passive", at("08:05:59")),
    ))
    assert render(view, tz=UTC) == """\
percale process is running.

IPv4 BGP status
No IPv4 peers found.

IPv6 BGP status
+-------------------------+-------------------+-------+----------+-------------+
|      PEER ADDRESS       |     PEER TYPE     | STATE |  SINCE   |    INFO     |
+-------------------------+-------------------+-------+----------+-------------+
| fd00:99::2              | node-to-node mesh | up    | 08:01:02 | Established |
| 2001:db8:ffff:1:2:3:4:5 | node specific     | start | 08:05:59 | Passive     |
+-------------------------+-------------------+-------+----------+-------------+

"""


def test_since_is_local_time():
    east = timezone(timedelta(hours=2))
    assert "| 01:30:04 |" in render(MESH_V4, tz=east)


def test_the_agents_answer_survives_the_socket():
    assert from_json(to_json("node1", MESH_V4)) == MESH_V4


def test_a_garbled_answer_is_refused():
    with pytest.raises(ValueError):
        from_json({"bgp": {"running": True, "peers": [{"address": "10.0.0.1"}]}})


def test_agent_not_reachable_is_calicos_not_running_line_and_exit_1(tmp_path):
    done = CliRunner().invoke(app, ["node", "status", "--status-socket", str(tmp_path / "none.sock")])
    assert (done.exit_code, done.stdout) == (1, "percale process is not running.\n")


# -- from a NodeStatus record ------------------------------------------------------------------

NOW = datetime(2026, 5, 1, 23, 40, 0, tzinfo=UTC)


def record(view: NodeView, written: datetime, period: int = 10,
           classes: tuple[str, ...] = ("Agent", "BGP")) -> NodeStatus:
    spec = NodeStatusSpec(node="node1", classes=list(classes), update_period_seconds=period)
    return NodeStatus(metadata=ObjectMeta(name="node1"), spec=spec,
                      status=status_record(spec.classes, view, written))


def test_a_fresh_record_prints_the_same_block_as_the_agent():
    text, ok = render_record("node1", record(MESH_V4, NOW - timedelta(seconds=12)), NOW, tz=UTC)
    assert ok
    assert text == HEALTHY


def test_the_record_keeps_calicos_fields():
    status = record(MESH_V4, NOW).status
    assert status.last_updated == "2026-05-01T23:40:00Z"
    assert (status.bgp.number_established_v4, status.bgp.number_not_established_v4) == (1, 1)
    assert [(p.peer_ip, p.type, p.state, p.since) for p in status.bgp.peers_v4] == [
        ("172.17.8.102", "NodeMesh", "Established", "2026-05-01T23:30:04Z"),
        ("10.0.0.9", "GlobalPeer", "Connect", "2026-05-01T23:31:10Z")]
    assert status.agent.bgp_v4.state == status.agent.bgp_v6.state == "Ready"
    assert status.agent.bgp_v4.version.startswith("ExaBGP 5.")


def test_passive_is_bgps_active_state_in_the_record():
    assert session_state("Passive") == "Active"
    assert session_state("Connect (Connection refused)") == "Connect"
    assert session_state("Established") == "Established"


def test_bgp_not_running_survives_the_record():
    text, ok = render_record("node1", record(NodeView(False), NOW), NOW, tz=UTC)
    assert ok
    assert text == render(NodeView(False))
    assert view_of_record(record(NodeView(False), NOW)).bgp_running is False


def test_a_stale_record_says_so_and_fails():
    text, ok = render_record("node1", record(MESH_V4, NOW - timedelta(seconds=95)), NOW, tz=UTC)
    assert not ok
    first, rest = text.split("\n", 1)
    assert first == ("Status of node node1 is stale: last updated 2026-05-01 23:38:25, 95s ago "
                     "(percale-node refreshes it every 10s; stale after 30s).")
    assert rest == HEALTHY.split("\n", 1)[1]  # what it last said


def test_exactly_three_periods_old_is_not_yet_stale():
    assert render_record("node1", record(MESH_V4, NOW - timedelta(seconds=30)), NOW)[1]


def test_a_missing_record_says_so_and_fails():
    missing = ("No status for node node9: there is no NodeStatus node9 "
               "(percale-node writes it once it runs).\n\n")
    assert render_record("node9", None, NOW) == (missing, False)


def test_a_record_never_written_says_so_and_fails():
    empty = record(MESH_V4, NOW).model_copy(update={"status": None})
    assert render_record("node1", empty, NOW) == (
        "Status of node node1 has not been written yet.\n\n", False)


def test_a_record_without_class_bgp_does_not_pretend_there_are_no_peers():
    text, ok = render_record("node1", record(MESH_V4, NOW, classes=("Agent",)), NOW)
    assert ok
    assert text == ("percale process is running.\n\nBGP peers are not reported: NodeStatus node1 "
                    "does not ask for class BGP.\n\n")


@pytest.mark.parametrize(("args", "message"), [
    (["--node", "a", "--all"], "Give --node NAME or --all, not both.\n"),
    (["--status-socket", "/x", "--all"], ("--status-socket asks this node's agent; --node and "
                                          "--all read the datastore. Give one or the other.\n")),
])
def test_the_socket_and_the_datastore_are_asked_one_at_a_time(args, message):
    done = CliRunner().invoke(app, ["node", "status", *args])
    assert (done.exit_code, done.stderr) == (1, message)


def test_a_since_that_is_not_a_time_is_shown_as_written():
    """Calico's `since` is free text (BIRD's, such as 12:34:56): a record holding one, written
    by hand or by another tool, is shown as it is, not a traceback for every node's status."""
    written = record(MESH_V4, NOW - timedelta(seconds=12))
    written.status.bgp.peers_v4[0].since = "12:34:56"
    text, ok = render_record("node1", written, NOW, tz=UTC)
    assert ok
    assert "| 172.17.8.102 | node-to-node mesh | up    | 12:34:56 | Established |" in text


def test_a_last_updated_with_an_offset_past_a_day_is_refused():
    with pytest.raises(ValueError, match="not a real date and time"):
        NodeStatus.model_validate({
            "apiVersion": "percale.io/v1", "kind": "NodeStatus", "metadata": {"name": "node1"},
            "spec": {"node": "node1"}, "status": {"lastUpdated": "2026-12-07T07:00:00+99:99"}})


def test_a_record_asking_for_neither_agent_nor_bgp_does_not_say_exabgp_is_down():
    """Class Routes alone says nothing of ExaBGP: not "not running", but not reported."""
    text, ok = render_record("node1", record(MESH_V4, NOW, classes=("Routes",)), NOW)
    assert ok
    assert text == ("percale process is running.\n\nThe BGP backend and its peers are not "
                    "reported: NodeStatus node1 asks for neither class Agent nor class BGP.\n\n")
    # With class Agent, a stopped ExaBGP is still said to be stopped.
    stopped, _ = render_record("node1", record(NodeView(False), NOW, classes=("Agent",)), NOW)
    assert "The BGP backend process (ExaBGP) is not running." in stopped


def test_all_lists_a_record_whose_node_is_gone_without_failing(monkeypatch):
    """Nothing deletes a deleted node's NodeStatus: --all says the node is gone and does not
    exit 1 for it, while a live node's stale record still fails it."""
    store = MemoryDatastore()
    now = datetime.now(UTC)

    def own(name: str, written: datetime) -> NodeStatus:
        spec = NodeStatusSpec(node=name, classes=["Agent", "BGP"], update_period_seconds=10)
        return NodeStatus(metadata=ObjectMeta(name=name), spec=spec,
                          status=status_record(spec.classes, MESH_V4, written))

    async def fill(*records: NodeStatus, nodes: tuple[str, ...]) -> None:
        for name in nodes:
            await store.create(parse({"apiVersion": "percale.io/v1", "kind": "Node",
                                      "metadata": {"name": name}, "spec": {}}))
        for value in records:
            await store.create(value)

    asyncio.run(fill(own("node1", now), own("old", now - timedelta(days=3)), nodes=("node1",)))
    monkeypatch.setattr(node_cmd, "with_datastore", lambda work: asyncio.run(work(store)))
    done = CliRunner().invoke(app, ["node", "status", "--all"])
    assert done.exit_code == 0, done.output
    assert ("Node old:\nNode old is gone: there is no Node old; its NodeStatus is left over "
            "(percalectl delete nodestatus old removes it).\n\n") in done.output
    assert "Node node1:\npercale process is running." in done.output

    # A node that exists with a stale record still fails --all.
    asyncio.run(fill(own("node2", now - timedelta(days=3)), nodes=("node2",)))
    done = CliRunner().invoke(app, ["node", "status", "--all"])
    assert done.exit_code == 1
    assert "Status of node node2 is stale" in done.output
