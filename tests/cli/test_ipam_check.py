"""percalectl ipam check / release against a real etcd, run as a user runs them."""

from __future__ import annotations

import json
import subprocess

import pytest

from percale.datastore import Key, layout
from percale.datastore.etcd import EtcdDatastore
from percale.ipam.allocator import IPAM, tunnel_handle
from tests.helpers.ipam_pods import add_pod, allocate, endpoint, node
from tests.helpers.ipam_world import add_pool

pytestmark = pytest.mark.cli


@pytest.fixture
async def ipam(cli):
    store = EtcdDatastore([cli.endpoint])
    await add_pool(store, "pool1", "10.20.0.0/16")
    for name in ("node1", "node2"):
        await store.create(node(name))
    yield IPAM(store)
    await store.close()


async def add_tunnel(ipam: IPAM, name: str) -> str:
    got = await ipam.auto_assign(name, handle_id=tunnel_handle(name), num4=1, use="Tunnel",
                                 attrs={"type": "vxlanTunnelAddress"})
    ip = str(got.ipv4[0].ip)
    current = await ipam.store.get(Key("Node", name))
    await ipam.store.update(node(name, ipv4VXLANTunnelAddr=ip), revision=current.revision)
    return ip


async def crashed_handle(ipam: IPAM, handle: str, block: str) -> None:
    """What a CNI ADD killed between its handle write and its block write leaves behind."""
    await ipam._add_to_handle(handle, block, 1)


async def block_of(ipam: IPAM, ip: str) -> str:
    return (await ipam.get_allocation(ip)).block


async def messy_cluster(ipam: IPAM) -> dict[str, str]:
    """One of each problem, with healthy pods and a tunnel address around them."""
    await add_tunnel(ipam, "node1")
    await add_pod(ipam, "node1", "web")
    await add_pod(ipam, "node1", "api")
    await add_pod(ipam, "node2", "db")
    [leaked] = await allocate(ipam, "node2", "crashed")
    await crashed_handle(ipam, "k8s-pod-network.0ddba11", await block_of(ipam, leaked))
    await ipam.store.create(endpoint("node2", "ghost", ["10.20.255.250"]))
    await ipam.store.create(endpoint("node2", "outside", ["192.168.1.1"]))
    return {"leaked": leaked}


async def test_check_prints_calicos_lines_and_counts(cli, ipam):
    await messy_cluster(ipam)
    result = cli("ipam", "check")
    assert result.code == 0, result.err
    assert result.out == """\
Checking IPAM for inconsistencies...

Loading all IPAM blocks...
Found 2 IPAM blocks.
IPAM blocks record 5 allocations.

Loading all IPAM pools...
  10.20.0.0/16
Found 1 active IP pools.

Loading all nodes.
Found 1 node tunnel IPs.

Loading all service load balancer IPs.
percale has no LoadBalancer IP controller, skipping service check

Loading all workload endpoints.
Found 5 workload IPs.
Workloads and nodes are using 6 IPs.

Loading all handles
Looking for top (up to 20) nodes by allocations...
  node1 has 3 allocations
  node2 has 2 allocations
Node with most allocations has 3; median is 2

Scanning for IPs that are allocated but not actually in use...
Found 1 IPs that are allocated in IPAM but not actually in use.
Scanning for IPs that are in use by a workload or node but not allocated in IPAM...
Found 1 in-use IPs that are not in active IP pools.
Found 1 in-use IPs that are in active IP pools but have no corresponding IPAM allocation.

Scanning for IPAM handles with no matching IPs...
Found 1 handles with no matching IPs (and 5 handles with matches).
Found 0 handles whose counts overstate the IPs in their blocks.
Scanning for IPs with missing handle...
Found 0 handles mentioned in blocks with no matching handle resource.
Check complete; found 4 problems.
"""


