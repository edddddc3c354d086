"""percalectl apply/create/replace/delete/get against a real etcd, run as a user runs it."""

from __future__ import annotations

import json
import subprocess
import textwrap
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.cli

POOL = """\
apiVersion: percale.io/v1
kind: IPPool
metadata:
  name: {name}
spec:
  cidr: {cidr}
"""


def write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return str(path)


def test_apply_examples_then_get_wide_shows_calicos_columns(cli, examples):
    result = cli("apply", "-f", str(examples))
    assert result.code == 0, result.err
    assert result.out == "Successfully applied 7 resource(s)\n"

    pools = cli("get", "ippools", "-o", "wide")
    assert pools.code == 0
    assert pools.out == (
        "NAME                  CIDR               NAT     IPIPMODE   VXLANMODE     DISABLED   DISABLEBGPEXPORT   SELECTOR   ASSIGNMENTMODE\n"
        "default-ipv4-ippool   10.244.0.0/16      true    Never      CrossSubnet   false      false              all()      Automatic\n"
        "default-ipv6-ippool   fd00:10:244::/48   false   Never      Never         false      false              all()      Automatic\n"
    )
    assert cli("get", "ippools").out == (
        "NAME                  CIDR               SELECTOR\n"
        "default-ipv4-ippool   10.244.0.0/16      all()\n"
        "default-ipv6-ippool   fd00:10:244::/48   all()\n"
    )
    # calicoctl's columns, then the VXLAN tunnel address (empty: these nodes run no agent).
    assert cli("get", "nodes", "-o", "wide").out == (
        "NAME    ASN       IPV4          IPV6               VXLANTUNNEL\n"
        "node1   (64512)   10.0.0.1/24                      \n"
        "node2   (64512)   10.0.0.2/24   fd00:0:0:1::2/64   \n"
        "node3   64513     10.0.0.3/24                      \n"
    )
    assert cli("get", "bgppeers").out == (
        "NAME         PEERIP      NODE          ASN\n"
        "rack-a-tor   192.0.2.1   rack == 'a'   64600\n"
    )
    assert cli("get", "bgpconfig").out == (
        "NAME      LOGSEVERITY   MESHENABLED   ASNUMBER\n"
        "default   Info          true          64512\n"
    )


def test_yaml_and_json_output_apply_back_without_changing_anything(cli, examples):
    assert cli("apply", "-f", str(examples)).code == 0
    before = cli.stored()
    for fmt in ("yaml", "json"):
        listed = cli("get", "ippools", "-o", fmt)
        assert listed.code == 0
        doc = yaml.safe_load(listed.out)
        assert doc["kind"] == "IPPoolList" and len(doc["items"]) == 2
        again = cli("apply", "-f", "-", stdin=listed.out)
        assert again.code == 0, again.err
        assert again.out == "Successfully applied 2 'IPPool' resource(s)\n"
    # Not one key was rewritten: same values, same revisions.
    assert cli.stored() == before

    single = yaml.safe_load(cli("get", "ippool", "default-ipv4-ippool", "-o", "yaml").out)
    assert single["kind"] == "IPPool" and single["spec"]["blockSize"] == 26
    assert single["metadata"]["resourceVersion"]


def test_apply_updates_a_changed_resource_and_keeps_its_identity(cli, tmp_path):
    first = write(tmp_path, "p.yaml", POOL.format(name="p", cidr="10.1.0.0/16"))
    assert cli("apply", "-f", first).code == 0
    uid = json.loads(cli("get", "ippool", "p", "-o", "json").out)["metadata"]["uid"]
    changed = write(tmp_path, "p2.yaml", POOL.format(name="p", cidr="10.1.0.0/16") + "  natOutgoing: true\n")
    assert cli("apply", "-f", changed).out == "Successfully applied 1 'IPPool' resource(s)\n"
    got = json.loads(cli("get", "ippool", "p", "-o", "json").out)
    assert got["spec"]["natOutgoing"] is True and got["metadata"]["uid"] == uid


