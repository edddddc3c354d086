"""Requests the agent refuses for their input (node/cni_handlers.py, node/cni_types.py), asked as
the shim asks them: each gets the CNI code that tells the runtime what to do (4: fix the
environment, 7: fix the config), a message naming the variable or field and the rule, and
nothing is taken. No network namespace is needed: every refusal here comes before CNI_NETNS is
looked at, and a request that got past them would be refused for its made-up CNI_NETNS instead
(so these tests fail on a refusal that comes too late, not only on a wrong one)."""

from __future__ import annotations

import json

import pytest

from percale.datastore import MemoryDatastore
from percale.ipam.allocator import IPAM
from percale.node.cni_handlers import CNIHandlers

pytestmark = pytest.mark.unit

POD = "K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-1"


def request(command: str = "ADD", *, plugin: str = "percale", cni_args: str = POD,
            container_id: str = "c1", ifname: str = "eth0", **config: object) -> dict:
    conf = {"cniVersion": "1.0.0", "name": "k8s-pod-network", "type": plugin, "nodename": "node1",
            "ipam": {"type": "percale-ipam"}, **config}
    return {"command": command, "plugin": plugin, "containerID": container_id,
            "netns": "/var/run/netns/no-such-pod", "ifname": ifname, "args": cni_args,
            "config": json.dumps(conf)}


async def ask(handlers: CNIHandlers, req: dict) -> tuple[int, str]:
    code, out = await handlers.handle(req)
    if code == 0:
        return 0, out
    error = json.loads(out)
    assert error["code"] == code and "\n" not in error["msg"], error
    return code, error["msg"]


async def nothing_taken(store: MemoryDatastore) -> None:
    assert (await store.list("IPAMHandle")).items == []
    assert (await store.list("WorkloadEndpoint")).items == []


RULE = "lower-case letters, digits, '-' and '.'"


@pytest.mark.parametrize(("args", "container_id", "ifname", "words"), [
    # Kubernetes' own rules for what CNI_ARGS names: a pod name is a DNS subdomain, a namespace
    # a DNS label (each was a 999 after the address was taken and the veth made).
    ("K8S_POD_NAMESPACE=default;K8S_POD_NAME=has space", "c1", "eth0",
     ["K8S_POD_NAME", "'has space' is not a valid pod name", RULE]),
    ("K8S_POD_NAMESPACE=default;K8S_POD_NAME=Upper", "c1", "eth0", ["K8S_POD_NAME", "'Upper'", RULE]),
    ("K8S_POD_NAMESPACE=default;K8S_POD_NAME=a..b", "c1", "eth0", ["K8S_POD_NAME", "'a..b'"]),
    ("K8S_POD_NAMESPACE=Bad_NS;K8S_POD_NAME=web-1", "c1", "eth0",
     ["K8S_POD_NAMESPACE", "'Bad_NS' is not a valid namespace", "at most 63 characters"]),
    ("K8S_POD_NAMESPACE=a.b;K8S_POD_NAME=web-1", "c1", "eth0", ["K8S_POD_NAMESPACE", "'a.b'"]),
    # What the WorkloadEndpoint's name <node>-k8s-<pod>-<ifname> needs beyond that.
    (POD, "c1", "Eth0", ["CNI_IFNAME 'Eth0'", "node1-k8s-web--1-Eth0", RULE]),
    (POD, "c1", "eth-", ["CNI_IFNAME 'eth-'"]),
    ("K8S_POD_NAMESPACE=default;K8S_POD_NAME=" + "a-" * 100 + "a", "c1", "eth0",
     ["K8S_POD_NAME is too long", "would be 316 characters, at most 253"]),
    ("", "ABC", "eth0", ["CNI_CONTAINERID 'ABC' (the pod's name without K8S_POD_NAME)", RULE]),
    (POD, "c_1", "eth0", ["CNI_CONTAINERID 'c_1'", "not a container ID"]),
])
async def test_names_no_endpoint_can_hold_are_code_4_before_anything_is_taken(
        cni_agent, args, container_id, ifname, words):
    store, handlers = cni_agent
    code, msg = await ask(handlers, request(cni_args=args, container_id=container_id, ifname=ifname))
    assert code == 4 and all(w in msg for w in words), msg
    await nothing_taken(store)


