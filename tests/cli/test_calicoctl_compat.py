"""percalectl where calicoctl's behaviour is what users and their scripts depend on: -n and -A as
calicoctl's handleNamespace takes them, Kubernetes policies written only as themselves, the
flags, names and commands calicoctl has, and its tables. Run against a real etcd."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import yaml

from tests.helpers.etcd_server import free_port

pytestmark = pytest.mark.cli

POLICY = """\
apiVersion: percale.io/v1
kind: NetworkPolicy
metadata: {{name: {name}{namespace}}}
spec: {{selector: all(), types: [Ingress], ingress: [{{action: {action}}}]}}
"""


def policy(name: str, namespace: str | None = None, action: str = "Allow") -> str:
    where = f", namespace: {namespace}" if namespace else ""
    return POLICY.format(name=name, namespace=where, action=action)


def write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return str(path)


def namespaces_of(cli, name: str) -> list[str]:
    listed = yaml.safe_load(cli("get", "networkpolicies", "-A", "-o", "yaml").out)
    return sorted(p["metadata"]["namespace"] for p in listed["items"]
                  if p["metadata"]["name"] == name)


def test_delete_file_takes_minus_n_for_a_document_without_namespace(cli, tmp_path):
    """calicoctl deletes production/same; percale deleted default/same (a Deny) instead."""
    both = write(tmp_path, "both.yaml", policy("same", "production") + "---\n"
                 + policy("same", "default", action="Deny"))
    assert cli("apply", "-f", both).code == 0
    bare = write(tmp_path, "bare.yaml", policy("same"))

    done = cli("delete", "-f", bare, "-n", "production")
    assert done.code == 0, done
    assert done.out == "Successfully deleted 1 'NetworkPolicy' resource(s)\n"
    assert namespaces_of(cli, "same") == ["default"]


def test_minus_n_on_files_refuses_another_namespace_and_global_kinds(cli, tmp_path):
    assert cli("apply", "-f", write(tmp_path, "p.yaml", policy("same", "staging"))).code == 0
    before = cli.stored()
    staging = write(tmp_path, "staging.yaml", policy("same", "staging"))
    for verb in ("delete", "apply", "create", "replace"):
        refused = cli(verb, "-f", staging, "-n", "production")
        assert refused.code == 1, (verb, refused)
        assert ("metadata.namespace: resource namespace does not match client namespace: "
                "staging != production (-n)") in refused.err, refused.err
        assert "No resources were changed." in refused.err
    pool = write(tmp_path, "pool.yaml", "apiVersion: percale.io/v1\nkind: IPPool\n"
                 "metadata: {name: p}\nspec: {cidr: 10.9.0.0/16}\n")
    global_kind = cli("apply", "-f", pool, "-n", "production")
    assert global_kind.code == 1 and "IPPool is not namespaced" in global_kind.err
    assert cli.stored() == before

    # apply, create and replace put a document without namespace into -n's.
    bare = write(tmp_path, "bare.yaml", policy("fresh"))
    created = cli("create", "-f", bare, "-n", "production")
    assert created.code == 0, created.err
    assert cli("replace", "-f", bare, "-n", "production").code == 0
    assert cli("apply", "-f", bare, "-n", "staging").code == 0
    assert namespaces_of(cli, "fresh") == ["production", "staging"]


K8S_POLICY = Path(__file__).resolve().parents[2] / "examples/policy/allow-frontend-to-backend.yaml"
KNP = "knp.default.allow-frontend-to-backend"
KNP_REFUSAL = "kubernetes network policies must be managed through the kubernetes API"


def test_a_percale_policy_cannot_take_a_kubernetes_policys_name(cli, tmp_path):
    assert cli("apply", "-f", str(K8S_POLICY)).code == 0
    before = cli.stored()
    own = write(tmp_path, "own.yaml", policy(KNP, "production"))
    for verb in ("apply", "create", "replace"):
        refused = cli(verb, "-f", own)
        assert refused.code == 1 and KNP_REFUSAL in refused.err, (verb, refused)
    patched = cli("patch", "networkpolicy", KNP, "-n", "production",
                  "-p", '{"spec":{"order":1}}')
    assert patched.code == 1 and KNP_REFUSAL in patched.err, patched
    labelled = cli("label", "networkpolicy", KNP, "team=x", "-n", "production")
    assert labelled.code == 1 and KNP_REFUSAL in labelled.err, labelled
    assert cli.stored() == before

    # The Kubernetes policy itself still applies, and `get -o yaml` of its conversion (marked
    # as one) applies back, changing nothing: a backup restores.
    assert cli("apply", "-f", str(K8S_POLICY)).code == 0
    saved = cli("get", "networkpolicies", "-n", "production", "-o", "yaml").out
    again = cli("apply", "-f", "-", stdin=saved)
    assert again.code == 0, again.err
    assert cli.stored() == before


def test_order_is_printed_exactly_as_calicoctl_prints_it(cli, tmp_path):
    docs = "---\n".join(
        f"apiVersion: percale.io/v1\nkind: GlobalNetworkPolicy\nmetadata: {{name: {name}}}\n"
        f"spec: {{order: {order}, selector: all()}}\n"
        for name, order in [("a", 1234.5678), ("b", 1234.5679), ("c", 1234567), ("d", 100)])
    assert cli("apply", "-f", write(tmp_path, "gnps.yaml", docs)).code == 0
    header, *rows = [line.split() for line in cli("get", "gnp", "-o", "wide").out.splitlines()
                     if line]
    order = header.index("ORDER")
    assert [(r[0], r[order]) for r in rows] == [
        ("a", "1234.5678"), ("b", "1234.5679"), ("c", "1.234567e+06"), ("d", "100")]


def test_calicoctls_names_and_flags(cli, tmp_path):
    assert cli("apply", "-f", write(tmp_path, "p.yaml", policy("web"))).code == 0
    for alias in ("policy", "policies", "pol", "pols", "np", "networkpolicy"):
        listed = cli("get", alias)
        assert listed.code == 0 and "web" in listed.out, (alias, listed)
    as_yml = cli("get", "pol", "web", "-o", "yml")
    assert as_yml.code == 0 and yaml.safe_load(as_yml.out)["metadata"]["name"] == "web"
    skipped = cli("delete", "pol", "web", "gone", "-s")
    assert skipped.code == 0, skipped
    assert skipped.out == "Successfully deleted 2 'NetworkPolicy' resource(s)\n"


def test_datastore_options_after_the_command(cli, tmp_path):
    dead = f"http://127.0.0.1:{free_port()}"
    config = tmp_path / "percalectl.cfg"
    config.write_text(f"apiVersion: percale.io/v1\nkind: PercaleAPIConfig\n"
                      f"spec:\n  etcdEndpoints: {cli.endpoint}\n")
    no_env = {"ETCD_ENDPOINTS": ""}
    assert cli("get", "nodes", "-c", str(config), env=no_env).code == 0
    assert cli("ipam", "show", "--config", str(config), env=no_env).code == 0
    assert cli("-c", str(config), "get", "nodes", env=no_env).code == 0  # before, as it was
    after = cli("get", "nodes", "--etcd-endpoints", dead)
    assert after.code == 1 and dead in after.err
    # Given both before and after the command, the one after wins.
    both = cli("--etcd-endpoints", cli.endpoint, "get", "nodes", "--etcd-endpoints", dead)
    assert both.code == 1 and dead in both.err


NODE = """\
apiVersion: percale.io/v1
kind: Node
metadata: {name: node1, labels: {rack: a}}
spec: {bgp: {ipv4Address: 10.0.0.1/24}}
"""


def test_label_as_calicoctl(cli, tmp_path):
    assert cli("apply", "-f", write(tmp_path, "n.yaml", NODE)).code == 0

    def labels() -> dict:
        return yaml.safe_load(cli("get", "node", "node1", "-o", "yaml").out)["metadata"]["labels"]

    def run(*args: str):
        done = cli("label", "nodes", "node1", *args)
        return done.code, done.out.strip() or done.err.strip()

    assert run("rr=true") == (0, "Successfully set label rr on nodes node1")
    assert run("rr=false") == (1, "failed to update label of nodes node1, key rr is already "
                                  "present. please use '--overwrite' to set a new value")
    assert run("rr=true") == (0, "Successfully updated label rr on nodes node1")
    assert run("rr=false", "--overwrite") == (0, "Successfully updated label rr on nodes node1")
    assert labels() == {"rack": "a", "rr": "false"}
    assert run("rack", "--remove") == (0, "Successfully removed label rack from nodes node1")
    assert run("rack", "--remove") == (1, "cannot remove label of nodes node1, key rack does "
                                          "not exist")
    assert run("novalue") == (1, "invalid label novalue")
    assert labels() == {"rr": "false"}
    missing = cli("label", "nodes", "node9", "rr=true")
    assert (missing.code, missing.err) == (1, "nodes node9 not found\n")
    bad = cli("label", "nodes", "node1", "bad key=x")
    assert bad.code == 1 and "failed to update nodes node1, label not changed" in bad.err
    assert labels() == {"rr": "false"}


def test_get_namespace_flags_as_calicoctl(cli, tmp_path):
    assert cli("apply", "-f", write(tmp_path, "p.yaml", policy("web", "shop"))).code == 0
    by_name = cli("get", "networkpolicy", "web", "-A")
    assert by_name.code == 1 and not by_name.out
    assert "cannot use --all-namespaces to get a resource by name" in by_name.err
    both = cli("get", "networkpolicies", "-A", "-n", "shop")
    assert both.code == 1 and "cannot use both --namespace and --all-namespaces" in both.err
    for flag in (["-n", "shop"], ["-A"]):
        global_kind = cli("get", "ippools", *flag)
        assert global_kind.code == 1 and "IPPool is not namespaced" in global_kind.err, flag
    deleted = cli("delete", "ippool", "x", "-n", "shop")
    assert deleted.code == 1 and "IPPool is not namespaced" in deleted.err

    # NAMESPACE only when -n or -A is given, as calicoctl's printer; TIER as calicoctl's.
    assert cli("get", "networkpolicies", "-n", "shop").out == (
        "NAMESPACE   NAME   TIER\n"
        "shop        web    default\n\n")
    assert cli("get", "networkpolicy", "web", "-n", "shop", "-o", "wide").out.splitlines()[0] == (
        "NAMESPACE   NAME   TIER      ORDER   SELECTOR   SOURCE")
    assert cli("get", "networkpolicies").out == "NAME   TIER\n\n"


def test_get_names_shows_what_it_found_then_each_missing_name(cli, tmp_path):
    pools = "---\n".join(
        f"apiVersion: percale.io/v1\nkind: IPPool\nmetadata: {{name: {name}}}\n"
        f"spec: {{cidr: {cidr}}}\n" for name, cidr in [("a", "10.1.0.0/16"), ("b", "10.2.0.0/16")])
    assert cli("apply", "-f", write(tmp_path, "pools.yaml", pools)).code == 0
    done = cli("get", "ippool", "a", "missing", "b", "gone")
    assert done.code == 1
    # calicoctl prints a table for each resource asked for by name.
    assert done.out == (
        "NAME   CIDR          SELECTOR\n"
        "a      10.1.0.0/16   all()\n\n"
        "NAME   CIDR          SELECTOR\n"
        "b      10.2.0.0/16   all()\n\n")
    assert done.err == ("resource does not exist: IPPool(missing)\n"
                        "resource does not exist: IPPool(gone)\n")


async def test_calicoctls_columns_for_ipamconfig_nodestatus_and_bgppeers(cli, tmp_path):
    from percale.api import parse
    from percale.datastore.etcd import EtcdDatastore

    store = EtcdDatastore([cli.endpoint])
    api = {"apiVersion": "percale.io/v1"}
    for doc in [
        {"kind": "IPAMConfig", "metadata": {"name": "default"},
         "spec": {"strictAffinity": True, "maxBlocksPerHost": 4}},
        {"kind": "NodeStatus", "metadata": {"name": "node1"},
         "spec": {"node": "node1", "classes": ["BGP"], "updatePeriodSeconds": 10}},
        {"kind": "BGPPeer", "metadata": {"name": "by-selector"},
         "spec": {"peerSelector": "rr == 'true'"}},
    ]:
        await store.create(parse({**api, **doc}))
    await store.close()

    assert cli("get", "ipamconfigs").out == (
        "NAME      STRICTAFFINITY   AUTOALLOCATEBLOCKS\n"
        "default   true             true\n\n")
    assert cli("get", "ipamconfigs", "-o", "wide").out.splitlines()[0].split() == [
        "NAME", "STRICTAFFINITY", "AUTOALLOCATEBLOCKS", "MAXBLOCKSPERHOST"]
    assert cli("get", "nodestatuses").out == "NAME    NODE\nnode1   node1\n\n"
    assert cli("get", "nodestatuses", "-o", "wide").out.splitlines()[0].split() == [
        "NAME", "NODE", "CLASSES"]
    assert cli("get", "bgppeers").out.splitlines()[1].split() == ["by-selector", "(global)", "0"]
