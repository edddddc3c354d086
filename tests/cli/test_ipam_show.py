"""`percalectl ipam show` and `ipam configure` as a user runs them, against addresses the real
allocator handed out in the test etcd."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from percale.datastore import Key
from percale.datastore.etcd import EtcdDatastore
from percale.ipam.allocator import IPAM, tunnel_handle
from percale.api import parse
from tests.helpers.ipam_world import add_pool

pytestmark = pytest.mark.cli

NOW = datetime(2026, 3, 1, 12, 0, 0, tzinfo=timezone.utc)


@pytest.fixture
async def store(cli):
    store = EtcdDatastore([cli.endpoint])
    yield store
    await store.close()


def ipam(store) -> IPAM:
    return IPAM(store, clock=lambda: NOW)


async def pod(ipam: IPAM, node: str, namespace: str, name: str, **kwargs):
    return await ipam.auto_assign(
        node, handle_id=f"k8s-pod-network.{namespace}-{name}",
        attrs={"namespace": namespace, "pod": name}, **kwargs)


async def test_show_pools_blocks_and_addresses(cli, store):
    await add_pool(store, "default-ipv4-ippool", "10.0.0.0/8")
    await add_pool(store, "default-ipv6-ippool", "fd00:10:244::/48")
    await add_pool(store, "old-pool", "192.168.0.0/24")
    allocator = ipam(store)
    api1 = await pod(allocator, "node1", "web", "api-1", num4=1, num6=1,
                     ipv4_pools=["default-ipv4-ippool"])
    await pod(allocator, "node1", "web", "api-2", num4=1, ipv4_pools=["default-ipv4-ippool"])
    await allocator.auto_assign("node2", handle_id=tunnel_handle("node2"), num4=1, use="Tunnel",
                                attrs={"type": "vxlanTunnelAddress"},
                                ipv4_pools=["default-ipv4-ippool"])
    legacy = await pod(allocator, "node2", "legacy", "db-0", num4=2, ipv4_pools=["old-pool"])
    # The pool goes while its block still holds addresses: the block is an orphan.
    await store.delete(Key("IPPool", "old-pool"))
    assert str(api1.ipv4[0].ip) == "10.138.29.0"
    before = cli.stored()

    shown = cli("ipam", "show")
    assert shown.code == 0, shown.err
    assert shown.out == """\
+----------+------------------+------------+------------+-------------------+
| GROUPING |       CIDR       | IPS TOTAL  | IPS IN USE |     IPS FREE      |
+----------+------------------+------------+------------+-------------------+
| IP Pool  | 10.0.0.0/8       | 1.6777e+07 | 3 (0%)     | 1.6777e+07 (100%) |
| IP Pool  | fd00:10:244::/48 | 1.2089e+24 | 1 (0%)     | 1.2089e+24 (100%) |
+----------+------------------+------------+------------+-------------------+
"""

    blocks = cli("ipam", "show", "--show-blocks")
    assert blocks.code == 0, blocks.err
    assert blocks.out == """\
+----------+------------------------------+------------+------------+-------------------+
| GROUPING |             CIDR             | IPS TOTAL  | IPS IN USE |     IPS FREE      |
+----------+------------------------------+------------+------------+-------------------+
| IP Pool  | 10.0.0.0/8                   | 1.6777e+07 | 3 (0%)     | 1.6777e+07 (100%) |
| Block    | 10.138.29.0/26               |         64 | 2 (3%)     | 62 (97%)          |
| Block    | 10.139.75.64/26              |         64 | 1 (2%)     | 63 (98%)          |
| IP Pool  | fd00:10:244::/48             | 1.2089e+24 | 1 (0%)     | 1.2089e+24 (100%) |
| Block    | fd00:10:244::3:d38a:1d00/122 |         64 | 1 (2%)     | 63 (98%)          |
| Block    | 192.168.0.64/26              |         64 | 2 (3%)     | 62 (97%)          |
+----------+------------------------------+------------+------------+-------------------+
"""

    held = cli("ipam", "show", "--ip", "10.138.29.0")
    assert (held.code, held.out) == (0, """\