async def test_every_name_the_check_passes_makes_a_valid_endpoint(cni_agent):
    """Names at the edges of the rules pass on to CNI_NETNS (here made up, so refused there)."""
    store, handlers = cni_agent
    for args, ifname in [("K8S_POD_NAMESPACE=a" + "b" * 62 + ";K8S_POD_NAME=x.y-z.0", "eth0"),
                         ("K8S_POD_NAMESPACE=default;K8S_POD_NAME=" + "a" * 200, "net1.100"),
                         ("K8S_POD_NAMESPACE=;K8S_POD_NAME=", "-eth"), ("", "eth0")]:
        code, msg = await ask(handlers, request(cni_args=args, container_id="c-1", ifname=ifname))
        assert code == 4 and "CNI_NETNS" in msg, (args, ifname, msg)
    await nothing_taken(store)


async def test_ipam_del_takes_names_add_refuses(cni_agent):
    """DEL must succeed for a pod whose ADD was refused (CNI spec: DEL is best-effort): only
    what would misplace a key is refused."""
    _, handlers = cni_agent
    for args in ("K8S_POD_NAMESPACE=Bad_NS;K8S_POD_NAME=Upper", "K8S_POD_NAME=has space"):
        assert await ask(handlers, request("DEL", plugin="percale-ipam", cni_args=args)) == (0, "")
    code, msg = await ask(handlers, request("DEL", plugin="percale-ipam", cni_args="K8S_POD_NAME=a/b"))
    assert code == 4 and "K8S_POD_NAME" in msg


async def test_percale_ipam_add_refuses_bad_pod_names_before_allocating(cni_agent):
    store, handlers = cni_agent
    code, msg = await ask(handlers, request(plugin="percale-ipam", cni_args="K8S_POD_NAME=Upper"))
    assert code == 4 and "K8S_POD_NAME" in msg
    await nothing_taken(store)
    code, out = await ask(handlers, request(plugin="percale-ipam"))
    assert code == 0, out


@pytest.mark.parametrize(("ipam", "words"), [
    ({"type": "host-local", "subnet": "10.1.0.0/16"},
     ["ipam.type: 'host-local' is not supported", "percale-ipam"]),
    ({"type": "nosuch-ipam"}, ["ipam.type: 'nosuch-ipam' is not supported"]),
    ({}, ["ipam.type is missing", '"ipam": {"type": "percale-ipam"}']),
    (None, ["ipam.type is missing"]),
    ({"type": 5}, ["ipam.type must be", "not 5"]),
])
async def test_an_ipam_type_percale_does_not_run_is_code_7(cni_agent, ipam, words):
    store, handlers = cni_agent
    for command in ("ADD", "CHECK"):
        code, msg = await ask(handlers, request(command, ipam=ipam))
        assert code == 7 and all(w in msg for w in words), (command, msg)
    await nothing_taken(store)


async def test_a_config_naming_no_ipam_plugin_can_still_be_deleted(cni_agent):
    _, handlers = cni_agent
    for ipam in ({"type": "host-local"}, None):
        assert await ask(handlers, request("DEL", plugin="percale-ipam", ipam=ipam)) == (0, "")