def test_stale_resource_version_is_a_conflict(cli, tmp_path):
    assert cli("apply", "-f", write(tmp_path, "p.yaml", POOL.format(name="p", cidr="10.1.0.0/16"))).code == 0
    old = yaml.safe_load(cli("get", "ippool", "p", "-o", "yaml").out)
    old["spec"]["natOutgoing"] = True
    assert cli("apply", "-f", "-", stdin=yaml.safe_dump(old)).code == 0
    old["spec"]["disabled"] = True  # still carries the first resourceVersion
    before = cli.stored()
    stale = cli("apply", "-f", "-", stdin=yaml.safe_dump(old))
    assert stale.code == 1
    assert "update conflict" in stale.err and "IPPool(p)" in stale.err
    assert cli.stored() == before


def test_create_replace_and_delete(cli, tmp_path):
    pool = write(tmp_path, "p.yaml", POOL.format(name="p", cidr="10.1.0.0/16"))
    assert cli("create", "-f", pool).out == "Successfully created 1 'IPPool' resource(s)\n"
    again = cli("create", "-f", pool)
    assert again.code == 1 and "resource already exists: IPPool(p)" in again.err
    assert cli("create", "-f", pool, "--skip-exists").code == 0

    nat = write(tmp_path, "nat.yaml", POOL.format(name="p", cidr="10.1.0.0/16") + "  natOutgoing: true\n")
    assert cli("replace", "-f", nat).out == "Successfully replaced 1 'IPPool' resource(s)\n"
    missing = cli("replace", "-f", write(tmp_path, "q.yaml", POOL.format(name="q", cidr="10.2.0.0/16")))
    assert missing.code == 1 and "resource does not exist: IPPool(q)" in missing.err

    assert cli("delete", "ippool", "p").out == "Successfully deleted 1 'IPPool' resource(s)\n"
    gone = cli("delete", "ippool", "p")
    assert gone.code == 1 and "resource does not exist: IPPool(p)" in gone.err
    assert cli("delete", "ippool", "p", "--skip-not-exists").code == 0
    assert cli("get", "ippools").out == "NAME   CIDR   SELECTOR\n"

    assert cli("apply", "-f", pool).code == 0
    assert cli("delete", "-f", pool).out == "Successfully deleted 1 'IPPool' resource(s)\n"
    assert cli.stored() == {}


def test_immutable_pool_fields_cannot_change(cli, tmp_path):
    assert cli("apply", "-f", write(tmp_path, "p.yaml", POOL.format(name="p", cidr="10.1.0.0/16"))).code == 0
    before = cli.stored()
    moved = cli("apply", "-f", write(tmp_path, "p2.yaml", POOL.format(name="p", cidr="10.2.0.0/16")))
    assert moved.code == 1
    assert "spec.cidr: a pool's CIDR cannot be changed" in moved.err
    resized = cli("apply", "-f", write(
        tmp_path, "p3.yaml", POOL.format(name="p", cidr="10.1.0.0/16") + "  blockSize: 28\n"))
    assert resized.code == 1 and "spec.blockSize" in resized.err
    assert cli.stored() == before


BGP_FILTER = """\
apiVersion: percale.io/v1
kind: BGPFilter
metadata:
  name: edge
spec:
  exportV4:
  - {action: Accept, cidr: 10.244.0.0/16, matchOperator: In, prefixLength: {max: 26}}
  - {action: Reject}
  importV6:
  - {action: Reject, cidr: 'fd00::/8', matchOperator: NotIn}
"""