async def test_show_problem_ips_names_each_problem(cli, ipam):
    seen = await messy_cluster(ipam)
    handle = (await ipam.get_allocation(seen["leaked"])).handle_id
    out = cli("ipam", "check", "--show-problem-ips").out.splitlines()
    [leak_line] = [line for line in out if "leaked; attrs" in line]
    assert leak_line.startswith(f"  {seen['leaked']} leaked; attrs Main:{handle} Extra:namespace=default,"
                                "node=node2,pod=crashed,timestamp=")
    assert "  192.168.1.1 in use by Workload(default/node2-k8s-outside-eth0) is not in any active IP pool." in out
    assert ("  10.20.255.250 in use by Workload(default/node2-k8s-ghost-eth0) and in active IPAM pool "
            "but has no IPAM allocation.") in out
    assert "  k8s-pod-network.0ddba11 doesn't have any active IPs." in out
    everything = cli("ipam", "check", "--show-all-ips").out.splitlines()
    assert any(line.startswith(" IPAM block 10.20.") and line.endswith("affinity=host:node1:")
               for line in everything)
    assert sum(" allocated; attrs Main:" in line for line in everything) == 5
    assert sum(" belongs to Workload(" in line for line in everything) == 5
    assert sum(" belongs to Node(node1)" in line for line in everything) == 1


async def test_the_report_lists_every_allocation_with_its_sequence_number(cli, ipam, tmp_path):
    seen = await messy_cluster(ipam)
    report_file = tmp_path / "report.json"
    assert cli("ipam", "check", "-o", str(report_file)).code == 0
    report = json.loads(report_file.read_text())
    assert report["version"] == "v0.1.0" and report["generatedAt"].endswith("Z")
    assert len(report["allocations"]) == 5
    leaked = await ipam.get_allocation(seen["leaked"])
    assert report["allocations"][seen["leaked"]] == [{
        "ip": seen["leaked"], "block": leaked.block, "handle": leaked.handle_id,
        "sequenceNumber": leaked.sequence_number, "pod": "crashed", "namespace": "default",
        "node": "node2", "creationTimestamp": leaked.attributes["timestamp"],
        "inUse": False, "borrowed": False, "owners": [],
    }]
    in_use = [a for allocs in report["allocations"].values() for a in allocs if a["inUse"]]
    assert len(in_use) == 4
    [tunnel] = [a for a in in_use if a.get("type") == "vxlanTunnelAddress"]
    assert tunnel["owners"] == ["Node(node1)"] and tunnel["handle"] == "vxlan-tunnel-addr-node1"
    [handle] = report["leakedHandles"]
    assert handle["ID"] == "k8s-pod-network.0ddba11" and handle["inBlocks"] == {}
    assert handle["block"] == {leaked.block: 1} and handle["Revision"] and handle["UID"]
    assert report["overstatedHandles"] == []


async def test_release_one_address(cli, ipam):
    [ip] = await allocate(ipam, "node1", "p")
    result = cli("ipam", "release", "--ip", ip)
    assert (result.code, result.out) == (0, f"Successfully released IP address {ip}\n")
    again = cli("ipam", "release", "--ip", ip)
    assert (again.code, again.out, again.err) == (1, "", f"IP address {ip} is not assigned\n")
    bad = cli("ipam", "release", "--ip", "10.20.0.300")
    assert bad.code == 1 and "Invalid IP address specified: '10.20.0.300'" in bad.err
    # A zone, which Go's ParseIP (calicoctl) refuses: it was released as the address without it.
    zoned = cli("ipam", "release", "--ip", "fd00::1%eth0")
    assert zoned.code == 1 and "Invalid IP address specified: 'fd00::1%eth0'" in zoned.err
    neither = cli("ipam", "release")
    assert neither.code == 1 and "Give either --ip ADDR or --from-report REPORT" in neither.err


