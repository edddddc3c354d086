"""containerlab topology files (`*.clab.yml`), read into plain data (pure: no side effects).

The subset percale's runner honours, with containerlab's meaning (exabgp.md §3.1):
  name, prefix, mgmt.{network, ipv4-subnet}
  topology.defaults / topology.kinds.<kind> / topology.nodes.<name> — merged in that order:
    kind, image, cmd, exec, env, binds, mgmt-ipv4, healthcheck, stages.<stage>.wait-for, labels
  topology.links: the brief form `endpoints: ["a:eth1", "b:eth1"]` (optional `mtu`), and the
    extended `type: veth` form with endpoints {node, interface, mac, ipv4, ipv6}
  kind `bridge` (and `ovs-bridge`) nodes: a switch that links join as ports; kind `linux`: a
    host running its `cmd` and `exec` commands; other kinds (a vendor's NOS) are refused.
    `__clabNodeDir__` and `__clabDir__` in binds expand to the node's and the lab's directories,
    as containerlab expands them.

Everything else in the file is accepted and ignored (so files written for containerlab load),
except what would make the runner do something other than containerlab would: those are errors
naming the field. So are what the runner could only fail on halfway through `up`: names no
network namespace or interface can have, a MAC address that is none, a NUL byte where a command
line or environment would carry it, a healthcheck time no clock takes, a management address two
nodes share, and a key given twice (YAML would silently keep the last, dropping a node).
"""

from __future__ import annotations

import ipaddress
import itertools
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

DEFAULT_MGMT_SUBNET = "172.20.20.0/24"  # containerlab's default management network
DEFAULT_MTU = 9500  # containerlab's default for veth links
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
# Linux refuses '/', ':' and white space in an interface name, '.' and '..', and more than 15
# bytes (IFNAMSIZ); `ip` reads ':' as an alias label.
_IFNAME = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")
_MAC = re.compile(r"^[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){5}$")
# Device names Linux keeps: every namespace has `lo`, and `all` and `default` name the sysctl
# directories beside each device's (/proc/sys/net/ipv4/conf/all): `ip link add` refuses them.
KEPT_IFNAMES = ("lo", "all", "default")
# The runner's own files in the lab directory, beside one directory per node (lab/runner.py):
# a node of one of these names would collide with them.
STATE_FILE, STATE_LOCK, STATE_TEMPORARY = "state.json", "state.lock", "state.tmp"
STATE_FILES = (STATE_FILE, STATE_LOCK, STATE_TEMPORARY)
BRIDGE_KINDS = ("bridge", "ovs-bridge")
KINDS = ("linux", *BRIDGE_KINDS)  # what the runner implements (see the module docstring)
# The longest healthcheck time (start-period, interval, timeout) taken, in seconds: a day is
# longer than any lab waits for a node, and an infinite or huge value overflows time.sleep and
# subprocess's timeout halfway through `up` ("timestamp too large").
MAX_HEALTHCHECK_SECONDS = 86400
# A network namespace is a file /var/run/netns/NAME, and each node's log is
# <lab dir>/<node>/<node>.log: every such name is at most NAME_MAX bytes.
NAME_MAX = 255


class TopologyError(ValueError):
    """The topology file cannot be run; the message names the file, the field and the reason."""


@dataclass(frozen=True)
class Healthcheck:
    test: str  # a shell command; healthy when it exits 0
    start_period: float = 0.0
    interval: float = 1.0
    timeout: float = 5.0
    retries: int = 60


@dataclass(frozen=True)
class Node:
    name: str
    kind: str
    image: str = ""
    cmd: str = ""
    exec: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    binds: tuple[tuple[str, str], ...] = ()  # (host path, path in the node)
    mgmt_ipv4: str | None = None
    healthcheck: Healthcheck | None = None
    wait_for: tuple[str, ...] = ()  # nodes that must be healthy (or started) first
    labels: dict[str, str] = field(default_factory=dict)

    @property
    def is_bridge(self) -> bool:
        return self.kind in BRIDGE_KINDS