IP 10.138.29.0 is in use
Handle ID: k8s-pod-network.web-api-1
Active Owner Attributes:
  namespace: web
  node: node1
  pod: api-1
  timestamp: 2026-03-01T12:00:00Z
""")
    tunnel = cli("ipam", "show", "--ip=10.139.75.64")
    assert tunnel.out == """\
IP 10.139.75.64 is in use
Handle ID: vxlan-tunnel-addr-node2
Active Owner Attributes:
  node: node2
  timestamp: 2026-03-01T12:00:00Z
  type: vxlanTunnelAddress
"""
    # IPv6 is printed in its canonical form, however it was typed.
    v6 = cli("ipam", "show", "--ip", "FD00:10:244:0::3:D38A:1D00")
    assert v6.out.splitlines()[:2] == [
        "IP fd00:10:244::3:d38a:1d00 is in use", "Handle ID: k8s-pod-network.web-api-1"]
    # An IPv4-mapped IPv6 address is the IPv4 address it maps, as Go's net.ParseIP reads it.
    assert cli("ipam", "show", "--ip", "::ffff:10.138.29.0").out.splitlines()[:2] == [
        "IP 10.138.29.0 is in use", "Handle ID: k8s-pod-network.web-api-1"]
    # An orphan block is still found without its pool.
    assert cli("ipam", "show", "--ip", str(legacy.ipv4[1].ip)).out.splitlines()[:2] == [
        "IP 192.168.0.65 is in use", "Handle ID: k8s-pod-network.legacy-db-0"]
    assert cli("ipam", "show", "--ip", "10.138.29.2").out == "10.138.29.2 is not assigned\n"
    assert cli("ipam", "show", "--ip", "172.16.0.1").out == "172.16.0.1 is not assigned\n"

    bad = cli("ipam", "show", "--ip", "10.0.0.256")
    assert (bad.code, bad.out) == (1, "")
    assert bad.err == "Error executing command: invalid IP address specified: 10.0.0.256\n"
    zoned = cli("ipam", "show", "--ip", "fd00::1%eth0")
    assert zoned.err == "Error executing command: invalid IP address specified: fd00::1%eth0\n"
    both = cli("ipam", "show", "--show-blocks", "--show-borrowed")
    assert both.code == 1 and "at most one of" in both.err

    # Nobody borrowed: the table is drawn empty.
    assert cli("ipam", "show", "--show-borrowed").out == """\
+----+----------------+-------+-------------+------+--------------+
| IP | BORROWING-NODE | BLOCK | BLOCK OWNER | TYPE | ALLOCATED-TO |
+----+----------------+-------+-------------+------+--------------+
+----+----------------+-------+-------------+------+--------------+
"""
    # Showing writes nothing.
    assert cli.stored() == before


async def test_show_borrowed_after_a_second_node_finds_every_block_taken(cli, store):
    # Four /30 blocks; node1 claims all of them and leaves two addresses free in the last.
    await add_pool(store, "tiny", "10.9.0.0/28", blockSize=30)
    allocator = ipam(store)
    await pod(allocator, "node1", "jobs", "batch", num4=14)
    # Strict affinity is off (the default), so the other nodes borrow from node1's block.
    api = await pod(allocator, "node2", "web", "api-2", num4=1)
    tunnel = await allocator.auto_assign("node3", handle_id=tunnel_handle("node3"), num4=1,
                                         use="Tunnel", attrs={"type": "vxlanTunnelAddress"})
    assert [str(i.ip) for i in api.ipv4 + tunnel.ipv4] == ["10.9.0.14", "10.9.0.15"]

    shown = cli("ipam", "show", "--show-borrowed")
    assert shown.code == 0, shown.err
    assert shown.out == """\
+-----------+----------------+--------------+-------------+--------------------+--------------+
|    IP     | BORROWING-NODE |    BLOCK     | BLOCK OWNER |        TYPE        | ALLOCATED-TO |
+-----------+----------------+--------------+-------------+--------------------+--------------+
| 10.9.0.14 | node2          | 10.9.0.12/30 | node1       | pod                | web/api-2    |
| 10.9.0.15 | node3          | 10.9.0.12/30 | node1       | vxlanTunnelAddress |              |
+-----------+----------------+--------------+-------------+--------------------+--------------+
"""
    assert cli("ipam", "show", "--show-blocks").out == """\
