"""percale-node's registration of its own Node (--ip, --ip6, --as and address autodetection),
against the in-memory datastore; detection is fed a fixed list of host addresses."""

from __future__ import annotations

import asyncio
import ipaddress

import pytest

from percale.datastore import Key, MemoryDatastore
from percale.node.registration import (
    FromKubernetesNode,
    HostAddress,
    RegistrationError,
    UnlessRegistered,
    autodetect,
    kubernetes_addresses,
    register,
    resolve,
)
from percale.api import parse

pytestmark = pytest.mark.unit

HOST = [
    HostAddress("lo", ipaddress.ip_interface("127.0.0.1/8")),
    HostAddress("docker0", ipaddress.ip_interface("172.17.0.1/16")),
    HostAddress("eth0", ipaddress.ip_interface("172.20.20.3/24")),
    HostAddress("eth1", ipaddress.ip_interface("10.0.0.11/24")),
    HostAddress("eth1", ipaddress.ip_interface("fd00::11/64")),
    HostAddress("pcl0123456789ab", ipaddress.ip_interface("10.244.0.1/32")),
]


@pytest.mark.parametrize("method, expected", [
    # The links are walked from the last: eth1 before eth0, and pcl* is never first-found's.
    ("first-found", "10.0.0.11/24"),
    ("interface=eth0", "172.20.20.3/24"),
    ("interface=eth9,eth.*", "10.0.0.11/24"),
    ("skip-interface=eth1", "172.20.20.3/24"),
    ("skip-interface=eth0,lo,docker.*", "10.0.0.11/24"),
    ("cidr=172.16.0.0/12", "172.20.20.3/24"),
    ("cidr=10.0.0.0/16", "10.0.0.11/24"),
    # cidr= excludes no link, as Calico's: a pool inside the CIDR puts a pod link first.
    ("cidr=10.0.0.0/8", "10.244.0.1/32"),
])
def test_detection_methods_pick_as_calico_does(method, expected):
    assert str(autodetect(4, method, HOST)) == expected


@pytest.mark.parametrize("method", ["first-found", "interface=ens.*", "cidr=169.254.0.0/16"])
def test_enumerating_methods_take_global_unicast_addresses_only(method):
    # A cloud's metadata link can carry 169.254.x.x with global scope; Calico's enumeration keeps
    # global unicast addresses only, so it is never the node's address.
    host = [HostAddress("ens4", ipaddress.ip_interface("169.254.169.2/16")),
            HostAddress("ens5", ipaddress.ip_interface("10.1.0.7/24"))]
    if method.startswith("cidr"):
        with pytest.raises(RegistrationError, match="no IPv4 address found"):
            autodetect(4, method, host)
    else:
        assert str(autodetect(4, method, host)) == "10.1.0.7/24"


def test_can_reach_picks_the_source_address_of_the_route():
    assert str(autodetect(4, "can-reach=10.0.0.1", HOST, can_reach=lambda _: "10.0.0.11")) == "10.0.0.11/24"


def test_ipv6_detection_ignores_ipv4_addresses():
    assert str(autodetect(6, "first-found", HOST)) == "fd00::11/64"


@pytest.mark.parametrize("method, message", [
    ("interface=wlan.*", "--ip-autodetection-method: no IPv4 address found with interface=wlan.*"),
    ("nearest", "--ip-autodetection-method: 'nearest' is not a detection method"),
    ("interface=(", "interface=(: '(' is not a regular expression"),
    ("interface=,", "names no interface"),
    ("cidr=10.0.0.0/33", "--ip-autodetection-method:"),
    ("cidr=fd00::/64", "is an IPv6 CIDR; this method finds the node's IPv4 address"),
    ("can-reach=example.com", "'example.com' is not an IP address"),
    ("can-reach=10.0.0.1,10.0.0.2", "2 destinations; can-reach takes exactly one address"),
])
def test_detection_failures_name_the_setting(method, message):
    with pytest.raises(RegistrationError, match=message.replace("(", r"\(").replace("*", r"\*")):
        autodetect(4, method, HOST)