async def test_release_from_report_leaves_a_consistent_store(cli, ipam, tmp_path):
    await add_tunnel(ipam, "node1")
    await add_pod(ipam, "node1", "web")
    leaked = [(await allocate(ipam, "node2", f"crashed{i}"))[0] for i in range(3)]
    await crashed_handle(ipam, "k8s-pod-network.0ddba11", await block_of(ipam, leaked[0]))
    # A pod that got a second address under its handle and leaked only that one.
    two = await allocate(ipam, "node1", "twice", num4=2, container_id="twice")
    await ipam.store.create(endpoint("node1", "twice", two[:1]))
    await crashed_handle(ipam, "k8s-pod-network.twice", await block_of(ipam, two[0]))
    report_file = tmp_path / "report.json"
    checked = cli("ipam", "check", "-o", str(report_file))
    assert "Check complete; found 6 problems." in checked.out  # 4 addresses, 2 handles
    assert "Found 1 handles whose counts overstate the IPs in their blocks." in checked.out

    result = cli("ipam", "release", "--from-report", str(report_file))
    assert result.code == 0, result.err
    assert result.out == """\
Releasing 4 old IPs...
Released 4 IPs successfully
Deleting 2 handles...
Key: '.' = Deleted OK; 'c' = count corrected, handle kept (it still has IPs); 'x' = skip, handle missing/changed.
.c
Released 1 handles; 0 skipped; 0 errors.
Corrected the counts of 1 handles that still hold IPs.
"""
    assert cli("ipam", "check").out.endswith("Check complete; found 0 problems.\n")
    assert [await ipam.get_allocation(ip) for ip in leaked] == [None] * 3
    assert await ipam.get_allocation(two[0]) is not None
    assert (await ipam.store.get(Key("IPAMHandle", "k8s-pod-network.twice"))).value.spec.block == \
        {await block_of(ipam, two[0]): 1}

    # The same report again: everything it names is gone or changed.
    again = cli("ipam", "release", "--from-report", str(report_file))
    assert again.out == """\
Releasing 4 old IPs...
Released 0 IPs successfully
4 addresses marked as leaked in the report had already been cleaned up.
Deleting 2 handles...
Key: '.' = Deleted OK; 'c' = count corrected, handle kept (it still has IPs); 'x' = skip, handle missing/changed.
xx
Released 0 handles; 2 skipped; 0 errors.
"""


async def test_release_from_report_spares_what_changed_since_the_report(cli, ipam, tmp_path):
    reused, cleaned, adopted, leaked = [(await allocate(ipam, "node1", f"p{i}"))[0] for i in range(4)]
    await crashed_handle(ipam, "k8s-pod-network.inflight", await block_of(ipam, reused))
    report_file = tmp_path / "report.json"
    cli("ipam", "check", "-o", str(report_file))
    # After the report: one address freed and handed to a new pod, one cleaned up by a late
    # CNI DEL, one whose endpoint finally got written; a handle that moved on.
    await ipam.release_ips([reused, cleaned])
    await ipam.assign_ip("node2", reused, handle_id="k8s-pod-network.newpod", attrs={"pod": "new"})
    await ipam.store.create(endpoint("node1", "p2", [adopted]))
    await crashed_handle(ipam, "k8s-pod-network.inflight", await block_of(ipam, reused))

    result = cli("ipam", "release", "--from-report", str(report_file))
    assert result.out == """\
Releasing 4 old IPs...
Released 1 IPs successfully
1 addresses marked as leaked in the report had already been cleaned up.
2 addresses marked as leaked in the report are in use again or were re-allocated since; they were left alone.
Deleting 1 handles...
Key: '.' = Deleted OK; 'x' = skip, handle missing/changed.
x
Released 0 handles; 1 skipped; 0 errors.
"""
    assert await ipam.get_allocation(leaked) is None
    assert (await ipam.get_allocation(reused)).handle_id == "k8s-pod-network.newpod"
    assert await ipam.get_allocation(adopted) is not None


async def test_a_clean_report_has_nothing_to_release(cli, ipam, tmp_path):
    await add_pod(ipam, "node1", "web")
    report_file = tmp_path / "report.json"
    assert "found 0 problems" in cli("ipam", "check", "-o", str(report_file)).out
    result = cli("ipam", "release", "--from-report", str(report_file))
    assert result.out == ("Report didn't contain any leaked IPs to clean up.\n"
                          "Report didn't contain any handles to clean up.\n")


async def test_only_leaks_common_to_every_report_are_released(cli, ipam, tmp_path):
    early = (await allocate(ipam, "node1", "early"))[0]
    cli("ipam", "check", "-o", str(tmp_path / "first.json"))
    late = (await allocate(ipam, "node1", "late"))[0]  # maybe just being set up
    cli("ipam", "check", "-o", str(tmp_path / "second.json"))
    result = cli("ipam", "release", "--from-report", str(tmp_path / "first.json"),
                 "--from-report", str(tmp_path / "second.json"))
    assert result.out.startswith("Releasing 1 old IPs...\nReleased 1 IPs successfully\n")
    assert await ipam.get_allocation(early) is None
    assert await ipam.get_allocation(late) is not None