@dataclass(frozen=True)
class Endpoint:
    node: str
    interface: str
    mac: str | None = None
    ipv4: str | None = None
    ipv6: str | None = None


@dataclass(frozen=True)
class Link:
    a: Endpoint
    b: Endpoint
    mtu: int = DEFAULT_MTU


@dataclass(frozen=True)
class Topology:
    name: str
    path: Path
    prefix: str
    mgmt_subnet: ipaddress.IPv4Network
    nodes: dict[str, Node]
    links: tuple[Link, ...]

    def namespace(self, node: str) -> str:
        """The node's network namespace, named as containerlab names the node's container."""
        return _namespace_name(self.prefix, self.name, node)

    @property
    def mgmt_namespace(self) -> str:
        return _mgmt_namespace_name(self.prefix, self.name)

    def start_order(self) -> list[Node]:
        """Hosts in file order, each after the nodes it waits for."""
        done: list[Node] = []
        seen: set[str] = set()

        def visit(node: Node, path: tuple[str, ...]) -> None:
            if node.name in seen:
                return
            if node.name in path:
                raise TopologyError(f"{self.path}: stages.wait-for: {' -> '.join(path + (node.name,))}"
                                    " is a cycle")
            for other in node.wait_for:
                visit(self.nodes[other], path + (node.name,))
            seen.add(node.name)
            done.append(node)

        for node in self.nodes.values():
            if not node.is_bridge:
                visit(node, ())
        return done

    @property
    def mgmt_gateway(self) -> ipaddress.IPv4Address:
        """The management network's gateway: its first host address (.1), as Docker's."""
        # parse refuses a /32, the one subnet whose hosts() is a list, not an iterator
        return next(self.mgmt_subnet.hosts())

    def mgmt_addresses(self) -> dict[str, ipaddress.IPv4Interface]:
        """Every host's management address: its mgmt-ipv4, or the next free one (as Docker
        hands them out); .1 is the gateway."""
        subnet = self.mgmt_subnet
        # Every explicit address is taken before any is handed out, so a node's free address
        # is never one a later node asks for.
        taken = {ipaddress.ip_address(n.mgmt_ipv4) for n in self.nodes.values() if n.mgmt_ipv4}
        # Lazily: a /8 has 16 million hosts, and a list of them exhausted memory.
        free = (a for a in itertools.islice(subnet.hosts(), 1, None) if a not in taken)
        found = {}
        for node in self.nodes.values():
            if node.is_bridge:
                continue
            address = ipaddress.ip_address(node.mgmt_ipv4) if node.mgmt_ipv4 else next(free, None)
            if address is None:
                raise TopologyError(f"{self.path}: mgmt.ipv4-subnet: {subnet} has no address left "
                                    f"for node {node.name!r}")
            found[node.name] = ipaddress.IPv4Interface(f"{address}/{subnet.prefixlen}")
        return found


def _namespace_name(prefix: str, lab: str, node: str) -> str:
    return f"{prefix}-{lab}-{node}" if prefix else node


def _mgmt_namespace_name(prefix: str, lab: str) -> str:
    # Without a prefix a node's namespace is its bare name; the management network's cannot be
    # (`mgmt` in every such lab, so two could not run together): it is named by the lab.
    return _namespace_name(prefix, lab, "mgmt") if prefix else f"{lab}-mgmt"


def load(path: str | Path) -> Topology:
    """Read and check a topology file; raises TopologyError naming the field."""
    path = Path(path)
    return parse(_read_yaml(_read_text(path), path), path)