def test_kubernetes_internal_ip_takes_the_host_address_that_is_the_nodes_internal_ip():
    internal = [ipaddress.ip_address("10.0.0.11"), ipaddress.ip_address("fd00::11")]
    # The host's address, with its interface's prefix: CrossSubnet compares subnets.
    assert str(autodetect(4, "kubernetes-internal-ip", HOST, internal_ips=internal)) == "10.0.0.11/24"
    assert str(autodetect(6, "kubernetes-internal-ip", HOST, internal_ips=internal)) == "fd00::11/64"
    # Decided only once the Kubernetes API answers.
    assert resolve(4, "autodetect", "kubernetes-internal-ip") == FromKubernetesNode(4)


@pytest.mark.parametrize("version, internal, message", [
    (4, ["fd00::11"], "--ip-autodetection-method: kubernetes-internal-ip: the Kubernetes Node has"
                      " no IPv4 InternalIP"),
    (6, [], "--ip6-autodetection-method: kubernetes-internal-ip: the Kubernetes Node has no IPv6"
            " InternalIP"),
    (4, ["192.0.2.7", "10.0.0.99"], "--ip-autodetection-method: kubernetes-internal-ip: the"
                                    " Kubernetes Node's InternalIP 192.0.2.7, 10.0.0.99 is on none"
                                    " of this host's interfaces"),
])
def test_kubernetes_internal_ip_failures_say_what_is_missing(version, internal, message):
    with pytest.raises(RegistrationError) as refused:
        autodetect(version, "kubernetes-internal-ip", HOST,
                   internal_ips=[ipaddress.ip_address(a) for a in internal])
    assert str(refused.value) == message


def test_explicit_addresses_need_their_prefix_and_family():
    assert str(resolve(4, "10.0.0.5/24", None)) == "10.0.0.5/24"
    assert resolve(6, "none", None) == "none"
    with pytest.raises(RegistrationError, match=r"--ip: '10.0.0.5' needs its prefix length"):
        resolve(4, "10.0.0.5", None)
    with pytest.raises(RegistrationError, match=r"--ip6: 10.0.0.5/24 is not an IPv6 address"):
        resolve(6, "10.0.0.5/24", None)
    with pytest.raises(RegistrationError, match=r"--ip: 'ten/8' is not an address with a prefix"):
        resolve(4, "ten/8", None)


def node(name: str, **bgp):
    return parse({"apiVersion": "percale.io/v1", "kind": "Node", "metadata": {"name": name},
                  "spec": {"bgp": bgp} if bgp else {}})


def test_register_creates_updates_and_removes():
    async def scenario():
        store = MemoryDatastore()
        await register(store, "n1", ipaddress.ip_interface("10.0.0.11/24"), None, 65001)
        got = (await store.get(Key("Node", "n1"))).value
        assert str(got.spec.bgp.ipv4_address) == "10.0.0.11/24" and got.spec.bgp.as_number == 65001

        # An existing Node keeps what registration does not set (here its reflector cluster ID).
        await store.update(node("n1", ipv4Address="10.0.0.11/24", asNumber=65001,
                                routeReflectorClusterID="1.0.0.1"),
                           revision=(await store.get(Key("Node", "n1"))).revision)
        await register(store, "n1", ipaddress.ip_interface("10.0.0.12/24"),
                       ipaddress.ip_interface("fd00::12/64"), None)
        got = (await store.get(Key("Node", "n1"))).value.spec.bgp
        assert (str(got.ipv4_address), str(got.ipv6_address)) == ("10.0.0.12/24", "fd00::12/64")
        assert str(got.route_reflector_cluster_id) == "1.0.0.1" and got.as_number == 65001

        # Nothing asked: not even a write.
        before = (await store.get(Key("Node", "n1"))).revision
        await register(store, "n1", None, None, None)
        assert (await store.get(Key("Node", "n1"))).revision == before

        # none, as calico-node's IP=none: no detection, the Node's addresses stay.
        await register(store, "n1", "none", "none", None)
        assert (await store.get(Key("Node", "n1"))).revision == before

    asyncio.run(scenario())


