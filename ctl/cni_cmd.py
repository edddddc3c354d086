"""`percalectl cni install`: put the CNI plugins and their network config on a node.

This is what Calico's install-cni init container does. It copies the shim into the bin dir as
`percale` and `percale-ipam`, and the reference `portmap` plugin the conflist chains (from
Debian's containernetworking-plugins, as Calico's image carries its own copy), and writes
`10-percale.conflist` into the conf dir. It needs no
datastore. The shim is the compiled one (cni-plugin/percale_cni/shim.c, built beside percalectl
by `python -m percale_cni.build`) when it is there and current, else the Python one (shim.py)
with a shebang for the node's python; both do the same (PROTOCOL.md), the compiled one without
starting an interpreter for every pod.

A runtime may read either directory while the install runs. Every file is therefore replaced by a
rename: the runtime sees the old file or the new one, never part of one. The binaries are written
before the conflist, so a config never names a plugin that is not yet installed.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import tempfile
from pathlib import Path
from typing import Annotated, Optional

import typer
from percale_cni import build, shim

from percale.api import Node
from percale.api.fields import POD_MTU_MAX, POD_MTU_MIN
from percale.api.meta import DNS_SUBDOMAIN_RULE
from percale.ctl.context import fail

cni_app = typer.Typer(
    help="The CNI plugins: install the percale binaries and network config on this node.",
    no_args_is_help=True,
)

NETWORK_NAME = "k8s-pod-network"
CONFLIST_NAME = "10-percale.conflist"
PLUGIN_NAMES = ("percale", "percale-ipam")
# The reference plugin the conflist chains after percale (hostPort), and where Debian's
# containernetworking-plugins, in the node image as on a host set up by scripts/dev.sh, keep it.
PORTMAP = "portmap"
REFERENCE_PLUGINS = Path("/usr/lib/cni")
SHIM_KINDS = ("auto", "compiled", "python")


FLAGS = ("true", "false")


def conflist(node_name: str, agent_socket: str, mtu: int, cni_version: str,
             assign_ipv4: str = "true", assign_ipv6: str = "false", portmap: bool = True) -> dict:
    """The network config, in the shape of Calico's 10-calico.conflist: which families a pod
    gets as the operator writes them, the strings "true" and "false"; portmap chained when
    it is installed."""
    config = {
        "name": NETWORK_NAME,
        "cniVersion": cni_version,
        "plugins": [
            {"type": "percale", "nodename": node_name, "agent_socket": agent_socket, "mtu": mtu,
             "ipam": {"type": "percale-ipam", "assign_ipv4": assign_ipv4,
                      "assign_ipv6": assign_ipv6}},
            {"type": PORTMAP, "snat": True, "capabilities": {"portMappings": True}},
        ],
    }
    if not portmap:
        config["plugins"].pop()
    return config


def plugin_source(python: str) -> str:
    """The shim's source, with its first line replaced by a shebang for `python`."""
    source = Path(shim.__file__).read_text()
    body = source.split("\n", 1)[1] if source.startswith("#!") else source
    return f"#!{python} -IS\n{body}"


def write_atomically(path: Path, data: bytes, mode: int) -> None:
    """Replace `path` with `data`: write a temporary file beside it, fsync it, and rename it over
    `path`. On failure the temporary file is removed and `path` is left as it was."""
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fchmod(out.fileno(), mode)
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    # Sync the directory as well, so that the rename survives a crash.
    directory = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def plugin_file(kind: str, python: str) -> tuple[bytes, str]:
    """The plugin's bytes and what they are, for --shim `kind`."""
    compiled = build.installed_binary()
    if kind == "compiled" and compiled is None:
        raise fail(f"--shim compiled: no current {build.BINARY_NAME} beside percalectl "
                   f"(build it with: {Path(sys.executable)} -m percale_cni.build "
                   f"{Path(sys.executable).parent / build.BINARY_NAME})", "Nothing was installed.")
    if kind != "python" and compiled is not None:
        return compiled.read_bytes(), "compiled"
    return plugin_source(python).encode(), f"python, {python} -IS"




def _check(cni_version: str, agent_socket: str, python: str, node_name: str, shim_kind: str,
           mtu: int = 0, assign_ipv4: str = "true", assign_ipv6: str = "false") -> None:
    problems = []
    for option, value in (("--assign-ipv4", assign_ipv4), ("--assign-ipv6", assign_ipv6)):
        if value not in FLAGS:
            problems.append(f"{option} {value!r}: use true or false")
    if (assign_ipv4, assign_ipv6) == ("false", "false"):
        problems.append("--assign-ipv4 and --assign-ipv6 are both false: "
                        "a pod would get no address")
    if shim_kind not in SHIM_KINDS:
        problems.append(f"--shim {shim_kind!r}: use one of {', '.join(SHIM_KINDS)}")
    if cni_version not in shim.SUPPORTED_VERSIONS:
        problems.append(f"--cni-version {cni_version!r}: use one of {', '.join(shim.SUPPORTED_VERSIONS)}")
    if not os.path.isabs(agent_socket):
        problems.append(f"--agent-socket {agent_socket!r}: must be an absolute path "
                        "(the runtime runs the plugins from any directory)")
    if not os.path.isabs(python) or any(c.isspace() for c in python):
        problems.append(f"--python {python!r}: must be an absolute path without spaces "
                        "(it becomes the plugins' #! line)")
    if not node_name:
        problems.append("--node-name: must not be empty")
    elif not Node.is_valid_name(node_name):
        problems.append(f"--node-name {node_name!r}: not a node name ({DNS_SUBDOMAIN_RULE})")
    # Outside them, the config would be installed and then fail every ADD with error 7.
    if mtu and not POD_MTU_MIN <= mtu <= POD_MTU_MAX:
        problems.append(f"--mtu {mtu}: must be 0 (percale-node detects it) or {POD_MTU_MIN}-{POD_MTU_MAX}")
    if problems:
        raise fail(*problems, "Nothing was installed.")