def load_lab_only(path: str | Path) -> Topology:
    """The lab a file names (its name and prefix, checked as `load` checks them), with no nodes
    or links, and nothing else in the file read: what `down` needs (the lab's directory and its
    namespaces' names) to remove a lab whose file no longer validates (edited after `up`, or
    written for an older percale). TopologyError when not even those can be read."""
    path = Path(path)
    try:
        data = yaml.safe_load(_read_text(path))
    except yaml.YAMLError as err:
        raise TopologyError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise TopologyError(f"{path}: a topology is a mapping with name and topology")
    name, prefix = _lab_name_and_prefix(data, lambda field_name, reason: TopologyError(
        f"{path}: {field_name}: {reason}"))
    return Topology(name, path.resolve(), prefix, ipaddress.IPv4Network(DEFAULT_MGMT_SUBNET),
                    {}, ())


def _read_text(path: Path) -> str:
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise TopologyError(f"{path}: {err.strerror}") from None
    try:
        return raw.decode("utf-8")  # as containerlab reads it
    except UnicodeDecodeError as err:
        raise TopologyError(f"{path}: not UTF-8 text (byte {err.start}: {err.reason})") from None


def _read_yaml(text: str, path: Path) -> Any:
    """`yaml.safe_load`, refusing a key given twice in one mapping: YAML keeps the last, so a
    node written twice (or an env variable, a link field) would silently lose the first."""
    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
        if root is None:
            return None
        _refuse_duplicate_keys(loader, root, path, "", set())
        return loader.construct_document(root)
    except yaml.YAMLError as err:
        raise TopologyError(f"{path}: not valid YAML: {err}") from None
    finally:
        loader.dispose()


def _refuse_duplicate_keys(loader: yaml.SafeLoader, node: yaml.Node, path: Path, where: str,
                           seen: set[int]) -> None:
    if id(node) in seen:  # an alias: its anchor's node, checked once (and perhaps recursive)
        return
    seen.add(id(node))
    if isinstance(node, yaml.MappingNode):
        lines: dict = {}
        for key_node, value_node in node.value:
            child = where
            # `<<: *anchor` merges: a key it brings may be overridden, as YAML means it to be.
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                key = loader.construct_object(key_node)
                child = f"{where}.{key}" if where else str(key)
                line = key_node.start_mark.line + 1
                if key in lines:
                    raise TopologyError(f"{path}: {child}: is given twice (lines {lines[key]} and "
                                        f"{line}); YAML would keep only the last")
                lines[key] = line
            _refuse_duplicate_keys(loader, value_node, path, child, seen)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _refuse_duplicate_keys(loader, item, path, f"{where}[{i}]", seen)


def netns_name_problem(name: str) -> str | None:
    """Why `ip netns add NAME` would refuse the name (a phrase following "its namespace name"),
    or None."""
    if name in ("", ".", "..") or "/" in name:
        return f"{name!r} is no file name (not '.' or '..', no '/')"
    if len(name.encode()) > NAME_MAX:
        return (f"would be {len(name.encode())} bytes long; a network namespace name has at "
                f"most {NAME_MAX}")
    return None