def test_an_address_another_node_has_is_refused_and_nothing_written():
    async def scenario():
        store = MemoryDatastore()
        await store.create(node("n2", ipv4Address="10.0.0.11/24"))
        with pytest.raises(RegistrationError,
                           match=r"spec.bgp.ipv4Address: 10.0.0.11 is already used by Node 'n2'"):
            await register(store, "n1", ipaddress.ip_interface("10.0.0.11/16"), None, None)
        assert [i.key.name for i in (await store.list("Node")).items] == ["n2"]

    asyncio.run(scenario())


# -- as calico-node walks and matches interfaces (autodetection_methods.go, interfaces.go) ----


def host(*links: tuple[str, str]) -> list[HostAddress]:
    """Addresses in link order, as host_addresses lists them."""
    return [HostAddress(name, ipaddress.ip_interface(address)) for name, address in links]


def test_skip_interface_skips_first_founds_interfaces_too():
    """Calico skips its default interfaces as well as the user's: skipping eth1 picked docker0's
    172.17.0.1, or a pod link's address, over eth0's."""
    found = host(("eth0", "10.0.0.5/24"), ("eth1", "192.168.7.5/24"), ("docker0", "172.17.0.1/16"),
                 ("veth3f2a", "172.18.0.1/16"), ("pcl0123456789ab", "10.244.0.1/32"),
                 ("vxlan.percale", "10.244.0.0/32"))
    assert str(autodetect(4, "skip-interface=eth1", found)) == "10.0.0.5/24"
    with pytest.raises(RegistrationError, match="no IPv4 address found with skip-interface=eth"):
        autodetect(4, "skip-interface=eth", found)


def test_on_a_host_with_several_nics_the_last_link_is_taken_first():
    """Calico's GetInterfaces walks the links from the highest index down; each link's own
    addresses keep their order."""
    found = host(("eth0", "10.0.0.5/24"), ("eth1", "192.168.7.5/24"), ("eth1", "192.168.8.5/24"))
    for method in ("first-found", "interface=eth.*", "skip-interface=wlan0",
                   "cidr=10.0.0.0/8,192.168.0.0/16"):
        assert str(autodetect(4, method, found)) == "192.168.7.5/24", method


def test_interface_patterns_are_found_anywhere_in_the_name():
    """Go's regexp.MatchString is not anchored: interface=1 takes eth1, skip-interface=0 skips
    eth0, and a pattern is anchored only with ^ and $."""
    found = host(("eth1", "10.0.0.11/24"), ("eth0", "172.20.20.3/24"))
    assert str(autodetect(4, "interface=1", found)) == "10.0.0.11/24"
    assert str(autodetect(4, "interface=th1$", found)) == "10.0.0.11/24"
    assert str(autodetect(4, "skip-interface=0", found)) == "10.0.0.11/24"
    assert str(autodetect(4, "interface=^eth1$,nothing", found)) == "10.0.0.11/24"
    with pytest.raises(RegistrationError, match="no IPv4 address found"):
        autodetect(4, "interface=^th1", found)


def test_the_detected_address_is_logged_with_its_interface_and_method(caplog):
    with caplog.at_level("INFO", logger="percale.node.registration"):
        autodetect(4, "interface=eth.*", HOST)
    assert caplog.messages == ["Using autodetected IPv4 address 10.0.0.11/24 on interface eth1"
                               " (--ip-autodetection-method interface=eth.*)"]


# -- an empty --ip: calico-node's startup (configureIPsAndSubnets) -----------------------------


def test_an_empty_ip_is_detected_unless_the_node_has_an_address():
    assert resolve(4, None, None) == UnlessRegistered(4, "first-found")
    assert resolve(4, "", "interface=eth1") == UnlessRegistered(4, "interface=eth1")
    # calico-node detects an IPv6 address only when IP6 asks for one.
    assert resolve(6, None, None) is None
    # A method that cannot work is refused at start, before it is known to be needed.
    with pytest.raises(RegistrationError, match="'nearest' is not a detection method"):
        resolve(4, None, "nearest")


