"""Bad input exits 1 with a message naming the file, document, field and reason, and writes
nothing: the datastore is compared key by key, revision by revision, before and after."""

from __future__ import annotations

import asyncio
import textwrap

import pytest

from percale.datastore.etcd import EtcdDatastore
from percale.ipam.allocator import IPAM
from tests.helpers.ipam_world import add_pool

pytestmark = pytest.mark.cli

GOOD = """\
apiVersion: percale.io/v1
kind: IPPool
metadata:
  name: good-pool
spec:
  cidr: 10.10.0.0/16
"""

POLICY = ("apiVersion: percale.io/v1\nkind: GlobalNetworkPolicy\nmetadata: {{name: proto}}\n"
          "spec:\n  {rule}\n")

CASES = {
    "malformed-yaml": (
        GOOD + "---\napiVersion: percale.io/v1\nkind: IPPool\nmetadata:\n  name: [broken\n",
        ["bad.yaml", "not valid YAML or JSON", "line"],
    ),
    "unknown-kind": (
        GOOD + "---\napiVersion: percale.io/v1\nkind: IPPoool\nmetadata: {name: x}\nspec: {}\n",
        ["bad.yaml, document 2", "kind: unknown kind 'IPPoool'"],
    ),
    "invalid-cidr": (
        GOOD + "---\n" + GOOD.replace("good-pool", "bad-pool").replace("10.10.0.0/16", "10.20.0.1/16"),
        ["bad.yaml, document 2 (IPPool 'bad-pool')", "spec.cidr", "host bits set", "10.20.0.0/16"],
    ),
    "not-a-cidr": (
        GOOD + "---\n" + GOOD.replace("good-pool", "bad-pool").replace("10.10.0.0/16", "10.300.0.0/16"),
        ["document 2 (IPPool 'bad-pool')", "spec.cidr", "not a valid CIDR"],
    ),
    "overlapping-pool": (
        GOOD + "---\n" + GOOD.replace("good-pool", "bad-pool").replace("10.10.0.0/16", "10.0.128.0/20"),
        ["document 2 (IPPool 'bad-pool')", "spec.cidr", "overlaps IPPool 'stored-pool' (10.0.0.0/16)"],
    ),
    "overlap-within-file": (
        GOOD + "---\n" + GOOD.replace("good-pool", "bad-pool").replace("10.10.0.0/16", "10.10.0.0/24"),
        ["(IPPool 'bad-pool')", "overlaps IPPool 'good-pool'"],
    ),
    "block-larger-than-pool": (
        GOOD + "---\n" + GOOD.replace("good-pool", "bad-pool").replace("10.10.0.0/16", "10.30.0.0/28")
        + "  blockSize: 26\n",
        ["document 2 (IPPool 'bad-pool')", "spec", "blockSize /26 is larger than the pool"],
    ),
    "unknown-field": (
        GOOD + "---\n" + GOOD.replace("good-pool", "bad-pool").replace("10.10.0.0/16", "10.40.0.0/16")
        + "  blockSze: 26\n",
        ["document 2 (IPPool 'bad-pool')", "spec.blockSze: unknown field"],
    ),
    "link-local": (
        GOOD + "---\n" + GOOD.replace("good-pool", "bad-pool").replace("10.10.0.0/16", "169.254.0.0/16"),
        ["(IPPool 'bad-pool')", "link-local"],
    ),
    "ipip-and-vxlan": (
        GOOD + "---\n" + GOOD.replace("good-pool", "bad-pool").replace("10.10.0.0/16", "10.50.0.0/16")
        + "  ipipMode: Always\n  vxlanMode: Always\n",
        ["(IPPool 'bad-pool')", "ipipMode and vxlanMode cannot both be enabled"],
    ),
    "ipip-pool": (
        GOOD + "---\n" + GOOD.replace("good-pool", "bad-pool").replace("10.10.0.0/16", "10.51.0.0/16")
        + "  ipipMode: CrossSubnet\n",
        ["(IPPool 'bad-pool')", "spec.ipipMode", "percale has no IPIP dataplane", "vxlanMode"],
    ),
    "peer-node-and-selector": (
        GOOD + "---\napiVersion: percale.io/v1\nkind: BGPPeer\nmetadata: {name: tor}\n"
        "spec: {peerIP: 192.0.2.1, asNumber: 64600, node: node1, nodeSelector: all()}\n",
        ["(BGPPeer 'tor')", "node", "nodeSelector"],
    ),
    "bad-selector": (
        GOOD.replace("10.10.0.0/16", "10.60.0.0/16") + "  nodeSelector: rack == \n",
        ["(IPPool 'good-pool')", "spec.nodeSelector", "invalid selector"],
    ),
    "name-with-an-empty-part": (
        GOOD + "---\n" + GOOD.replace("good-pool", "bad..pool").replace("10.10.0.0/16", "10.70.0.0/16"),
        ["document 2", "name 'bad..pool' is not a valid IPPool name", "each part between dots"],
    ),
    "label-key-prefix": (
        GOOD + "---\n" + GOOD.replace("good-pool", "labelled").replace("10.10.0.0/16", "10.90.0.0/16")
        .replace("  name: labelled\n", "  name: labelled\n  labels: {Bad_Prefix/rack: r1}\n"),
        ["document 2", "metadata.labels", "label key 'Bad_Prefix/rack' has a prefix that is not a DNS subdomain"],
    ),
    # A '/' in a namespace would file the policy under another namespace's key.
    "namespace-with-a-slash": (
        GOOD + "---\napiVersion: percale.io/v1\nkind: NetworkPolicy\n"
        "metadata: {name: np, namespace: a/b}\nspec: {selector: all()}\n",
        ["document 2", "metadata.namespace", "'a/b' is not a valid namespace"],
    ),
    # A protocol neither a name nor an integer ended percalectl in a traceback.
    "protocol-as-a-list": (
        GOOD + "---\n" + POLICY.format(rule="ingress:\n  - {action: Allow, protocol: [TCP, UDP]}"),
        ["document 2 (GlobalNetworkPolicy 'proto')",
         "spec.ingress.0.protocol: must be a protocol name or a number 1-255"],
    ),
    "not-protocol-as-a-float": (
        GOOD + "---\n" + POLICY.format(rule="egress:\n  - {action: Deny, notProtocol: 6.0}"),
        ["spec.egress.0.notProtocol: must be a protocol name or a number 1-255"],
    ),
    "protocol-as-a-map": (
        GOOD + "---\n" + POLICY.format(rule="ingress:\n  - {action: Allow, protocol: {name: TCP}}"),
        ["spec.ingress.0.protocol: must be a protocol name or a number 1-255"],
    ),
    # etcd refuses a request over 1.5 MiB only when the batch is half written: caught first.
    "annotations-too-large": (
        GOOD + "---\n" + GOOD.replace("good-pool", "big-pool").replace("10.10.0.0/16", "10.80.0.0/16")
        .replace("  name: big-pool\n", "  name: big-pool\n  annotations: {note: " + "x" * 2_000_000 + "}\n"),
        ["document 2", "metadata.annotations", "at most 262144 (256 KiB)"],
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_exits_1_names_the_problem_and_writes_nothing(cli, tmp_path, case):
    stored_pool = tmp_path / "stored.yaml"
    stored_pool.write_text(GOOD.replace("good-pool", "stored-pool").replace("10.10.0.0/16", "10.0.0.0/16"))
    assert cli("apply", "-f", str(stored_pool)).code == 0
    before = cli.stored()

    text, expected = CASES[case]
    bad = tmp_path / "bad.yaml"
    bad.write_text(textwrap.dedent(text))
    for verb in ("apply", "create"):
        result = cli(verb, "-f", str(bad))
        assert result.code == 1, result.out
        for fragment in expected:
            assert fragment in result.err, f"{fragment!r} not in {result.err!r}"
        assert "No resources were changed." in result.err
        assert result.out == ""
        assert cli.stored() == before


REPEATED_KEYS = {
    # Two spec blocks: the first one's password was dropped without a word.
    "spec.yaml": ("apiVersion: percale.io/v1\nkind: BGPPeer\nmetadata:\n  name: tor\nspec:\n"
                  "  peerIP: 192.0.2.1\n  asNumber: 65001\n  password:\n"
                  "    secretKeyRef: {name: bgp, key: pw}\nspec:\n  peerIP: 192.0.2.1\n"
                  "  asNumber: 65001\n",
                  'at line 10, column 1: key "spec" already set in map'),
    "field.yaml": (GOOD + "  natOutgoing: true\n  blockSize: 24\n  natOutgoing: false\n",
                   'at line 9, column 3: key "natOutgoing" already set in map'),
    "flow.yaml": (GOOD.replace("  name: good-pool\n", "  {name: good-pool, name: other}\n")
                  .replace("metadata:\n  {", "metadata: {"),
                  'at line 3, column 29: key "name" already set in map'),
    "pool.json": ('{"apiVersion": "percale.io/v1", "kind": "IPPool", "metadata": {"name": "a"},\n'
                  ' "spec": {"cidr": "10.10.0.0/16"}, "spec": {"cidr": "10.11.0.0/16"}}\n',
                  'at line 2, column 36: key "spec" already set in map'),
}


@pytest.mark.parametrize("name", sorted(REPEATED_KEYS))
def test_a_key_repeated_in_one_mapping_is_refused_naming_it(cli, tmp_path, name):
    """As calicoctl's strict decoding refuses it (`key "x" already set in map`); percalectl
    kept the last value and wrote the resource."""
    text, where = REPEATED_KEYS[name]
    bad = tmp_path / name
    bad.write_text(text)
    result = cli("apply", "-f", str(bad))
    assert (result.code, result.out) == (1, "")
    assert result.err == f"{bad}: not valid YAML or JSON {where}\nNo resources were changed.\n"
    assert cli.stored() == {}


def test_a_merged_key_may_be_given_again(cli, tmp_path):
    """YAML's merge key is meant to be overridden by the mapping's own keys: not a repeat."""
    merged = tmp_path / "merged.yaml"
    merged.write_text(GOOD.replace("  cidr: 10.10.0.0/16\n",
                                   "  <<: {cidr: 10.10.0.0/16, blockSize: 26}\n  blockSize: 28\n"))
    assert cli("apply", "-f", str(merged)).code == 0
    assert "blockSize: 28" in cli("get", "ippool", "good-pool", "-o", "yaml").out


def test_a_bad_file_in_a_folder_stops_the_whole_folder(cli, tmp_path):
    (tmp_path / "a-good.yaml").write_text(GOOD)
    (tmp_path / "b-bad.yaml").write_text(GOOD.replace("good-pool", "b").replace("10.10.0.0/16", "10.70.0.1/16"))
    result = cli("apply", "-f", str(tmp_path))
    assert result.code == 1 and "b-bad.yaml (IPPool 'b'): spec.cidr" in result.err
    assert cli.stored() == {}


def test_missing_file_and_empty_input(cli, tmp_path):
    missing = cli("apply", "-f", str(tmp_path / "nope.yaml"))
    assert missing.code == 1 and "nope.yaml: no such file or folder" in missing.err
    empty = cli("apply", "-f", "-", stdin="")
    assert empty.code == 1 and "no resources found" in empty.err


@pytest.mark.parametrize("args", [("get", "ippools", "--no-such-flag"), ("no-such-command",),
                                  ("ipam", "show", "--ip")])
def test_a_command_line_that_does_not_parse_exits_1_as_calicoctl(cli, args):
    done = cli(*args)
    assert done.code == 1 and done.err and not done.out


def test_an_empty_file_name_is_refused_not_read_as_the_working_directory(cli, tmp_path):
    """`-f "$FILE"` with FILE unset: Path("") is the working directory, whose resource files
    apply and delete took, every one."""
    (tmp_path / "pool.yaml").write_text(GOOD)
    for verb in ("apply", "create", "replace", "delete"):
        result = cli(verb, "-f", "", cwd=tmp_path)
        assert result.code == 1 and "-f: the file name is empty" in result.err, (verb, result)
    assert cli.stored() == {}



@pytest.mark.parametrize("command", ["crds", "manifests"])
def test_an_empty_output_folder_is_refused_not_read_as_the_working_directory(cli, tmp_path, command):
    """--output-dir "$DIR" with DIR unset wrote into the working directory and printed /rbac.yaml."""
    result = cli(command, "--output-dir", "", cwd=tmp_path)
    assert result.code == 1 and "--output-dir: the folder name is empty" in result.err, result
    assert list(tmp_path.iterdir()) == []

def test_input_nested_too_deeply_is_one_line(cli, tmp_path):
    deep = tmp_path / "deep.yaml"
    deep.write_text("[" * 5000 + "]" * 5000)
    result = cli("apply", "-f", str(deep))
    assert result.code == 1 and "deep.yaml: nested too deeply to read" in result.err, result.err


@pytest.mark.parametrize("kind, name", [("blockaffinities", "x"), ("blockaffinities", "a-b"),
                                        ("ipamblocks", "x"), ("ippools", "a/b")])
def test_getting_a_name_the_kind_cannot_have_is_not_found(cli, kind, name):
    result = cli("get", kind, name)
    assert result.code == 1 and "resource does not exist: " in result.err, result.err
    assert f"({name})" in result.err


@pytest.mark.parametrize("namespace", ["Default", "a/b", ""])
def test_policy_show_names_a_namespace_that_cannot_be_one(cli, namespace):
    result = cli("policy", "show", "pod2", "-n", namespace)
    assert result.code == 1, result
    assert f"--namespace: namespace {namespace!r} is not a valid namespace" in result.err, result.err


def test_managed_ipam_kinds_are_not_written_by_hand(cli, tmp_path):
    handle = tmp_path / "handle.yaml"
    handle.write_text("apiVersion: percale.io/v1\nkind: IPAMHandle\nmetadata: {name: h}\n"
                      "spec: {handleID: h, block: {}}\n")
    result = cli("apply", "-f", str(handle))
    assert result.code == 1 and "maintained by percale's IPAM" in result.err
    assert cli.stored() == {}


def test_ipam_kinds_are_not_deleted_by_hand(cli, tmp_path):
    """A block deleted while it holds a pod's address would be claimed again and give that
    address to the next pod: percalectl refuses, by name and by file, and deletes nothing."""
    async def allocate():
        store = EtcdDatastore([cli.endpoint])
        try:
            await add_pool(store, "pods", "10.10.0.0/16")
            await IPAM(store).auto_assign("node1", handle_id="k8s-pod-network.web-0", num4=1,
                                          attrs={"namespace": "default", "pod": "web-0"})
        finally:
            await store.close()

    asyncio.run(allocate())
    before = cli.stored()
    refusal = ("maintained by percale's IPAM; they cannot be deleted with percalectl (free "
               "addresses with `percalectl ipam release`)")
    for kind in ("ipamblocks", "blockaffinities", "ipamhandles"):
        listed = cli("get", kind, "-o", "yaml")
        assert listed.code == 0, listed.err
        name = next(line.split(":", 1)[1].strip() for line in listed.out.splitlines()
                    if line.strip().startswith("name:"))
        by_name = cli("delete", kind, name)
        assert by_name.code == 1 and refusal in by_name.err, by_name.err
        assert "No resources were changed." in by_name.err
        saved = tmp_path / f"{kind}.yaml"
        saved.write_text(listed.out)
        by_file = cli("delete", "-f", str(saved))
        assert by_file.code == 1 and refusal in by_file.err, by_file.err
    assert cli.stored() == before


def test_create_refuses_a_resource_version(cli, tmp_path):
    versioned = tmp_path / "versioned.yaml"
    versioned.write_text(GOOD.replace("  name: good-pool\n", "  name: good-pool\n  resourceVersion: '42'\n"))
    result = cli("create", "-f", str(versioned))
    assert result.code == 1
    assert "metadata.resourceVersion: must not be set when creating IPPool(good-pool) (got '42')" in result.err
    assert cli.stored() == {}


@pytest.mark.parametrize("command", ["manifests", "crds"])
def test_generated_files_into_a_folder_that_cannot_be_made_is_one_line(cli, tmp_path, command):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    result = cli(command, "--output-dir", str(blocker / "sub"))
    assert result.code == 1
    assert result.err == f"--output-dir {blocker / 'sub'}: cannot write there: Not a directory\n"


def test_a_pool_given_twice_is_reported_where_each_problem_is(cli, tmp_path):
    pool = GOOD.replace("good-pool", "{name}").replace("10.10.0.0/16", "{cidr}")
    batch = tmp_path / "twice.yaml"
    batch.write_text("---\n".join([pool.format(name="m1", cidr="10.40.0.0/16"),
                                   pool.format(name="m2", cidr="10.41.0.0/16"),
                                   pool.format(name="m1", cidr="10.41.128.0/17")]))
    result = cli("apply", "-f", str(batch))
    assert result.code == 1
    lines = result.err.splitlines()
    third = f"{batch}, document 3 (IPPool 'm1')"
    assert f"{third}: spec.cidr: 10.41.128.0/17 overlaps IPPool 'm2' (10.41.0.0/16)" in lines
    assert f"{third}: metadata.name: the same IPPool is also given in {batch}, document 1" in lines
    assert not any("document 1 (" in line for line in lines), result.err  # the first m1 is fine
    assert "items" not in result.err
    listed = tmp_path / "list.yaml"
    listed.write_text("apiVersion: percale.io/v1\nkind: List\nitems: 5\n")
    result = cli("apply", "-f", str(listed))
    assert result.code == 1
    assert result.err == f"{listed} (List): items: must be a list of resources\nNo resources were changed.\n"
    assert cli.stored() == {}