def _as_string(value: Any) -> Any:
    """A name as containerlab reads it, into a Go string: YAML's `1:` is the name "1". Other
    values are returned as they are, for the caller to refuse."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    return value


def _lab_name_and_prefix(data: dict, fail) -> tuple[str, str]:
    name = _as_string(data.get("name"))
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise fail("name", "must be a name of letters, digits, '-', '_' or '.'")
    if len(name.encode()) > NAME_MAX:  # the lab's directory is named by it
        raise fail("name", f"is {len(name.encode())} bytes long; at most {NAME_MAX}")
    prefix = _as_string(data.get("prefix", "clab"))
    if prefix == "__lab-name":
        prefix = name
    # It begins every namespace name, as it begins every container name in containerlab, where
    # Docker allows these characters; "" names the namespaces by the nodes alone.
    if not isinstance(prefix, str) or (prefix and not _NAME.fullmatch(prefix)):
        raise fail("prefix", f"{prefix!r} is not empty or a name of letters, digits, '-', '_' "
                             "or '.'")
    if problem := netns_name_problem(_mgmt_namespace_name(prefix, name)):
        raise fail("name", f"the management network's namespace name {problem}")
    return name, prefix


def parse(data: Any, path: Path) -> Topology:
    where = str(path)

    def fail(field_name: str, reason: str) -> TopologyError:
        return TopologyError(f"{where}: {field_name}: {reason}")

    if not isinstance(data, dict):
        raise TopologyError(f"{where}: a topology is a mapping with name and topology")
    name, prefix = _lab_name_and_prefix(data, fail)
    mgmt = data.get("mgmt") or {}
    if not isinstance(mgmt, dict):
        raise fail("mgmt", "must be a mapping")
    subnet_text = mgmt.get("ipv4-subnet", DEFAULT_MGMT_SUBNET)
    if not isinstance(subnet_text, str):  # IPv4Network(5) would be 0.0.0.5/32
        raise fail("mgmt.ipv4-subnet", f"{subnet_text!r} is not a subnet such as {DEFAULT_MGMT_SUBNET}")
    try:
        subnet = ipaddress.IPv4Network(subnet_text)
    except ValueError as err:
        raise fail("mgmt.ipv4-subnet", str(err)) from None
    if subnet.prefixlen > 31:  # the gateway would be the only address: no room for a node
        raise fail("mgmt.ipv4-subnet", f"{subnet} has no address beside its gateway's (/31 or shorter)")
    topology = data.get("topology")
    if not isinstance(topology, dict) or not isinstance(topology.get("nodes"), dict) \
            or not topology["nodes"]:
        raise fail("topology.nodes", "must name at least one node")
    defaults = _mapping(topology.get("defaults"), "topology.defaults", fail)
    kinds = _mapping(topology.get("kinds"), "topology.kinds", fail)
    nodes = {}
    written: dict[str, Any] = {}  # each node's name as the file wrote it
    for key, spec in topology["nodes"].items():
        node_name = _as_string(key)
        field_name = f"topology.nodes.{node_name}"
        if isinstance(node_name, bool) or node_name is None:
            # yes, no, on, off, true, false, null, ~: YAML 1.1 reads them as no string at all.
            raise fail(field_name, f"YAML reads it as {node_name}, not as a name: quote it")
        if not isinstance(node_name, str) or not _NAME.fullmatch(node_name):
            raise fail(field_name, "a node name is letters, digits, '-', '_' or '.'")
        if node_name in written:  # 1 and "1": two keys to YAML, one name to containerlab
            raise fail(field_name, f"is given twice (as {written[node_name]!r} and {key!r})")
        written[node_name] = key
        if node_name in STATE_FILES:
            raise fail(field_name, f"{node_name!r} is the name of the lab's state file (the lab "
                                   "directory holds it beside a directory per node)")
        if problem := netns_name_problem(_namespace_name(prefix, name, node_name)):
            raise fail(field_name, f"its namespace name {problem}")
        if len(f"{node_name}.log".encode()) > NAME_MAX:
            raise fail(field_name, f"a node name is at most {NAME_MAX - 4} bytes (its log is "
                                   "<node>/<node>.log)")
        spec = _mapping(spec, field_name, fail)
        kind = spec.get("kind", defaults.get("kind"))
        if not isinstance(kind, str):
            raise fail(f"{field_name}.kind", "is missing")
        if kind not in KINDS:
            # Run as a plain Linux host, a vendor's NOS would not be what containerlab runs.
            raise fail(f"{field_name}.kind", f"{kind!r} is not a kind this runner implements "
                                             f"({', '.join(KINDS)})")
        if kind in BRIDGE_KINDS and node_name[:15] in KEPT_IFNAMES:
            raise fail(field_name, f"a bridge's device is named as its node, and "
                                   f"{node_name[:15]!r} is a name Linux keeps for itself")
        kind_field = f"topology.kinds.{kind}"
        layers = ((defaults, "topology.defaults"),
                  (_mapping(kinds.get(kind), kind_field, fail), kind_field), (spec, field_name))
        for layer, layer_name in layers:
            for key in ("env", "labels"):  # merged key by key, so each layer's must be a mapping
                _mapping(layer.get(key), f"{layer_name}.{key}", fail)
        merged = _merge(*(layer for layer, _ in layers))
        nodes[node_name] = _node(node_name, kind, merged, path, field_name, fail)
    for node in nodes.values():
        for other in node.wait_for:
            if other not in nodes:
                raise fail(f"topology.nodes.{node.name}.stages", f"waits for unknown node {other!r}")
    links = tuple(_link(i, link, nodes, fail)
                  for i, link in enumerate(_list(topology.get("links"), "topology.links", fail)))
    _unique_interfaces(links, fail)
    if "mgmt" in nodes:
        raise fail("topology.nodes.mgmt", "'mgmt' is the management network's name here")
    parsed = Topology(name, path.resolve(), prefix, subnet, nodes, links)
    for node_name in nodes:
        if parsed.namespace(node_name) == parsed.mgmt_namespace:
            raise fail(f"topology.nodes.{node_name}",
                       f"its namespace {parsed.mgmt_namespace!r} is the management network's")
    reserved = {subnet.network_address, parsed.mgmt_gateway}
    if subnet.prefixlen < 31:  # RFC 3021: a /31 has no broadcast address, both are hosts'
        reserved.add(subnet.broadcast_address)
    owners: dict[ipaddress.IPv4Address, str] = {}
    for node in nodes.values():
        if node.mgmt_ipv4:
            mgmt_field = f"topology.nodes.{node.name}.mgmt-ipv4"
            try:
                address = ipaddress.IPv4Address(node.mgmt_ipv4)
            except ValueError as err:
                raise fail(mgmt_field, str(err)) from None
            if address not in subnet or address in reserved:
                raise fail(mgmt_field,
                           f"{address} is not a host address of {subnet} other than its gateway")
            if not node.is_bridge:  # a bridge has no management interface: its address is unused
                # Two nodes with one address on the management bridge answer each other's ARP.
                if address in owners:
                    raise fail(mgmt_field, f"{address} is already used by "
                                           f"topology.nodes.{owners[address]}")
                owners[address] = node.name
    parsed.start_order()  # cycles are errors now, not halfway through `up`
    parsed.mgmt_addresses()
    return parsed


def _mapping(value: Any, field_name: str, fail) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise fail(field_name, "must be a mapping")
    return value


def _list(value: Any, field_name: str, fail) -> list:
    if value is None:
        return []
    if not isinstance(value, list):
        raise fail(field_name, "must be a list")
    return value


def _merge(*layers: dict) -> dict:
    """containerlab's inheritance: later layers win; env and labels merge key by key; binds and
    exec from the most specific layer that has them."""
    merged: dict = {}
    for layer in layers:
        for key, value in layer.items():
            if key in ("env", "labels") and isinstance(value, dict):
                merged[key] = {**(merged.get(key) or {}), **value}
            else:
                merged[key] = value
    return merged


def _string(value: Any) -> str:
    """An env or label value as containerlab reads it into a Go string: null is empty, a boolean
    is written lower-case."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _no_nul(value: str, field_name: str, fail) -> str:
    """A string the runner passes in a command line or an environment, where the kernel's
    strings end at a NUL byte: Popen refuses it, halfway through `up`."""
    if "\0" in value:
        raise fail(field_name, "holds a NUL byte, which no command line or environment can carry")
    return value