@pytest.mark.parametrize(("config", "words"), [
    ({"cniVersion": 1}, ['cniVersion must be a string such as "1.0.0", not 1']),
    ({"cniVersion": 1.0}, ["cniVersion must be a string", "not 1.0"]),
    ({"cniVersion": None}, ["cniVersion is missing"]),
    ({"args": {"percale": {"namedPorts": [{"name": "http", "protocol": "TCP", "port": "eighty"}]}}},
     ["args.percale.namedPorts[0].port: ", "whole number"]),
    ({"args": {"percale": {"namedPorts": [{"name": "http", "protocol": "TCP", "port": 80},
                                          {"protocol": "TCP", "port": 81}]}}},
     ["args.percale.namedPorts[1].name: ", "needs a name"]),
    ({"args": {"percale": {"namedPorts": ["http"]}}}, ["args.percale.namedPorts[0]: "]),
    ({"args": {"cni": {"labels": [{"key": "app", "value": "a b"}]}}}, ["args.cni.labels: ", "'a b'"]),
    ({"args": {"percale": "x"}}, ["args.percale must be an object"]),
    ({"args": {"cni": {"labels": 5}}}, ["args.cni.labels must be a list"]),
    # Empty but of the wrong kind: refused, where they were read as absent.
    ({"args": []}, ["args must be an object"]),
    ({"args": {"cni": ""}}, ["args.cni must be an object"]),
    ({"ipam": []}, ["ipam must be an object"]),
    ({"mtu": None}, ["mtu must be 0 (detect)", "not null"]),
])
async def test_a_wrong_field_is_code_7_named_by_its_path(cni_agent, config, words):
    store, handlers = cni_agent
    code, msg = await ask(handlers, request(**config))
    assert code == 7 and all(w in msg for w in words), msg
    await nothing_taken(store)


async def test_gc_without_valid_attachments_is_code_7(cni_agent):
    """The CNI spec's GC input: the configuration carries cni.dev/valid-attachments; without it
    the configuration is wrong (7), not the environment (4)."""
    _, handlers = cni_agent
    code, msg = await ask(handlers, request("GC", cniVersion="1.1.0"))
    assert code == 7 and "cni.dev/valid-attachments" in msg
    listed = request("GC", cniVersion="1.1.0", **{"cni.dev/valid-attachments": []})
    assert await ask(handlers, listed) == (0, "")


@pytest.mark.parametrize(("container_id", "ifname", "cni_args", "words"), [
    # The IPAM handle k8s-pod-network.<ID> is a datastore name: at most 253 characters.
    ("a" * 238, "eth0", POD, ["CNI_CONTAINERID is too long", "would have 254"]),
    # The kernel's names for every interface's and the default settings (net.ipv4.conf.all).
    ("c1", "all", POD, ["CNI_IFNAME 'all' is reserved"]),
    ("c1", "default", POD, ["CNI_IFNAME 'default' is reserved"]),
    # Environment bytes that are not UTF-8 reach the agent as lone surrogates.
    ("c1", "et\udcffh", POD, ["CNI_IFNAME", "not UTF-8"]),
    ("c1", "eth0", "K8S_POD_NAMESPACE=default;K8S_POD_NAME=p\udcff5", ["CNI_ARGS is not UTF-8"]),
])
async def test_names_the_datastore_or_kernel_cannot_take_are_code_4(
        cni_agent, container_id, ifname, cni_args, words):
    """Each was a 999 with a traceback in the agent's log."""
    store, handlers = cni_agent
    for command in ("ADD", "DEL"):
        code, msg = await ask(handlers, request(command, container_id=container_id, ifname=ifname,
                                                cni_args=cni_args))
        assert code == 4 and all(w in msg for w in words), (command, msg)
    await nothing_taken(store)


