"""The node's address detected again while the agent runs (node/address_monitor.py), against the
in-memory datastore, detection fed a host address list the test changes: which settings are
watched, AUTODETECT_POLL_INTERVAL read as calico-node reads it, a moved address written to the
Node once, nothing found or an address another Node has said once and the Node kept."""

from __future__ import annotations

import ipaddress
import logging

import pytest

from percale.api import parse
from percale.datastore import Key, MemoryDatastore
from percale.node.address_monitor import AddressMonitor, Detected, detected, poll_seconds
from percale.node.registration import HostAddress, RegistrationError

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("text, seconds", [
    ("60s", 60.0), ("1m30s", 90.0), ("500ms", 0.5), ("2h", 7200.0), ("1.5s", 1.5)])
def test_the_interval_is_a_go_duration(text, seconds):
    assert poll_seconds(text) == seconds


@pytest.mark.parametrize("text, reason", [
    ("60", "is not a duration"),  # Go's ParseDuration: missing unit
    ("soon", "is not a duration"),
    ("-1s", "is not a duration"),
    ("", "cannot be empty"),
    ("0s", "must be longer than 0"),  # calico-node's ticker panics on 0
])
def test_an_interval_that_cannot_be_is_refused_naming_the_setting(text, reason):
    with pytest.raises(RegistrationError) as caught:
        poll_seconds(text)
    message = str(caught.value)
    assert message.startswith("--autodetect-poll-interval (AUTODETECT_POLL_INTERVAL): ")
    assert reason in message


def test_what_is_detected_again_follows_calico_node():
    # configureIPsAndSubnets: IPv4 when IP=autodetect, or IP is empty (then while the Node has
    # no address); IPv6 only when IP6=autodetect. A given address, or none, never.
    assert detected("autodetect", "autodetect", "interface=eth1", None) == (
        Detected(4, "interface=eth1", always=True), Detected(6, "first-found", always=True))
    assert detected(None, None, "first-found", "first-found") == (
        Detected(4, "first-found", always=False),)
    assert detected("10.0.0.5/24", "none", "first-found", "first-found") == ()
    assert detected("none", "fd00::5/64", "first-found", "first-found") == ()


def node(name: str, address: str) -> object:
    return parse({"apiVersion": "percale.io/v1", "kind": "Node", "metadata": {"name": name},
                  "spec": {"bgp": {"ipv4Address": address, "asNumber": 65001}}})


class Host:
    def __init__(self, *addresses: str) -> None:
        self.set(*addresses)

    def set(self, *addresses: str) -> None:
        self.addresses = [HostAddress("eth1", ipaddress.ip_interface(a)) for a in addresses]

    def __call__(self) -> list[HostAddress]:
        return self.addresses


async def bgp(store, name: str):
    return (await store.get(Key("Node", name))).value.spec.bgp


async def test_a_moved_address_is_written_to_the_node_once(caplog):
    caplog.set_level(logging.INFO, logger="percale.node")
    store, host = MemoryDatastore(), Host("10.0.0.13/24")
    await store.create(node("n3", "10.0.0.13/24"))
    monitor = AddressMonitor(store, store, "n3", [Detected(4, "interface=eth1", always=True)],
                             60.0, addresses=host)
    await monitor.check()
    revision = (await store.get(Key("Node", "n3"))).revision
    assert caplog.messages == []  # the same address: nothing written, nothing said

    host.set("10.0.0.33/24")  # DHCP gave another lease
    await monitor.check()
    await monitor.check()
    spec = await bgp(store, "n3")
    assert (str(spec.ipv4_address), spec.as_number) == ("10.0.0.33/24", 65001)
    assert [m for m in caplog.messages if "changed" in m] == [
        "Node n3: IPv4 address changed from 10.0.0.13/24 to 10.0.0.33/24 (detected again with"
        " --ip-autodetection-method interface=eth1)"]

    host.set("10.0.0.33/28")  # the prefix alone: CrossSubnet compares subnets
    await monitor.check()
    assert str((await bgp(store, "n3")).ipv4_address) == "10.0.0.33/28"
    assert (await store.get(Key("Node", "n3"))).revision != revision


async def test_nothing_found_keeps_the_node_and_is_said_once(caplog):
    caplog.set_level(logging.WARNING, logger="percale.node")
    store, host = MemoryDatastore(), Host("10.0.0.13/24")
    await store.create(node("n3", "10.0.0.13/24"))
    monitor = AddressMonitor(store, store, "n3", [Detected(4, "interface=eth1", always=True)],
                             60.0, addresses=host)
    host.set()  # eth1 lost its address
    await monitor.check()
    await monitor.check()
    assert str((await bgp(store, "n3")).ipv4_address) == "10.0.0.13/24"
    assert caplog.messages == [
        "IPv4 address autodetection found nothing; Node n3 keeps 10.0.0.13/24: "
        "--ip-autodetection-method: no IPv4 address found with interface=eth1"]

    host.set("10.0.0.33/24")
    await monitor.check()
    assert str((await bgp(store, "n3")).ipv4_address) == "10.0.0.33/24"
    host.set()
    await monitor.check()  # found nothing again after finding something: said again
    assert len(caplog.messages) == 2


async def test_an_address_another_node_has_is_said_once_and_not_written(caplog):
    caplog.set_level(logging.WARNING, logger="percale.node")
    store, host = MemoryDatastore(), Host("10.0.0.12/24")
    await store.create(node("n2", "10.0.0.12/24"))
    await store.create(node("n3", "10.0.0.13/24"))
    monitor = AddressMonitor(store, store, "n3", [Detected(4, "first-found", always=True)],
                             60.0, addresses=host)
    await monitor.check()
    await monitor.check()
    assert str((await bgp(store, "n3")).ipv4_address) == "10.0.0.13/24"
    assert len(caplog.messages) == 1
    assert "already used by Node 'n2'" in caplog.messages[0]


async def test_an_empty_ip_detects_only_while_the_node_has_no_address():
    store, host = MemoryDatastore(), Host("10.0.0.33/24")
    await store.create(node("n3", "10.0.0.13/24"))
    monitor = AddressMonitor(store, store, "n3", [Detected(4, "first-found", always=False)],
                             60.0, addresses=host)
    await monitor.check()
    assert str((await bgp(store, "n3")).ipv4_address) == "10.0.0.13/24"  # kept, as calico-node

    current = await store.get(Key("Node", "n3"))
    await store.update(parse({"apiVersion": "percale.io/v1", "kind": "Node",
                              "metadata": {"name": "n3"}, "spec": {}}),
                       revision=current.revision)
    await monitor.check()
    assert str((await bgp(store, "n3")).ipv4_address) == "10.0.0.33/24"