def _node(name: str, kind: str, spec: dict, path: Path, field_name: str, fail) -> Node:
    def text(key: str) -> str:
        value = spec.get(key, "")
        if isinstance(value, list):  # containerlab accepts cmd as a list too
            value = shlex.join(str(v) for v in value)
        if not isinstance(value, str):
            raise fail(f"{field_name}.{key}", "must be a string")
        return value

    commands = spec.get("exec") or []
    if not isinstance(commands, list) or not all(isinstance(c, str) for c in commands):
        raise fail(f"{field_name}.exec", "must be a list of commands")
    for i, command in enumerate(commands):
        _no_nul(command, f"{field_name}.exec[{i}]", fail)
    env = spec.get("env") or {}
    if not isinstance(env, dict):
        raise fail(f"{field_name}.env", "must be a mapping of names to values")
    env = {_string(k): _string(v) for k, v in env.items()}
    for key, value in env.items():
        # execve takes NAME=VALUE: a name with '=' (or none) would be another variable's.
        if not key or "=" in key or "\0" in key:
            raise fail(f"{field_name}.env", f"{key!r} is not a variable name (it is empty or "
                                            "holds '=' or a NUL byte)")
        _no_nul(value, f"{field_name}.env.{key}", fail)
    labels = spec.get("labels") or {}
    if not isinstance(labels, dict):
        raise fail(f"{field_name}.labels", "must be a mapping of names to values")
    binds = []
    for i, bind in enumerate(_list(spec.get("binds"), f"{field_name}.binds", fail)):
        # A bind's host path replaces its node path in cmd, exec and env.
        parts = _no_nul(str(bind), f"{field_name}.binds[{i}]", fail).split(":")
        if len(parts) not in (2, 3) or not parts[1].startswith("/"):
            raise fail(f"{field_name}.binds[{i}]", f"{bind!r} is not HOST:/PATH[:ro]")
        host = parts[0]
        if not host.startswith("/") and "__clab" not in host:
            host = str((path.parent / host).resolve())  # relative to the topology file
        binds.append((host, parts[1].rstrip("/") or "/"))
    healthcheck = None
    if spec.get("healthcheck") is not None:
        healthcheck = _healthcheck(spec["healthcheck"], f"{field_name}.healthcheck", fail)
    wait_for = []
    stages = _mapping(spec.get("stages"), f"{field_name}.stages", fail)
    for stage, body in stages.items():
        body = _mapping(body, f"{field_name}.stages.{stage}", fail)
        waits = _list(body.get("wait-for"), f"{field_name}.stages.{stage}.wait-for", fail)
        for i, wait in enumerate(waits):
            other = _as_string(wait.get("node")) if isinstance(wait, dict) else None
            if not isinstance(other, str):
                raise fail(f"{field_name}.stages.{stage}.wait-for[{i}]", "needs a node")
            wait_for.append(other)
    mgmt = spec.get("mgmt-ipv4")
    if kind in BRIDGE_KINDS and (spec.get("cmd") or commands):
        raise fail(field_name, f"a {kind} node runs no commands")
    return Node(name, kind, str(spec.get("image", "")),
                _no_nul(text("cmd"), f"{field_name}.cmd", fail), tuple(commands), env,
                tuple(binds), str(mgmt) if mgmt else None, healthcheck, tuple(wait_for),
                {_string(k): _string(v) for k, v in labels.items()})