@pytest.mark.parametrize(("config", "words"), [
    # A prevResult ADD passes on and CHECK compares: refused before anything is taken, where a
    # malformed one failed the ADD (999) after the pod was wired and its endpoint stored.
    ({"prevResult": {"interfaces": 5}}, ["prevResult.interfaces must be a list of objects"]),
    ({"prevResult": {"routes": "x"}}, ["prevResult.routes must be a list of objects"]),
    ({"prevResult": {"ips": [5]}}, ["prevResult.ips must be a list of objects"]),
    ({"prevResult": {"ips": [{"address": "garbage"}]}},
     ['prevResult.ips[0].address must be an address with its prefix', '"garbage"']),
    ({"prevResult": {"ips": [{}]}}, ["prevResult.ips[0].address", "not null"]),
    ({"prevResult": {"dns": {"nameservers": "8.8.8.8"}}},
     ["prevResult.dns.nameservers must be a list of strings"]),
    # Passed into the result as given, where a runtime that cannot read it fails the pod.
    ({"dns": {"nameservers": 5}}, ["dns.nameservers must be a list of strings"]),
    ({"dns": {"domain": ["a"]}}, ["dns.domain must be a string"]),
])
async def test_a_malformed_prev_result_or_dns_is_code_7_before_anything_is_taken(cni_agent, config, words):
    store, handlers = cni_agent
    for command in ("ADD", "CHECK"):
        code, msg = await ask(handlers, request(command, **config))
        assert code == 7 and all(w in msg for w in words), (command, msg)
    await nothing_taken(store)


async def test_a_config_nested_past_what_json_reads_is_code_6(cni_agent):
    _, handlers = cni_agent
    req = request()
    req["config"] = req["config"][:-1] + ', "x": ' + "[" * 5000 + "]" * 5000 + "}"
    assert await ask(handlers, req) == (6, "the network configuration on stdin nests too deeply to read")


@pytest.mark.parametrize(("command", "version", "since"), [
    ("GC", "1.0.0", "1.1.0"), ("STATUS", "0.4.0", "1.1.0"), ("CHECK", "0.3.1", "0.4.0"),
])
async def test_a_command_newer_than_the_config_version_is_code_1(cni_agent, command, version, since):
    """As libcni refuses them: a 0.3.1 configuration knows no CHECK, a 1.0.0 one no GC."""
    _, handlers = cni_agent
    code, msg = await ask(handlers, request(command, cniVersion=version,
                                            **{"cni.dev/valid-attachments": []}))
    assert (code, msg) == (1, f"cniVersion {version} does not allow {command}: it came in CNI {since}")


@pytest.mark.parametrize("attachment", [{"containerid": "c1", "ifname": "eth0"}, {"ifname": "eth0"},
                                        {"containerID": 5, "ifname": "eth0"}, {"containerID": "c1"}])
async def test_gc_with_a_malformed_attachment_is_code_7_and_releases_nothing(cni_agent, attachment):
    """An entry without its containerID kept no one's addresses: GC released those of the very
    pod it listed, while the pod ran."""
    store, handlers = cni_agent
    assert (await ask(handlers, request(plugin="percale-ipam")))[0] == 0
    gc = request("GC", cniVersion="1.1.0", **{"cni.dev/valid-attachments": [attachment]})
    code, msg = await ask(handlers, gc)
    assert code == 7 and "cni.dev/valid-attachments[0]." in msg, msg
    assert [kv.key.name for kv in (await store.list("IPAMHandle")).items] == ["k8s-pod-network.c1"]


async def test_a_second_percale_ipam_add_of_the_container_is_code_102_and_takes_nothing(cni_agent):
    """host-local refuses a duplicate too. percale-ipam gave the container a second address
    under its handle; when the main plugin's second ADD (ptp's) then failed, it called this
    plugin's DEL, which freed the running pod's address with it. (The same container on another
    CNI_IFNAME is another attachment: test_cni_release.py.)"""
    store, handlers = cni_agent
    code, out = await ask(handlers, request(plugin="percale-ipam"))
    assert code == 0, out
    first = json.loads(out)["ips"][0]["address"].split("/")[0]
    code, msg = await ask(handlers, request(plugin="percale-ipam"))
    assert code == 102, msg
    assert all(w in msg for w in ("container c1 already holds", first, "k8s-pod-network.c1",
                                  "for eth0", "DEL it before adding it again")), msg
    assert await IPAM(store).ips_by_handle("k8s-pod-network.c1") == [first]
    assert await ask(handlers, request("DEL", plugin="percale-ipam")) == (0, "")
    assert (await ask(handlers, request(plugin="percale-ipam")))[0] == 0