def test_bgpfilters_print_calicoctls_rule_counts_and_apply_back(cli, tmp_path):
    assert cli("apply", "-f", write(tmp_path, "f.yaml", BGP_FILTER)).code == 0
    table = ("NAME   NUMEXPORTV4   NUMIMPORTV4   NUMEXPORTV6   NUMIMPORTV6\n"
             "edge   2             0             0             1\n")
    assert cli("get", "bgpfilters").out == table
    assert cli("get", "bgpf", "-o", "wide").out == table
    before = cli.stored()
    listed = cli("get", "bgpfilter", "edge", "-o", "yaml")
    assert cli("apply", "-f", "-", stdin=listed.out).code == 0
    assert cli.stored() == before
    # Refused by name, with the reason, as percalectl reports any invalid field.
    priority = cli("apply", "-f", write(
        tmp_path, "p.yaml", BGP_FILTER.replace("{action: Reject}", "{action: Reject, priority: 512}")))
    assert priority.code == 1
    assert "spec.exportV4.1.priority: priority is not supported" in priority.err


def test_namespaced_endpoints(cli, tmp_path):
    wep = """\
    apiVersion: percale.io/v1
    kind: WorkloadEndpoint
    metadata: {{name: node1-k8s-{pod}-eth0, namespace: {ns}}}
    spec: {{node: node1, orchestrator: k8s, pod: {pod}, endpoint: eth0,
           ipNetworks: [10.244.0.{n}/32], interfaceName: cali{n}}}
    """
    docs = "---\n".join(textwrap.dedent(wep.format(pod=f"web{n}", ns=ns, n=n))
                        for n, ns in [(1, "default"), (2, "shop")])
    assert cli("apply", "-f", write(tmp_path, "weps.yaml", docs)).code == 0
    assert "web2" not in cli("get", "workloadendpoints").out
    assert "web2" in cli("get", "wep", "-n", "shop").out
    every = cli("get", "weps", "-A").out.splitlines()
    assert every[0].split() == ["NAMESPACE", "WORKLOAD", "NODE", "NETWORKS", "INTERFACE"]
    assert len(every) == 3


def test_skip_exists_leaves_a_differing_stored_resource_alone_and_creates_the_rest(cli, tmp_path):
    assert cli("apply", "-f", write(tmp_path, "p.yaml", POOL.format(name="p", cidr="10.1.0.0/16"))).code == 0
    both = write(tmp_path, "both.yaml", POOL.format(name="p", cidr="10.9.0.0/16") + "---\n"
                 + POOL.format(name="q", cidr="10.2.0.0/16"))
    done = cli("create", "-f", both, "--skip-exists")
    assert done.code == 0, done.err
    assert cli("get", "ippools").out.split("\n")[1:3] == [
        "p      10.1.0.0/16   all()", "q      10.2.0.0/16   all()"]


def test_ipamconfig_has_one_name(cli):
    assert cli("ipam", "configure", "--strictaffinity=true").code == 0
    for verb in ("get", "delete"):
        done = cli(verb, "ipamconfig", "whatever")
        assert done.code == 1 and "resource does not exist: IPAMConfig(whatever)" in done.err, done
    assert "| StrictAffinity     | true  |" in cli("ipam", "show", "--show-configuration").out


def test_deleting_a_stored_value_that_does_not_read_succeeds(cli):
    path = "/percale/resources/v1/percale.io/bgppeers/corrupt"
    subprocess.run(["etcdctl", "--endpoints", cli.endpoint, "put", path, '{"kind":"BGPPeer"}'],
                   env={"ETCDCTL_API": "3", "PATH": "/usr/bin:/bin"}, check=True, capture_output=True)
    done = cli("delete", "bgppeer", "corrupt")
    assert (done.code, done.out) == (0, "Successfully deleted 1 'BGPPeer' resource(s)\n"), done.err
    assert cli.stored() == {}
    # Stored under a name the model refuses (by hand, by an older version): it goes too.
    odd = "/percale/resources/v1/percale.io/bgppeers/Odd_Name"
    subprocess.run(["etcdctl", "--endpoints", cli.endpoint, "put", odd, '{"kind":"BGPPeer"}'],
                   env={"ETCDCTL_API": "3", "PATH": "/usr/bin:/bin"}, check=True, capture_output=True)
    done = cli("delete", "bgppeer", "Odd_Name")
    assert done.code == 0, done.err
    assert cli.stored() == {}