def _healthcheck(spec: Any, field_name: str, fail) -> Healthcheck:
    spec = _mapping(spec, field_name, fail)
    test = spec.get("test")
    if isinstance(test, list) and test and test[0] in ("CMD", "CMD-SHELL"):
        test = (test[1] if test[0] == "CMD-SHELL" and len(test) == 2
                else shlex.join(map(str, test[1:])))
    if not isinstance(test, str) or not test:
        raise fail(f"{field_name}.test", "must be a command (a string, or [CMD-SHELL, ...])")
    _no_nul(test, f"{field_name}.test", fail)
    seconds = {}
    for key, default in (("start-period", 0.0), ("interval", 1.0), ("timeout", 5.0)):
        value = spec.get(key, default)
        # bool is an int to Python; YAML's .inf is past the bound and .nan compares false.
        if isinstance(value, bool) or not isinstance(value, (int, float)) \
                or not 0 <= value <= MAX_HEALTHCHECK_SECONDS:
            raise fail(f"{field_name}.{key}", f"must be a number of seconds from 0 to "
                                              f"{MAX_HEALTHCHECK_SECONDS} (a day)")
        seconds[key.replace("-", "_")] = value
    retries = spec.get("retries", 60)
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise fail(f"{field_name}.retries", "must be a whole number of tries, 0 or more")
    return Healthcheck(test, seconds["start_period"], seconds["interval"], seconds["timeout"],
                       retries)