def test_an_empty_ip_registers_the_detected_address_and_keeps_a_registered_one(caplog):
    async def scenario():
        store = MemoryDatastore()
        with caplog.at_level("INFO", logger="percale.node.registration"):
            # No Node yet: created with the address first-found finds.
            await register(store, "n1", UnlessRegistered(4, "first-found"), None,
                           addresses=lambda: HOST)
        got = (await store.get(Key("Node", "n1"))).value.spec.bgp
        assert str(got.ipv4_address) == "10.0.0.11/24"
        assert "Using autodetected IPv4 address 10.0.0.11/24 on interface eth1" in caplog.text

        # A Node without an IPv4 address (only its AS) gets one.
        await store.create(node("n2", asNumber=65002))
        await register(store, "n2", UnlessRegistered(4, "cidr=172.20.0.0/16"), None,
                       addresses=lambda: HOST)
        got = (await store.get(Key("Node", "n2"))).value.spec.bgp
        assert (str(got.ipv4_address), got.as_number) == ("172.20.20.3/24", 65002)

        # One with an address keeps it: the host is not even looked at.
        def no_host():
            raise AssertionError("detection ran for a Node that has an address")

        await store.create(node("n3", ipv4Address="192.0.2.3/24"))
        before = (await store.get(Key("Node", "n3"))).revision
        caplog.clear()
        with caplog.at_level("INFO", logger="percale.node.registration"):
            await register(store, "n3", UnlessRegistered(4, "first-found"), None,
                           addresses=no_host)
        assert (await store.get(Key("Node", "n3"))).revision == before
        assert caplog.messages == ["--ip is empty: Node n3 keeps its IPv4 address 192.0.2.3/24"]

    asyncio.run(scenario())


def test_an_empty_ip_with_nothing_to_find_stops_the_node_saying_why():
    async def scenario():
        store = MemoryDatastore()
        with pytest.raises(RegistrationError) as refused:
            await register(store, "n1", UnlessRegistered(4, "interface=wlan.*"), None,
                           addresses=lambda: HOST)
        assert str(refused.value) == (
            "--ip-autodetection-method: no IPv4 address found with interface=wlan.* (--ip is"
            " empty and Node 'n1' has no IPv4 address to keep: give --ip ADDR/PREFIX, or --ip"
            " none for a node without one)")
        assert (await store.list("Node")).items == []

    asyncio.run(scenario())


def test_an_address_found_for_an_empty_ip_that_another_node_has_is_a_warning(caplog):
    async def scenario():
        store = MemoryDatastore()
        await store.create(node("n2", ipv4Address="10.0.0.11/24"))
        with caplog.at_level("WARNING", logger="percale.node.registration"):
            await register(store, "n1", UnlessRegistered(4, "first-found"), None, 65001,
                           addresses=lambda: HOST)
        got = (await store.get(Key("Node", "n1"))).value.spec.bgp
        assert (got.ipv4_address, got.as_number) == (None, 65001)
        assert caplog.messages == [
            "spec.bgp.ipv4Address: 10.0.0.11 is already used by Node 'n2': Node n1 registers no"
            " IPv4 address (--ip is empty); give it with --ip"]

    asyncio.run(scenario())


def test_an_empty_ip_asks_the_kubernetes_api_only_for_a_node_without_an_address():
    async def scenario():
        store = MemoryDatastore()
        await store.create(node("n1", ipv4Address="10.0.0.11/24"))
        wanted = (UnlessRegistered(4, "kubernetes-internal-ip"), None, None)
        # The Node keeps its address: no Kubernetes API is needed (none is configured).
        assert await kubernetes_addresses(wanted, "n1", store, "/nonexistent") == wanted
        # Without one, the InternalIP must be read, so a missing API is an error naming it.
        with pytest.raises(RegistrationError, match="kubernetes-internal-ip needs the Kubernetes"):
            await kubernetes_addresses(wanted, "n2", store, "/nonexistent")

    asyncio.run(scenario())