def test_a_node_without_bgp_has_no_asn(cli, tmp_path):
    node = write(tmp_path, "n.yaml", "apiVersion: percale.io/v1\nkind: Node\nmetadata:\n"
                 "  name: vxlan-only\nspec: {}\n")
    assert cli("apply", "-f", node).code == 0
    assert cli("get", "nodes", "-o", "wide").out.split("\n")[1].split() == ["vxlan-only"]


def test_the_status_socket_variable_does_not_refuse_node(cli):
    """PERCALE_STATUS_SOCKET is the local mode's default: --node still reads the datastore."""
    done = cli("node", "status", "--node", "node9", env={"PERCALE_STATUS_SOCKET": "/tmp/none.sock"})
    assert done.code == 1 and "No status for node node9" in done.out, done
    both = cli("node", "status", "--node", "node9", "--status-socket", "/tmp/none.sock")
    assert both.code == 1 and "Give one or the other" in both.err


def test_get_errors(cli):
    unknown = cli("get", "widgets")
    assert unknown.code == 1 and "resource type 'widgets' is not supported" in unknown.err
    missing = cli("get", "ippool", "nope")
    assert missing.code == 1 and "resource does not exist: IPPool(nope)" in missing.err
    bad_output = cli("get", "ippools", "-o", "xml")
    assert bad_output.code == 1 and "--output" in bad_output.err


def test_version(cli):
    assert cli("version").out.startswith("Client Version:    v")


async def test_every_kind_prints_as_a_table(cli):
    """IPAM state and status kinds are written by percale itself; percalectl shows them all."""
    from percale.datastore.etcd import EtcdDatastore
    from percale.api import KINDS, parse
    from percale.api.ipam import IPAMBlock

    store = EtcdDatastore([cli.endpoint])
    api = {"apiVersion": "percale.io/v1"}
    for doc in [
        {"kind": "BlockAffinity", "metadata": {"name": "node1-10.0.0.0-26"},
         "spec": {"state": "confirmed", "node": "node1", "cidr": "10.0.0.0/26"}},
        {"kind": "IPAMHandle", "metadata": {"name": "k8s-pod-network.c1"},
         "spec": {"handleID": "k8s-pod-network.c1", "block": {"10.0.0.0/26": 1}}},
        {"kind": "IPAMConfig", "metadata": {"name": "default"}, "spec": {}},
        {"kind": "NodeStatus", "metadata": {"name": "node1"},
         "spec": {"node": "node1", "classes": ["BGP"], "updatePeriodSeconds": 10}},
    ]:
        await store.create(parse({**api, **doc}))
    await store.create(IPAMBlock.empty("10.0.0.0/26", affinity="host:node1"))
    await store.close()

    for kind in ("ipamblocks", "blockaffinities", "ipamhandles", "ipamconfigs", "nodestatuses"):
        for output in ("ps", "wide"):
            result = cli("get", kind, "-o", output)
            assert result.code == 0, result.err
            assert len(result.out.splitlines()) == 2, result.out
    wide = cli("get", "ipamblocks", "-o", "wide").out.splitlines()
    assert wide[1].split() == ["10.0.0.0-26", "10.0.0.0/26", "host:node1", "0", "64"]
    assert cli("get", "blockaffinities").out.splitlines()[1].split() == [
        "node1-10.0.0.0-26", "node1", "10.0.0.0/26", "confirmed"]
    assert set(k for k in KINDS) == {
        "IPPool", "IPAMConfig", "IPReservation", "IPAMBlock", "BlockAffinity", "IPAMHandle",
        "BGPConfiguration", "BGPPeer", "BGPFilter", "Node", "WorkloadEndpoint", "NodeStatus", "NetworkPolicy",
        "GlobalNetworkPolicy", "Profile"}