@cni_app.command()
def install(
    bin_dir: Annotated[Path, typer.Option(help="Where the runtime looks for CNI plugins")] = Path("/opt/cni/bin"),
    conf_dir: Annotated[Path, typer.Option(help="Where the runtime looks for network configs")] = Path("/etc/cni/net.d"),
    node_name: Annotated[Optional[str], typer.Option(
        envvar="NODENAME", help="This node's name, as percale-node knows it (default: the host name, lower-cased)")] = None,
    agent_socket: Annotated[str, typer.Option(
        envvar="PERCALE_CNI_SOCKET", help="percale-node's CNI socket")] = shim.DEFAULT_SOCKET,
    mtu: Annotated[int, typer.Option(min=0, help="Pod MTU; 0 lets percale-node detect it")] = 0,
    cni_version: Annotated[str, typer.Option(help="cniVersion of the network config")] = "1.0.0",
    python: Annotated[str, typer.Option(
        help="The node's python3, written into the Python shim's #! line as '#!PYTHON -IS'")] = "/usr/bin/python3",
    shim_kind: Annotated[str, typer.Option(
        "--shim", help="Which shim: compiled (percale-cni beside percalectl), python (shim.py), "
        "or auto: compiled when it is built, else python")] = "auto",
    assign_ipv4: Annotated[str, typer.Option(
        help="Whether pods get an IPv4 address: true or false")] = "true",
    assign_ipv6: Annotated[str, typer.Option(
        help="Whether pods get an IPv6 address: true or false")] = "false",
    plugins_dir: Annotated[Path, typer.Option(
        help="Where to take the portmap plugin from (hostPort); installed into --bin-dir when "
        "it is there, else the conflist leaves portmap out unless --bin-dir has it"),
    ] = REFERENCE_PLUGINS,
) -> None:
    """Install the percale and percale-ipam plugins and 10-percale.conflist; re-running replaces them."""
    # percale-node's default, the host name lower-cased, as calico-node and the kubelet name nodes.
    node_name = socket.gethostname().strip().lower() if node_name is None else node_name
    _check(cni_version, agent_socket, python, node_name, shim_kind, mtu, assign_ipv4, assign_ipv6)
    plugin, kind = plugin_file(shim_kind, python)
    portmap = plugins_dir / PORTMAP
    has_portmap = portmap.is_file() or (bin_dir / PORTMAP).is_file()
    config = json.dumps(conflist(node_name, agent_socket, mtu, cni_version, assign_ipv4,
                                 assign_ipv6, has_portmap), indent=2) + "\n"
    step = f"create {bin_dir}"
    try:
        for directory in (bin_dir, conf_dir):
            step = f"create {directory}"
            directory.mkdir(parents=True, exist_ok=True)
        for name in PLUGIN_NAMES:
            step = f"write {bin_dir / name}"
            write_atomically(bin_dir / name, plugin, 0o755)
            typer.echo(f"Installed {bin_dir / name} ({kind})")
        if portmap.is_file() and portmap.resolve() != (bin_dir / PORTMAP).resolve():
            step = f"write {bin_dir / PORTMAP}"
            write_atomically(bin_dir / PORTMAP, portmap.read_bytes(), 0o755)
            typer.echo(f"Installed {bin_dir / PORTMAP} (from {plugins_dir})")
        elif not has_portmap:
            # A conflist naming a plugin the runtime cannot find fails every pod's sandbox.
            typer.echo(f"No {PORTMAP} in {plugins_dir} or {bin_dir}: the conflist leaves it "
                       "out, so pods' hostPort mappings are not set up")
        step = f"write {conf_dir / CONFLIST_NAME}"
        write_atomically(conf_dir / CONFLIST_NAME, config.encode(), 0o644)
    except OSError as err:
        raise fail(f"Failed to install the CNI plugins: cannot {step}: {err.strerror or err}") from None
    typer.echo(f"Wrote {conf_dir / CONFLIST_NAME} (node {node_name}, agent socket {agent_socket}, "
               f"mtu {mtu or 'detected'}, cniVersion {cni_version}, "
               f"{families(assign_ipv4, assign_ipv6)})")


def families(assign_ipv4: str, assign_ipv6: str) -> str:
    chosen = [name for name, flag in (("IPv4", assign_ipv4), ("IPv6", assign_ipv6))
              if flag == "true"]
    return " and ".join(chosen)