+----------+--------------+-----------+------------+----------+
| GROUPING |     CIDR     | IPS TOTAL | IPS IN USE | IPS FREE |
+----------+--------------+-----------+------------+----------+
| IP Pool  | 10.9.0.0/28  |        16 | 16 (100%)  | 0 (0%)   |
| Block    | 10.9.0.0/30  |         4 | 4 (100%)   | 0 (0%)   |
| Block    | 10.9.0.4/30  |         4 | 4 (100%)   | 0 (0%)   |
| Block    | 10.9.0.8/30  |         4 | 4 (100%)   | 0 (0%)   |
| Block    | 10.9.0.12/30 |         4 | 4 (100%)   | 0 (0%)   |
+----------+--------------+-----------+------------+----------+
"""


IPAM_CONFIG_KEY = "/percale/ipam/v2/config"


async def test_configure_strict_affinity_round_trip(cli, store):
    await add_pool(store, "default-ipv4-ippool", "10.0.0.0/16")
    defaults = cli("ipam", "show", "--show-configuration")
    assert defaults.code == 0, defaults.err
    assert defaults.out == """\
+--------------------+-------+
|      PROPERTY      | VALUE |
+--------------------+-------+
| StrictAffinity     | false |
| AutoAllocateBlocks | true  |
| MaxBlocksPerHost   |     0 |
| IPCooldownSeconds  |     0 |
+--------------------+-------+
"""
    before = cli.stored()
    on = cli("ipam", "configure", "--strictaffinity=true")
    assert (on.code, on.out, on.err) == (0, "Successfully set StrictAffinity to: true\n", "")
    after = cli.stored()
    # Only the IPAMConfig was written; the pool is untouched.
    assert set(after) - set(before) == {IPAM_CONFIG_KEY}
    assert {k: v for k, v in after.items() if k != IPAM_CONFIG_KEY} == before
    assert (await ipam(store).get_config()).strict_affinity is True
    assert cli("ipam", "show", "--show-configuration").out.splitlines()[3] == \
        "| StrictAffinity     | true  |"

    # Go's ParseBool spellings, as calicoctl takes them.
    off = cli("ipam", "configure", "--strictaffinity", "F")
    assert (off.code, off.out) == (0, "Successfully set StrictAffinity to: false\n")
    final = cli.stored()
    assert set(final) == set(after) and final[IPAM_CONFIG_KEY][0] > after[IPAM_CONFIG_KEY][0]
    assert {k: v for k, v in final.items() if k != IPAM_CONFIG_KEY} == before
    assert (await ipam(store).get_config()).strict_affinity is False

    unknown = cli("ipam", "configure", "--strictaffinity=maybe")
    assert (unknown.code, unknown.err) == (1, "Invalid value. Use true or false to set strictaffinity\n")
    # calicoctl's configure.go: every setting is optional, and one must be given.
    for nothing in ((), ("--strictaffinity", ""), ("--max-blocks-per-host=",)):
        missing = cli("ipam", "configure", *nothing)
        assert (missing.code, missing.out, missing.err) == (
            1, "", "at least one configuration option must be specified\n"), nothing
    assert cli.stored() == final


async def test_configure_max_blocks_per_host_and_ip_cooldown(cli, store):
    """calicoctl's --max-blocks-per-host (a number as Go's strconv.Atoi reads it), alone or with
    --strictaffinity, and --ip-cooldown-seconds; each set value reported in calicoctl's order."""
    refused = cli("ipam", "configure", "--max-blocks-per-host=4")
    assert (refused.code, refused.out) == (1, "")
    assert refused.err == (
        "Cannot set MaxBlocksPerHost to 4 in IPAMConfig 'default':\n"
        "  spec.maxBlocksPerHost: maxBlocksPerHost can only be set (above 0) when strictAffinity"
        " is true\nIPAMConfig was not changed.\n")
    both = cli("ipam", "configure", "--max-blocks-per-host", "+4", "--strictaffinity=true")
    assert (both.code, both.err) == (0, "")
    assert both.out == ("Successfully set StrictAffinity to: true\n"
                        "Successfully set MaxBlocksPerHost to: 4\n")
    config = await ipam(store).get_config()
    assert (config.strict_affinity, config.max_blocks_per_host) == (True, 4)

    before = cli.stored()
    for number in ("four", "4.0", " 4", "1_0", "9223372036854775808"):
        bad = cli("ipam", "configure", f"--max-blocks-per-host={number}")
        assert (bad.code, bad.err) == (1, "Invalid value for maxblockhost. Use a valid number\n")
    for seconds in ("-1", "1201"):
        bad = cli("ipam", "configure", "--ip-cooldown-seconds", seconds)
        assert bad.code == 1 and "'--ip-cooldown-seconds'" in bad.err, bad.err
    assert cli.stored() == before

    cooled = cli("ipam", "configure", "--ip-cooldown-seconds", "30", "--max-blocks-per-host=0")
    assert cooled.out == ("Successfully set MaxBlocksPerHost to: 0\n"
                          "Successfully set IPCooldownSeconds to: 30\n")
    assert cli("ipam", "show", "--show-configuration").out == """\
+--------------------+-------+
|      PROPERTY      | VALUE |
+--------------------+-------+
| StrictAffinity     | true  |
| AutoAllocateBlocks | true  |
| MaxBlocksPerHost   |     0 |
| IPCooldownSeconds  |    30 |
+--------------------+-------+
"""