@pytest.mark.parametrize("content, message", [
    (None, "Failed to read the report {path}: No such file or directory"),
    ("{not json", "The report {path} is not valid JSON: Expecting property name enclosed in double quotes (line 1, column 2)"),
    ('{"version": "v0.1.0"}', "The report {path} is not a percalectl ipam check report: allocations: Field required"),
    ('{"version": "v0.1.0", "allocations": {"10.0.0.1": [{"ip": "10.0.0.1"}]}}',
     "The report {path} is not a percalectl ipam check report: allocations.10.0.0.1.0.inUse: Field required"),
    # Each was a traceback: a report saved again as UTF-16, and JSON nested past Python's stack.
    ('{"version": "v0.1.0"}'.encode("utf-16"),
     "The report {path} is not UTF-8 text, as `percalectl ipam check -o` writes it: byte 0 cannot be read"),
    ("[" * 100000, "The report {path} nests too deeply to be a report"),
])
def test_a_bad_report_is_refused_with_a_reason(cli, tmp_path, content, message):
    path = tmp_path / "report.json"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    result = cli("ipam", "release", "--from-report", str(path))
    assert (result.code, result.out) == (1, "")
    assert result.err == message.format(path=path) + "\n"


def test_a_report_that_cannot_be_written_is_an_error(cli, tmp_path):
    result = cli("ipam", "check", "-o", str(tmp_path / "missing-dir" / "report.json"))
    assert result.code == 1
    assert result.err.endswith(f"Failed to write the report to {tmp_path / 'missing-dir' / 'report.json'}: "
                               "No such file or directory\n")


async def test_a_block_that_cannot_be_read_is_named_and_the_rest_still_checked(cli, ipam):
    # A block written by hand that the model refuses: check names it as a problem of its own
    # and still checks every other block; show leaves it out of its figures and says so.
    await add_pod(ipam, "node1", "web")
    [leaked] = await allocate(ipam, "node2", "crashed")
    bad = Key("IPAMBlock", "10.20.99.0-26")
    subprocess.run(["etcdctl", "--endpoints", cli.endpoint, "put", layout.path(bad), json.dumps(
        {"apiVersion": "percale.io/v1", "kind": "IPAMBlock", "metadata": {"name": bad.name},
         "spec": {"cidr": "10.20.99.0/26", "allocations": "garbage"}})],
        env={"ETCDCTL_API": "3", "PATH": "/usr/bin:/bin"}, check=True, capture_output=True)
    # A workload listing an address in the unreadable block is not judged "unallocated".
    await ipam.store.create(endpoint("node2", "inside", ["10.20.99.7"]))

    done = cli("ipam", "check", "--show-problem-ips")
    assert done.code == 0, done.err
    assert "  IPAM block 10.20.99.0/26 cannot be read, skipping it: " in done.out
    assert f"  {leaked} leaked;" in done.out
    assert "Found 0 in-use IPs that are in active IP pools but have no corresponding" in done.out
    assert "Check complete; found 2 problems." in done.out  # the leak and the block

    shown = cli("ipam", "show", "--show-blocks")
    assert shown.code == 0, shown.err
    assert "IPAMBlock(10.20.99.0-26)" in shown.err and "left out of these figures" in shown.err
    assert "10.20.99.0/26" not in shown.out


async def test_a_report_from_another_version_is_refused_unless_forced(cli, ipam, tmp_path):
    [leaked] = await allocate(ipam, "node2", "crashed")
    report_file = tmp_path / "report.json"
    assert cli("ipam", "check", "-o", str(report_file)).code == 0
    document = json.loads(report_file.read_text())
    document["version"] = "v0.0.1"
    report_file.write_text(json.dumps(document))

    refused = cli("ipam", "release", "--from-report", str(report_file))
    assert refused.code == 1
    assert "produced by another version (v0.0.1) of percalectl" in refused.err
    assert "Refusing to release" in refused.err
    assert await ipam.get_allocation(leaked) is not None

    forced = cli("ipam", "release", "--from-report", str(report_file), "--force")
    assert forced.code == 0, forced.err
    assert "WARNING: the report" in forced.out and "Released 1 IPs successfully" in forced.out
    assert await ipam.get_allocation(leaked) is None