def _endpoint(value: Any, field_name: str, nodes: dict[str, Node], fail) -> Endpoint:
    if isinstance(value, str):
        node, sep, interface = value.partition(":")
        value = {"node": node, "interface": interface} if sep else {}
    if not isinstance(value, dict) or not value.get("node") or not value.get("interface"):
        raise fail(field_name, "an endpoint is NODE:INTERFACE")
    node, interface = str(value["node"]), str(value["interface"])
    if node not in nodes:
        raise fail(field_name, f"no node named {node!r}")
    if not _IFNAME.fullmatch(interface) or interface in (".", ".."):
        raise fail(field_name, f"{interface!r} is not an interface name (at most 15 characters: "
                               "letters, digits, '_', '-' and '.'; not '.' or '..')")
    if interface == "lo":
        raise fail(field_name, "lo is the node's loopback interface")
    if interface in KEPT_IFNAMES:
        raise fail(field_name, f"{interface!r} is a name Linux keeps for itself (the sysctl "
                               f"directory /proc/sys/net/ipv4/conf/{interface} is named so)")
    if interface == "eth0" and not nodes[node].is_bridge:
        raise fail(field_name, "eth0 is the node's management interface")
    if nodes[node].is_bridge and interface == node[:15]:
        raise fail(field_name, f"{interface} is the name of bridge {node}'s own device")
    mac = value.get("mac")
    if mac is not None and (not isinstance(mac, str) or not _unicast_mac(mac)):
        raise fail(f"{field_name}.mac", f"{mac!r} is not a unicast MAC address, such as "
                                        "'02:00:00:00:00:01' (quoted: YAML reads some as numbers)")
    for family in ("ipv4", "ipv6"):
        if value.get(family) is not None:
            try:
                ipaddress.ip_interface(str(value[family]))
            except ValueError as err:
                raise fail(f"{field_name}.{family}", str(err)) from None
    return Endpoint(node, interface, mac, value.get("ipv4"), value.get("ipv6"))


def _unicast_mac(mac: str) -> bool:
    """What the kernel takes as a veth's address: six octets, not multicast, not all zero."""
    return bool(_MAC.fullmatch(mac)) and not int(mac[:2], 16) & 1 and int(mac.replace(":", ""), 16) != 0


def _link(i: int, spec: Any, nodes: dict[str, Node], fail) -> Link:
    field_name = f"topology.links[{i}]"
    spec = _mapping(spec, field_name, fail)
    if spec.get("type", "veth") != "veth":
        raise fail(f"{field_name}.type", f"{spec['type']!r} links are not supported here (veth only)")
    endpoints = spec.get("endpoints")
    if not isinstance(endpoints, list) or len(endpoints) != 2:
        raise fail(f"{field_name}.endpoints", "a link has two endpoints")
    a, b = (_endpoint(e, f"{field_name}.endpoints[{j}]", nodes, fail) for j, e in enumerate(endpoints))
    if a.node == b.node:
        raise fail(f"{field_name}.endpoints", "both ends are on one node")
    mtu = spec.get("mtu", DEFAULT_MTU)
    if not isinstance(mtu, int) or not 68 <= mtu <= 65535:
        raise fail(f"{field_name}.mtu", "must be a number from 68 to 65535")
    return Link(a, b, mtu)


def _unique_interfaces(links: tuple[Link, ...], fail) -> None:
    seen: dict[tuple[str, str], int] = {}
    for i, link in enumerate(links):
        for end in (link.a, link.b):
            key = (end.node, end.interface)
            if key in seen:
                raise fail(f"topology.links[{i}]",
                           f"{end.node}:{end.interface} is already used by topology.links[{seen[key]}]")
            seen[key] = i