async def test_configure_refuses_a_combination_ipamconfig_forbids(cli, store):
    await store.create(parse({
        "apiVersion": "percale.io/v1", "kind": "IPAMConfig", "metadata": {"name": "default"},
        "spec": {"strictAffinity": True, "maxBlocksPerHost": 4},
    }))
    before = cli.stored()
    refused = cli("ipam", "configure", "--strictaffinity=false")
    assert (refused.code, refused.out) == (1, "")
    assert refused.err == (
        "Cannot set StrictAffinity to false in IPAMConfig 'default':\n"
        "  spec.maxBlocksPerHost: maxBlocksPerHost can only be set (above 0) when strictAffinity is true\n"
        "IPAMConfig was not changed.\n"
    )
    assert cli.stored() == before
    assert cli("ipam", "show", "--show-configuration").out == """\
+--------------------+-------+
|      PROPERTY      | VALUE |
+--------------------+-------+
| StrictAffinity     | true  |
| AutoAllocateBlocks | true  |
| MaxBlocksPerHost   |     4 |
| IPCooldownSeconds  |     0 |
+--------------------+-------+
"""
    # Setting what is already set is fine.
    again = cli("ipam", "configure", "--strictaffinity=true")
    assert (again.code, again.out) == (0, "Successfully set StrictAffinity to: true\n")


async def test_reservations_are_shown_and_counted(cli, store, tmp_path):
    await add_pool(store, "pool1", "10.30.0.0/24", blockSize=29)
    reservation = tmp_path / "reservation.yaml"
    reservation.write_text("apiVersion: percale.io/v1\nkind: IPReservation\n"
                           "metadata: {name: gateways}\nspec:\n  reservedCIDRs: [10.30.0.0/30, 10.30.0.9]\n")
    created = cli("create", "-f", str(reservation))
    assert created.code == 0, created.err
    listed = cli("get", "ipreservations", "-o", "wide")
    assert listed.out.splitlines()[1:] == ["gateways   10.30.0.0/30,10.30.0.9", ""], listed.out
    got = await ipam(store).auto_assign("node1", handle_id="k8s-pod-network.a", num4=1)
    assert str(got.ipv4[0].ip) not in ("10.30.0.0", "10.30.0.1", "10.30.0.2", "10.30.0.3")

    shown = cli("ipam", "show")
    assert shown.code == 0, shown.err
    assert "| IPS RESERVED |" in shown.out.splitlines()[1]
    assert "| IP Pool  | 10.30.0.0/24 |       256 | 1 (0%)     | 5 (2%)       | 250 (98%)" in shown.out
