"""`percalectl lab`: containerlab topology files run on network namespaces (percale/lab/).

Needs root (namespaces) but no datastore of its own: the lab brings its etcd as a node.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path
from typing import Annotated

import typer

from percale.ctl.printer import tabwrite

lab_app = typer.Typer(
    help="Run containerlab topologies (*.clab.yml) on network namespaces: nodes, links, pods.",
    no_args_is_help=True)

TopologyOption = Annotated[Path, typer.Option("--topo", "-t", help="The topology file (*.clab.yml)")]


def _lab(topology: Path):
    from percale.lab.runner import open_lab
    from percale.lab.topology import TopologyError

    try:
        return open_lab(topology)
    except TopologyError as err:
        typer.echo(f"Error: {err}", err=True)
        raise typer.Exit(1) from None


def _run(work):
    """Run `work`, turning lab failures into a one-line error and exit 1."""
    from percale.lab.runner import LabError

    try:
        return work()
    except LabError as err:
        typer.echo(f"Error: {err}", err=True)
        raise typer.Exit(1) from None


def _fail(message: str) -> None:
    typer.echo(f"Error: {message}", err=True)
    raise typer.Exit(1)


def _command(command: list[str]) -> list[str]:
    """The command after NODE or POD, without the `--` that may mark where it begins: options
    end at NODE (so the command's own pass through), which leaves the `--` in the command."""
    return command[1:] if command[:1] == ["--"] else command


class CommandStatus(SystemExit):
    """The exit status of a command `lab exec` ran, passed on as it is: percalectl's main()
    turns Click's usage errors (2) into calicoctl's 1, and a command's own 2 (grep's, diff's)
    must not go with them."""


def _exit_status(returncode: int) -> int:
    """A command's end as a shell reports it: a signal N is 128 + N (subprocess says -N, which
    an exit status would wrap to 256 - N: 247 for SIGKILL)."""
    return 128 - returncode if returncode < 0 else returncode


@lab_app.command()
def up(topology: TopologyOption) -> None:
    """Create the lab: namespaces, links, the management network, every node's processes."""
    lab = _lab(topology)
    # Ctrl-C or SIGTERM halfway: `up` removes what it made before exiting.
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        _run(lambda: lab.up(progress=lambda m: typer.echo(f"lab {lab.topology.name}: {m}")))
    except KeyboardInterrupt:
        typer.echo(f"lab {lab.topology.name}: interrupted; everything it made is removed", err=True)
        raise typer.Exit(130) from None
    _print_status(lab)


@lab_app.command()
def down(topology: TopologyOption) -> None:
    """Stop every process of the lab and remove its namespaces (also after a crash, and when
    the file no longer validates: then by its name and prefix and what the lab recorded)."""
    from percale.lab.runner import Lab, open_lab
    from percale.lab.topology import TopologyError, load_lab_only

    try:
        lab = open_lab(topology)
    except TopologyError as err:
        # Edited after `up`, or written for an older percale: what `up` made is in the lab's
        # state, which the file's name finds; refusing would leave the lab neither down nor up.
        try:
            lab = Lab(load_lab_only(topology))
        except TopologyError as name_err:
            typer.echo(f"Error: {name_err}", err=True)
            raise typer.Exit(1) from None
        typer.echo(f"lab {lab.topology.name}: {err}; bringing down what {lab.state_file} "
                   "records", err=True)
    removed = lab.down()
    typer.echo(f"lab {lab.topology.name}: removed {len(removed)} namespaces")


@lab_app.command()
def status(topology: TopologyOption) -> None:
    """Each node's namespace, state, management address and processes; the pods."""
    lab = _lab(topology)
    _print_status(lab)
    if not lab.is_up():
        raise typer.Exit(1)


def _print_status(lab) -> None:
    from percale.lab import pods

    rows = [["NAME", "KIND", "IMAGE", "STATE", "IPV4 ADDRESS", "PIDS"]]
    for row in lab.status():
        rows.append([row["name"], row["kind"], row["image"] or "-", row["state"],
                     row["ipv4"] or "-", ",".join(map(str, row["pids"])) or "-"])
    typer.echo(tabwrite(rows), nl=False)
    found = pods.pods(lab)
    if found:
        typer.echo()
        table = [["POD", "NODE", "ADDRESSES", "NAMESPACE"]]
        table += [[p.name, p.node, ",".join(p.addresses), p.namespace] for p in found]
        typer.echo(tabwrite(table), nl=False)


@lab_app.command(name="exec", context_settings={"allow_interspersed_args": False})
def exec_(topology: TopologyOption,
          node: Annotated[str, typer.Argument(help="The node to run the command in")],
          command: Annotated[list[str], typer.Argument(help="The command and its arguments")]) -> None:
    """Run a command in a node, with its environment (e.g. `percalectl node status`)."""
    lab = _lab(topology)
    # Paths inside the node (a bind's target, e.g. BIRD's socket) mean their host paths there:
    # Lab.exec rewrites them.
    done = _run(lambda: lab.exec(node, _command(command)))
    raise CommandStatus(_exit_status(done.returncode))


@lab_app.command()
def stop(topology: TopologyOption, node: Annotated[str, typer.Argument()],
         kill: Annotated[bool, typer.Option(help="SIGKILL instead of SIGTERM")] = False) -> None:
    """Stop a node's processes (its agent, for a percale node); the namespace stays."""
    lab = _lab(topology)
    _run(lambda: (lab.node(node), lab.stop(node, signal.SIGKILL if kill else signal.SIGTERM)))
    typer.echo(f"{node}: stopped")


@lab_app.command()
def start(topology: TopologyOption, node: Annotated[str, typer.Argument()]) -> None:
    """Start a stopped node's processes again."""
    lab = _lab(topology)
    _run(lambda: lab.start(node))
    typer.echo(f"{node}: started")


pod_app = typer.Typer(help="Pods: namespaces wired by a node's CNI plugins.", no_args_is_help=True)
lab_app.add_typer(pod_app, name="pod")


@pod_app.command("add")
def pod_add(topology: TopologyOption, node: Annotated[str, typer.Argument()],
            name: Annotated[str, typer.Argument(help="The pod's name (unique in the lab)")],
            namespace: Annotated[str, typer.Option(
                "--namespace", "-n", help="Its Kubernetes namespace")] = "default",
            label: Annotated[list[str], typer.Option(
                "--label", "-l", help="A label KEY=VALUE (repeat for more); policy selects by them")] = [],
            port: Annotated[list[str], typer.Option(
                "--port", help="A named port NAME=PROTOCOL/PORT, e.g. serve-80-tcp=TCP/80 (repeat)")] = []) -> None:
    """Create a pod on a node: a namespace and a CNI ADD, as a container runtime does."""
    from percale.lab import pods

    lab = _lab(topology)
    labels, ports = [], []
    for item in label:
        key, sep, value = item.partition("=")
        if not sep or not key:
            _fail(f"--label {item!r}: expected KEY=VALUE")
        labels.append((key, value))
    for item in port:
        port_name, sep, rest = item.partition("=")
        protocol, slash, number = rest.partition("/")
        if not sep or not slash or not number.isdigit():
            _fail(f"--port {item!r}: expected NAME=PROTOCOL/PORT, e.g. serve-80-tcp=TCP/80")
        ports.append((port_name, protocol.upper(), int(number)))
    meta = pods.PodMeta(namespace, tuple(sorted(labels)), tuple(ports))
    pod = _run(lambda: pods.add(lab, node, name, meta))
    typer.echo(f"{pod.name} on {pod.node}: {', '.join(pod.addresses)}")


@pod_app.command("del")
def pod_del(topology: TopologyOption, name: Annotated[str, typer.Argument()]) -> None:
    """Delete a pod: a CNI DEL, then its namespace."""
    from percale.lab import pods

    lab = _lab(topology)
    _run(lambda: pods.delete(lab, name))
    typer.echo(f"{name}: deleted")


@pod_app.command("list")
def pod_list(topology: TopologyOption) -> None:
    """The lab's pods."""
    from percale.lab import pods

    lab = _lab(topology)
    table = [["POD", "NODE", "ADDRESSES", "NAMESPACE"]]
    table += [[p.name, p.node, ",".join(p.addresses), p.namespace] for p in pods.pods(lab)]
    typer.echo(tabwrite(table), nl=False)


@pod_app.command("exec", context_settings={"allow_interspersed_args": False})
def pod_exec(topology: TopologyOption,
             name: Annotated[str, typer.Argument(help="The pod (NAMESPACE/NAME for a kubelet's pod "
                                                      "outside default, or its bare name when unique)")],
             command: Annotated[list[str], typer.Argument(help="The command and its arguments")],
             container: Annotated[str | None, typer.Option(
                 "--container", "-c", help="In a kubelet's pod: which container (default the first)")] = None) -> None:
    """Run a command in a pod, as `kubectl exec` does: in a lab kubelet's pod, inside the
    container (its mounts and network); in a pod `pod add` made, in its network namespace."""
    from percale.lab import pods

    lab = _lab(topology)
    prefix, env = _run(lambda: pods.exec_argv(lab, name, container))
    raise CommandStatus(_exit_status(
        subprocess.run([*prefix, *_command(command)], env=env).returncode))


@lab_app.command()
def ping(topology: TopologyOption,
         count: Annotated[int, typer.Option(min=1, help="Pings per pair")] = 1,
         wait: Annotated[float, typer.Option(min=0.1, help="Seconds to wait for each reply")] = 1.0) -> None:
    """Ping every pod from every other pod; print the matrix; exit 1 if any pair failed."""
    from percale.lab import pods

    lab = _lab(topology)
    matrix = pods.ping_matrix(lab, count, wait)
    if not matrix:
        typer.echo("no pods: add some with `percalectl lab pod add -t FILE NODE NAME`")
        raise typer.Exit(1)
    typer.echo(pods.format_matrix(lab, matrix))
    failed = sum(1 for ok in matrix.values() if not ok)
    typer.echo(f"{len(matrix) - failed}/{len(matrix)} pairs reached")
    if failed:
        sys.exit(1)


@lab_app.command("generate-mesh")
def generate_mesh(
        nodes: Annotated[int, typer.Option("--nodes", "-n", help="How many percale nodes")],
        # A str, not a Path: Path("") is the working directory, so an empty value (a script's
        # -o "$DIR" with DIR unset) could not be told from "." and wrote there.
        output_dir: Annotated[str, typer.Option("--output-dir", "-o",
                                                help="Where to write the files")] = ".",
        vxlan: Annotated[bool, typer.Option(
            "--vxlan", help="No BGP: every block through VXLAN (like vxlan3)")] = False) -> None:
    """Write a node-to-node mesh topology of N nodes (like mesh3, or vxlan3 with --vxlan) and
    its cluster.yaml; print the topology file's path."""
    from percale.lab.generate import write_mesh

    if not output_dir:
        typer.echo("Error: --output-dir: the folder name is empty", err=True)
        raise typer.Exit(1)
    try:
        path = write_mesh(nodes, Path(output_dir), vxlan=vxlan)
    except ValueError as err:
        typer.echo(f"Error: --nodes: {err}", err=True)
        raise typer.Exit(1) from None
    except OSError as err:
        typer.echo(f"Error: {output_dir}: {err.strerror}", err=True)
        raise typer.Exit(1) from None
    typer.echo(str(path))
