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
        "\n"  # calicoctl's blank line after each table
    )
    assert cli("get", "ippools").out == (
        "NAME                  CIDR               SELECTOR\n"
        "default-ipv4-ippool   10.244.0.0/16      all()\n"
        "default-ipv6-ippool   fd00:10:244::/48   all()\n\n"
    )
    # calicoctl's columns, then the VXLAN tunnel address (empty: these nodes run no agent).
    assert cli("get", "nodes", "-o", "wide").out == (
        "NAME    ASN       IPV4          IPV6               VXLANTUNNEL\n"
        "node1   (64512)   10.0.0.1/24                      \n"
        "node2   (64512)   10.0.0.2/24   fd00:0:0:1::2/64   \n"
        "node3   64513     10.0.0.3/24                      \n\n"
    )
    assert cli("get", "bgppeers").out == (
        "NAME         PEERIP      NODE          ASN\n"
        "rack-a-tor   192.0.2.1   rack == 'a'   64600\n\n"
    )
    assert cli("get", "bgpconfig").out == (
        "NAME      LOGSEVERITY   MESHENABLED   ASNUMBER\n"
        "default   Info          true          64512\n\n"
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
    assert cli("get", "ippools").out == "NAME   CIDR   SELECTOR\n\n"

    assert cli("apply", "-f", pool).code == 0
    assert cli("delete", "-f", pool).out == "Successfully deleted 1 'IPPool' resource(s)\n"
    assert cli.stored() == {}


def _pool(tmp_path: Path, name: str, cidr: str, extra: str = "") -> str:
    return write(tmp_path, f"{name}.yaml", POOL.format(name=name, cidr=cidr) + extra)


def test_delete_goes_on_past_what_does_not_exist_and_names_each(cli, tmp_path):
    """As calicoctl's delete: every resource that exists is deleted, each that does not is
    named on stderr, exit 1. A missing name used to leave the names after it standing."""
    for n in (1, 2, 3):
        assert cli("create", "-f", _pool(tmp_path, f"del{n}", f"10.13{n}.0.0/16")).code == 0
    missing = "Failed to delete 'IPPool' resource: resource does not exist: IPPool({})\n"
    named = cli("delete", "ippool", "gone", "del1", "lost")
    assert (named.code, named.out) == (1, "Successfully deleted 1 'IPPool' resource(s)\n")
    assert named.err == missing.format("gone") + missing.format("lost")
    none = cli("delete", "ippool", "gone")
    assert (none.code, none.out, none.err) == (1, "", missing.format("gone"))

    batch = write(tmp_path, "batch.yaml", POOL.format(name="gone", cidr="10.139.0.0/16")
                  + "---\n" + POOL.format(name="del2", cidr="10.132.0.0/16"))
    by_file = cli("delete", "-f", batch)
    assert (by_file.code, by_file.out) == (1, "Successfully deleted 1 'IPPool' resource(s)\n")
    assert by_file.err == missing.format("gone")
    assert cli("get", "ippools").out.splitlines()[1:] == ["del3   10.133.0.0/16   all()", ""]

    # Of more than one kind, calicoctl names no kind.
    mixed = write(tmp_path, "mixed.yaml", POOL.format(name="del3", cidr="10.133.0.0/16")
                  + "---\napiVersion: percale.io/v1\nkind: BGPPeer\nmetadata: {name: nobody}\n"
                  "spec: {peerIP: 192.0.2.1, asNumber: 65001}\n")
    done = cli("delete", "-f", mixed)
    assert (done.code, done.out) == (1, "Successfully deleted 1 resource(s)\n")
    assert done.err == "Failed to delete resource: resource does not exist: BGPPeer(nobody)\n"
    skipped = cli("delete", "-f", mixed, "--skip-not-exists")
    assert (skipped.code, skipped.out, skipped.err) == (
        0, "Successfully deleted 2 resource(s)\n", "")
    assert cli.stored() == {}


def _etcdctl(cli, *args: str) -> None:
    subprocess.run(["etcdctl", "--endpoints", cli.endpoint, *args],
                   env={"ETCDCTL_API": "3", "PATH": "/usr/bin:/bin"}, check=True,
                   capture_output=True)


POOLS_KEY = "/percale/resources/v1/percale.io/ippools/"
CORRUPT_POOL = ('{"apiVersion":"percale.io/v1","kind":"IPPool","metadata":{"name":"corrupt"},'
                '"spec":{"cidr":"10.99.0.0/16","blockSize":99}}')


def test_a_pool_that_cannot_be_read_blocks_no_other_and_can_be_deleted(cli, tmp_path):
    """blockSize 99, as kubectl on the Kubernetes datastore or a hand edit can store it: every
    pool write and `get ippools` failed on it, and `delete ippool corrupt` could not delete it."""
    _etcdctl(cli, "put", POOLS_KEY + "corrupt", CORRUPT_POOL)
    unreadable = "IPPool(corrupt) (revision "
    created = cli("create", "-f", _pool(tmp_path, "p", "10.97.0.0/16"))
    assert (created.code, created.out) == (0, "Successfully created 1 'IPPool' resource(s)\n")
    assert created.err.startswith(
        f"warning: left out of the IPPool overlap check: {unreadable}"), created.err
    assert "spec.blockSize: 99 is outside 20-32" in created.err and created.err.count("\n") == 1
    listed = cli("get", "ippools")
    assert (listed.code, listed.out) == (
        0, "NAME   CIDR           SELECTOR\np      10.97.0.0/16   all()\n\n")
    assert listed.err.startswith(f"warning: left out of this list: {unreadable}")
    # Asked for by name, it is an error still.
    assert cli("get", "ippool", "corrupt").code == 1

    deleted = cli("delete", "ippool", "corrupt")
    assert (deleted.code, deleted.out) == (
        0, "Successfully deleted 1 'IPPool' resource(s)\n"), deleted.err
    assert list(cli.stored()) == [POOLS_KEY + "p"]
    _etcdctl(cli, "put", POOLS_KEY + "corrupt", CORRUPT_POOL)
    skipping = cli("delete", "ippool", "corrupt", "--skip-not-exists")
    assert skipping.code == 0, skipping.err
    assert list(cli.stored()) == [POOLS_KEY + "p"]


def test_a_pool_that_cannot_be_read_stops_no_ipam_command(cli, tmp_path):
    """`ipam show` (every form) and `ipam release --ip` failed on one unreadable pool, where
    `get ippools` leaves it out with a warning."""
    assert cli("create", "-f", _pool(tmp_path, "p", "10.97.0.0/16")).code == 0
    _etcdctl(cli, "put", POOLS_KEY + "corrupt", CORRUPT_POOL)
    for command in (("ipam", "show"), ("ipam", "show", "--show-blocks"),
                    ("ipam", "show", "--ip", "10.97.0.1")):
        shown = cli(*command)
        assert shown.code == 0, (command, shown.err)
        assert "IPPool(corrupt)" in shown.err, (command, shown.err)
    assert "10.97.0.0/16" in cli("ipam", "show").out
    released = cli("ipam", "release", "--ip", "10.97.0.1")
    assert "is not assigned" in released.out + released.err and "Traceback" not in released.err


def test_a_stored_pool_that_overlaps_another_can_still_be_updated(cli, tmp_path):
    """Written past percalectl (kubectl, etcdctl, a migration), two overlapping pools refused
    every update, so neither could be disabled. Calico judges overlap on create only."""
    assert cli("create", "-f", _pool(tmp_path, "ov-a", "10.120.0.0/16")).code == 0
    _etcdctl(cli, "put", POOLS_KEY + "ov-b",
             '{"apiVersion":"percale.io/v1","kind":"IPPool","metadata":{"name":"ov-b"},'
             '"spec":{"cidr":"10.120.0.0/24"}}')
    disable = _pool(tmp_path, "ov-b", "10.120.0.0/24", "  disabled: true\n")
    for verb in ("apply", "replace"):
        done = cli(verb, "-f", disable)
        assert done.code == 0, done.err
    shown = yaml.safe_load(cli("get", "ippool", "ov-b", "-o", "yaml").out)
    assert shown["spec"]["disabled"] is True
    new = cli("create", "-f", _pool(tmp_path, "ov-c", "10.120.1.0/24"))
    assert new.code == 1 and "overlaps IPPool 'ov-a' (10.120.0.0/16)" in new.err


def test_a_load_balancer_pool_cannot_be_made_a_workload_pool(cli, tmp_path):
    assert cli("create", "-f", _pool(
        tmp_path, "lbp", "10.150.0.0/16", "  allowedUses: [LoadBalancer]\n")).code == 0
    before = cli.stored()
    changed = cli("apply", "-f", _pool(
        tmp_path, "lbp", "10.150.0.0/16", "  allowedUses: [Workload, Tunnel]\n"))
    assert changed.code == 1
    assert ("(IPPool 'lbp'): spec.allowedUses: IPPool allowed use cannot be changed from "
            "LoadBalancer to Workload or Tunnel") in changed.err
    assert cli.stored() == before


def test_calicos_zero_values_are_stored_as_its_defaults(cli, tmp_path):
    pools = "---\n".join(POOL.format(name=name, cidr=cidr) + extra for name, cidr, extra in [
        ("zd1", "10.94.0.0/16", '  nodeSelector: ""\n'),
        ("zd2", "10.95.0.0/16", '  nodeSelector: ""\n  allowedUses: [LoadBalancer]\n'),
        ("zd3", "10.96.0.0/16", "  blockSize: 0\n  allowedUses: []\n"),
        ("zd4", "fd00:96::/48", '  blockSize: 0\n  vxlanMode: ""\n  ipipMode: ""\n'),
    ])
    done = cli("create", "-f", write(tmp_path, "zero.yaml", pools))
    assert done.code == 0, done.err
    listed = yaml.safe_load(cli("get", "ippools", "-o", "yaml").out)["items"]
    fields = ("nodeSelector", "blockSize", "allowedUses", "ipipMode", "vxlanMode")
    assert {d["metadata"]["name"]: tuple(d["spec"][f] for f in fields) for d in listed} == {
        "zd1": ("all()", 26, ["Workload", "Tunnel"], "Never", "Never"),
        "zd2": ("all()", 26, ["LoadBalancer"], "Never", "Never"),
        "zd3": ("all()", 26, ["Workload", "Tunnel"], "Never", "Never"),
        "zd4": ("all()", 122, ["Workload", "Tunnel"], "Never", "Never"),
    }


KUBECTL_EXPORT = """\
apiVersion: percale.io/v1
kind: IPPool
metadata:
  name: from-kubectl
  generation: 1
  managedFields:
  - {apiVersion: percale.io/v1, fieldsType: FieldsV1, manager: kubectl, operation: Update}
  finalizers: []
  ownerReferences: []
  selfLink: /apis/percale.io/v1/ippools/from-kubectl
spec:
  cidr: 10.92.0.0/16
"""


def test_a_resource_as_kubectl_prints_it_applies_and_its_server_fields_are_dropped(cli, tmp_path):
    done = cli("create", "-f", write(tmp_path, "k.yaml", KUBECTL_EXPORT))
    assert done.code == 0, done.err
    (stored,) = [value for _, value in cli.stored().values()]
    assert not any(f in stored for f in ("generation", "managedFields", "finalizers", "selfLink"))
    shown = yaml.safe_load(cli("get", "ippool", "from-kubectl", "-o", "yaml").out)["metadata"]
    assert set(shown) == {"name", "resourceVersion", "uid", "creationTimestamp"}


def test_patch_merges_into_the_stored_resource_and_checks_it_as_replace_does(cli, tmp_path):
    lb = _pool(tmp_path, "p", "10.1.0.0/16", "  allowedUses: [LoadBalancer]\n")
    assert cli("create", "-f", lb).code == 0
    uid = yaml.safe_load(cli("get", "ippool", "p", "-o", "yaml").out)["metadata"]["uid"]
    done = cli("patch", "ippool", "p", "-p", '{"spec": {"disabled": true, "natOutgoing": true}}')
    assert (done.code, done.out, done.err) == (0, "Successfully patched 1 'IPPool' resource\n", "")
    got = yaml.safe_load(cli("get", "ippool", "p", "-o", "yaml").out)
    assert got["metadata"]["uid"] == uid
    assert (got["spec"]["disabled"], got["spec"]["natOutgoing"]) == (True, True)
    assert got["spec"]["allowedUses"] == ["LoadBalancer"]

    before = cli.stored()
    where = "--patch (IPPool 'p'): "
    refused = {
        '{"spec": {"blockSize": 24}}': where + "spec.blockSize: a pool's blockSize cannot",
        '{"spec": {"allowedUses": ["Workload"]}}':
            where + "spec.allowedUses: IPPool allowed use cannot be changed",
        '{"spec": {"cidr": null}}': where + "spec.cidr: required field is missing",
        '{"spec": {"blokSize": 26}}': where + "spec.blokSize: unknown field",
        '{"metadata": {"name": "q"}}': "a patch cannot change the kind, name or namespace",
        '{"metadata": {"resourceVersion": "1"}}': "update conflict: IPPool(p) has been modified",
        '{"spec": {}, "spec": {"disabled": false}}': 'key "spec" already set in map',
        '["spec"]': "--patch: must be a JSON object",
    }
    for changes, reason in refused.items():
        result = cli("patch", "ippool", "p", "--patch", changes)
        assert (result.code, result.out) == (1, ""), changes
        assert reason in result.err, result.err
        assert result.err.endswith("No resources were changed.\n"), result.err
    assert cli.stored() == before

    missing = cli("patch", "ippool", "q", "-p", "{}")
    assert (missing.code, missing.err) == (1, "Hit error: resource does not exist: IPPool(q)\n")
    managed = cli("patch", "ipamblock", "10.1.0.0-26", "-p", "{}")
    assert managed.code == 1 and "maintained by percale's IPAM" in managed.err
    assert cli.stored() == before


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
             "edge   2             0             0             1\n\n")
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
    assert len(every) == 4 and every[-1] == ""
    # calicoctl's columns: NAMESPACE only with -n or -A.
    assert cli("get", "weps").out.splitlines()[0].split() == [
        "WORKLOAD", "NODE", "NETWORKS", "INTERFACE"]


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
            assert len(result.out.splitlines()) == 3 and result.out.endswith("\n\n"), result.out
    wide = cli("get", "ipamblocks", "-o", "wide").out.splitlines()
    assert wide[1].split() == ["10.0.0.0-26", "10.0.0.0/26", "host:node1", "0", "64"]
    assert cli("get", "blockaffinities").out.splitlines()[1].split() == [
        "node1-10.0.0.0-26", "node1", "10.0.0.0/26", "confirmed"]
    assert set(k for k in KINDS) == {
        "IPPool", "IPAMConfig", "IPReservation", "IPAMBlock", "BlockAffinity", "IPAMHandle",
        "BGPConfiguration", "BGPPeer", "BGPFilter", "Node", "WorkloadEndpoint", "NodeStatus", "NetworkPolicy",
        "GlobalNetworkPolicy", "Profile"}
