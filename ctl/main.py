"""The `percalectl` command: where the datastore comes from, the resource commands, the
`ipam` command group (ctl/ipam_*.py), `cni install` and `node status` (node_cmd.py).

Bad input names the file, document, field and reason; an unreachable datastore says which
endpoints were tried; neither prints a traceback (ctl/context.py).

The datastore options go before the command or, as calicoctl takes `-c`, after it
(_DatastoreOptionsEverywhere).
"""

from __future__ import annotations

import copy
import sys
from typing import TYPE_CHECKING, Annotated, Optional

import typer
from typer.core import TyperCommand, TyperGroup

from percale.ctl import __version__
from percale.ctl import crud, ipam_check, ipam_show, lab_cmd, printer
from percale.ctl.cni_cmd import cni_app
from percale.ctl.context import fail, settings, with_datastore
from percale.ctl.documents import InputError, load, not_namespaced
from percale.ctl.ipam_app import ipam_app
from percale.ctl.lab_cmd import lab_app
from percale.ctl.node_cmd import node_app
from percale.ctl.policy_cmd import policy_app
from percale.datastore import Datastore, Key, NotFound
from percale.datastore.options import (
    ConfigFile,
    DatastoreType,
    EtcdCACertFile,
    EtcdCertFile,
    EtcdEndpoints,
    EtcdKeyFile,
    Kubeconfig,
)
from percale.api import KINDS, Resource, kind_named
from percale.api.meta import namespace_problem

if TYPE_CHECKING:
    from pathlib import Path

# The commands that read or write the datastore: each takes the datastore options after it too.
DATASTORE_COMMANDS = ("apply", "create", "replace", "delete", "patch", "get", "label", "ipam",
                      "node", "policy")


class _DatastoreOptionsEverywhere(TyperGroup):
    """percalectl's group: every command of DATASTORE_COMMANDS also takes the group's datastore
    options (`percalectl get nodes -c FILE`, calicoctl's only form); given there, an option
    wins over the same one given before the command."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for name in DATASTORE_COMMANDS:
            for command in _leaves(self.commands[name]):
                _take_datastore_options(command, self.params)


def _leaves(command: TyperCommand) -> list[TyperCommand]:
    # A group by what it has: typer builds its commands with its own copy of Click.
    if subcommands := getattr(command, "commands", None):
        return [leaf for sub in subcommands.values() for leaf in _leaves(sub)]
    return [command]


def _take_datastore_options(command: TyperCommand, options: list) -> None:
    names = [option.name for option in options]
    run = command.callback

    def callback(**values):
        given = {name: values.pop(name) for name in names}
        _settings(**{name: value for name, value in given.items() if value is not None})
        return run(**values)

    command.params = [*command.params, *(copy.copy(option) for option in options)]
    command.callback = callback


app = typer.Typer(
    name="percalectl",
    cls=_DatastoreOptionsEverywhere,
    help="Manage percale resources (IP pools, BGP peers, nodes, ...) in the datastore.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

app.add_typer(ipam_app, name="ipam")
app.add_typer(cni_app, name="cni")
app.add_typer(node_app, name="node")
app.add_typer(lab_app, name="lab")
app.add_typer(policy_app, name="policy")
# Imported for their effect: each module adds its commands to ipam_app.
_IPAM_COMMANDS = (ipam_show, ipam_check)


@app.callback()
def datastore_options(
    config: ConfigFile = None,
    datastore_type: DatastoreType = None,
    etcd_endpoints: EtcdEndpoints = None,
    etcd_ca_cert_file: EtcdCACertFile = None,
    etcd_cert_file: EtcdCertFile = None,
    etcd_key_file: EtcdKeyFile = None,
    kubeconfig: Kubeconfig = None,
) -> None:
    """Datastore settings: flags win over environment, environment over the config file. They
    may follow the command instead (`percalectl get ippools -c FILE`), as in calicoctl."""
    _settings(config=config, datastore_type=datastore_type, etcd_endpoints=etcd_endpoints,
              etcd_ca_cert_file=etcd_ca_cert_file, etcd_cert_file=etcd_cert_file,
              etcd_key_file=etcd_key_file, kubeconfig=kubeconfig)


def _settings(**options: Optional[str]) -> None:
    """The datastore options given, by their parameter names, into the settings."""
    settings.update({"config_file" if name == "config" else name: value
                     for name, value in options.items()})


FileOption = Annotated[list[str], typer.Option(
    "--filename", "-f", help="File, folder or - (stdin) holding YAML or JSON resources")]


def _report(outcome: crud.Outcome, kinds: list[str]) -> None:
    done, failed = crud.summary(outcome, kinds)
    for line in done:
        typer.echo(line)
    if failed:
        raise fail(*failed)


NamespaceOption = Annotated[Optional[str], typer.Option(
    "--namespace", "-n",
    help="Namespace of namespaced resources that name none (default: default)")]


def _checked(namespace: Optional[str]) -> Optional[str]:
    if namespace is not None and (problem := namespace_problem(namespace)):
        raise fail(f"--namespace: {problem}")
    return namespace


def _write(action: crud.Action, filenames: list[str], skip: bool = False,
           namespace: Optional[str] = None) -> None:
    try:
        documents = load(filenames, _checked(namespace))
    except InputError as err:
        raise fail(*err.problems, "No resources were changed.") from None
    outcome = with_datastore(lambda store: crud.run(store, action, documents, skip))
    _report(outcome, [d.resource.kind for d in documents])


@app.command()
def apply(filename: FileOption, namespace: NamespaceOption = None) -> None:
    """Create or update resources from files; unchanged resources are left as they are."""
    _write("apply", filename, namespace=namespace)


@app.command()
def create(
    filename: FileOption,
    skip_exists: Annotated[bool, typer.Option(help="Skip resources that already exist")] = False,
    namespace: NamespaceOption = None,
) -> None:
    """Create resources from files; fails, writing nothing, if any already exists."""
    _write("create", filename, skip_exists, namespace)


@app.command()
def replace(filename: FileOption, namespace: NamespaceOption = None) -> None:
    """Replace existing resources from files; fails, writing nothing, if any does not exist."""
    _write("replace", filename, namespace=namespace)


def _kind(name: str) -> type[Resource]:
    try:
        return kind_named(name)
    except KeyError:
        known = ", ".join(sorted(c.info.plural for c in KINDS.values()))
        raise fail(f"Failed to execute command: resource type '{name}' is not supported; "
                   f"use one of: {known}") from None


def _namespace(cls: type[Resource], namespace: Optional[str],
               all_namespaces: bool = False) -> Optional[str]:
    """Where to find resources of `cls` by -n and -A, as calicoctl's handleNamespace: None is
    every namespace (-A) or a global kind. Either flag on a global kind is refused, and both
    together, rather than one of them quietly ignored."""
    _checked(namespace)
    if not cls.info.namespaced:
        if namespace is not None or all_namespaces:
            raise fail(not_namespaced(cls.info.kind, "-n" if namespace is not None else "-A"))
        return None
    if all_namespaces:
        if namespace is not None:
            raise fail("cannot use both --namespace and --all-namespaces at the same time")
        return None
    return namespace or "default"


@app.command()
def delete(
    kind: Annotated[Optional[str], typer.Argument(help="Kind, e.g. ippool")] = None,
    names: Annotated[Optional[list[str]], typer.Argument(help="Names of the resources")] = None,
    filename: Annotated[Optional[list[str]], typer.Option(
        "--filename", "-f", help="File, folder or - naming the resources to delete")] = None,
    namespace: NamespaceOption = None,
    skip_not_exists: Annotated[bool, typer.Option(
        "--skip-not-exists", "-s", help="Skip resources that do not exist")] = False,
) -> None:
    """Delete resources named on the command line (KIND NAME...) or in files (-f); each that
    cannot be deleted is named and the others are deleted all the same (exit 1). A Node goes
    with its endpoints, addresses, block affinities, BGPPeers and node.NAME BGPConfiguration, as
    calicoctl's; on the Kubernetes datastore, delete the Kubernetes Node with kubectl first."""
    if filename:
        if kind:
            raise fail("Give either -f or KIND NAME, not both.")
        _write("delete", filename, skip_not_exists, namespace)
        return
    if not kind or not names:
        raise fail("Give the resources to delete: percalectl delete KIND NAME... or -f FILE.")
    cls = _kind(kind)
    if cls.info.managed:
        raise fail(crud.managed_refusal(cls.info.kind, "delete"), "No resources were changed.")
    ns = _namespace(cls, namespace)
    outcome = with_datastore(
        lambda store: crud.delete_named(store, cls, names, ns, skip_not_exists))
    _report(outcome, [cls.info.kind])


@app.command()
def patch(
    kind: Annotated[str, typer.Argument(help="Kind, e.g. ippool")],
    name: Annotated[str, typer.Argument(help="Name of the resource")],
    changes: Annotated[str, typer.Option(
        "--patch", "-p",
        help="JSON merge patch (RFC 7386), e.g. '{\"spec\":{\"disabled\":true}}'")],
    namespace: NamespaceOption = None,
) -> None:
    """Patch a stored resource in place: the JSON merge patch is merged into it (null removes a
    field, a list replaces the list) and the result is checked and written as replace writes."""
    cls = _kind(kind)
    if cls.info.managed:
        raise fail(crud.managed_refusal(cls.info.kind, "patch"), "No resources were changed.")
    try:
        document = crud.patch_document(changes)
    except InputError as err:
        raise fail(*err.problems, "No resources were changed.") from None
    ns = _namespace(cls, namespace)
    outcome = with_datastore(lambda store: crud.patch(store, cls, name, ns, document))
    _report(outcome, [cls.info.kind])


OUTPUTS = ("ps", "table", "wide", "yaml", "yml", "json")


@app.command()
def get(
    kind: Annotated[str, typer.Argument(help="Kind, e.g. ippools, nodes, bgppeers, bgpconfig")],
    names: Annotated[Optional[list[str]], typer.Argument(help="Names; all when omitted")] = None,
    output: Annotated[str, typer.Option(
        "--output", "-o", help="table (also ps), wide, yaml (also yml) or json")] = "ps",
    namespace: Annotated[Optional[str], typer.Option(
        "--namespace", "-n", help="Namespace of a namespaced kind (default: default)")] = None,
    all_namespaces: Annotated[bool, typer.Option(
        "--all-namespaces", "-A", help="Every namespace (not with NAME)")] = False,
) -> None:
    """Show resources as a table, or as YAML/JSON that `apply -f` takes back unchanged. Each
    NAME not found is named on stderr after what was found is shown (exit 1), as calicoctl."""
    if output not in OUTPUTS:
        raise fail(f"Invalid value for --output: {output!r}; use one of: {', '.join(OUTPUTS)}")
    cls = _kind(kind)
    ns = _namespace(cls, namespace, all_namespaces)
    if names and all_namespaces:
        raise fail("cannot use --all-namespaces to get a resource by name; give its -n instead")

    async def read(store: Datastore) -> tuple[list[Resource], list[str], str | None, int]:
        revision, missing = None, []
        if names:
            found = []
            for name in names:
                # A name this kind cannot take names nothing stored (and has no key to look
                # under: a BlockAffinity's key is built from the node and block its name holds).
                if not cls.is_valid_name(name):
                    missing.append(f"resource does not exist: {cls.info.kind}({name})")
                    continue
                try:
                    found.append((await store.get(Key(cls.info.kind, name, ns))).value)
                except NotFound as err:
                    missing.append(str(err))
        else:
            listed = await store.list(cls.info.kind, ns, defer_errors=True)
            found, revision = crud.readable(listed.items, "this list"), listed.revision
        default_as = 64512
        if cls.info.kind == "Node" and output == "wide":
            try:
                config = (await store.get(Key("BGPConfiguration", "default"))).value
                default_as = config.spec.as_number or default_as
            except NotFound:
                pass
        return found, missing, revision, default_as

    resources, missing, revision, default_as = with_datastore(read)
    if not resources and names:
        pass  # nothing to show: only the errors
    elif output in ("yaml", "yml", "json"):
        doc = printer.document(cls.info.kind, resources, revision, single=len(names or []) == 1)
        sys.stdout.write(printer.as_json(doc) if output == "json" else printer.as_yaml(doc))
    else:
        ctx = printer.Context(default_as)
        wide, namespace_column = output == "wide", namespace is not None or all_namespaces
        # calicoctl prints a table per resource it was asked for by name, one for a list.
        tables = [[r] for r in resources] if names else [resources]
        sys.stdout.write("".join(printer.table(cls.info.kind, rows, wide, ctx, namespace_column)
                                 for rows in tables))
    if missing:
        raise fail(*missing)


@app.command()
def label(
    kind: Annotated[str, typer.Argument(help="Kind, e.g. nodes")],
    name: Annotated[str, typer.Argument(help="Name of the resource")],
    label_text: Annotated[str, typer.Argument(
        metavar="KEY=VALUE|KEY", help="The label to set, or with --remove the key to remove")],
    namespace: NamespaceOption = None,
    overwrite: Annotated[bool, typer.Option(
        help="Replace the value of a label the resource already has")] = False,
    remove: Annotated[bool, typer.Option(help="Remove the label KEY")] = False,
) -> None:
    """Set (or with --remove remove) one label of a stored resource, as calicoctl label: a
    label it has already with another value is changed only with --overwrite. Written as
    patch writes, at the revision read."""
    if remove:
        key, value = label_text, None
    elif "=" in label_text:
        key, value = label_text.split("=", 1)
    else:
        raise fail(f"invalid label {label_text}")
    cls = _kind(kind)
    if cls.info.managed:
        raise fail(crud.managed_refusal(cls.info.kind, "patch"), "No resources were changed.")
    ns = _namespace(cls, namespace)
    what = f"{kind} {name}"

    async def relabel(store: Datastore) -> str:
        try:
            if not cls.is_valid_name(name):
                raise NotFound(Key(cls.info.kind, name, ns))
            current = await store.get(Key(cls.info.kind, name, ns))
        except NotFound:
            raise fail(f"{what} not found") from None
        labels = current.value.metadata.labels
        if remove and key not in labels:
            raise fail(f"cannot remove label of {what}, key {key} does not exist")
        if value is not None and labels.get(key, value) != value and not overwrite:
            raise fail(f"failed to update label of {what}, key {key} is already present. "
                       "please use '--overwrite' to set a new value")
        try:
            crud.refuse_kubernetes_policy_edit(current.key, "label")
            outcome = await crud.patch_stored(
                store, current, {"metadata": {"labels": {key: value}}})
        except InputError as err:
            raise fail(f"failed to update {what}, label not changed", *err.problems) from None
        if outcome.failed is not None:
            raise fail(f"failed to update {what}, label not changed: {outcome.failed}")
        if remove:
            return f"Successfully removed label {key} from {what}"
        if key in labels:
            return f"Successfully updated label {key} on {what}"
        return f"Successfully set label {key} on {what}"

    typer.echo(with_datastore(relabel))


@app.command()
def crds(
    output_dir: Annotated[Optional[str], typer.Option(
        help="Write one file per kind into this folder instead of printing them")] = None,
) -> None:
    """Print the CustomResourceDefinitions of percale's kinds (for the Kubernetes datastore), made
    from the same models `percalectl apply` validates with."""
    from percale.ctl import crd_schema

    if output_dir is None:
        sys.stdout.write("---\n".join(crd_schema.rendered().values()))
        return
    try:
        written = crd_schema.write(_folder("--output-dir", output_dir))
    except OSError as err:
        raise fail(_write_failure("--output-dir", output_dir, err)) from None
    for name in written:
        typer.echo(f"{output_dir.rstrip('/')}/{name}")


def _folder(option: str, value: str) -> Path:
    """The folder an option names. Path("") is the working directory, so an empty value (a
    script's --output-dir "$DIR" with DIR unset) would write there: refused instead."""
    from pathlib import Path

    if not value:
        raise fail(f"{option}: the folder name is empty")
    return Path(value)


def _write_failure(option: str, folder: str, err: OSError) -> str:
    where = f" ({err.filename})" if err.filename and str(err.filename) != folder else ""
    return f"{option} {folder}: cannot write there{where}: {err.strerror or err}"


@app.command()
def manifests(
    output_dir: Annotated[str, typer.Option(
        help="Folder to write rbac.yaml and operator.yaml into")] = "manifests",
) -> None:
    """Write manifests/rbac.yaml (percale's RBAC) and manifests/operator.yaml (the CRDs and
    percale-operator), made from the same code the operator renders with."""
    from percale.ctl import crd_schema
    from percale.installation import manifests as files

    folder = _folder("--output-dir", output_dir)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for name, text in files.rendered(crd_schema.rendered(), __version__).items():
            (folder / name).write_text(text)
            typer.echo(f"{output_dir.rstrip('/')}/{name}")
    except OSError as err:
        raise fail(_write_failure("--output-dir", output_dir, err)) from None


@app.command()
def version() -> None:
    """Print percalectl's version."""
    typer.echo(f"Client Version:    v{__version__}")


def main() -> None:
    try:
        app()
    except SystemExit as done:
        # calicoctl exits 1 on every error, a command line it cannot parse included (docopt);
        # Click exits 2 for those. Scripts written against calicoctl test for 1. A command
        # `lab exec` ran keeps its own status (CommandStatus).
        if done.code == 2 and not isinstance(done, lab_cmd.CommandStatus):
            raise SystemExit(1) from None
        raise


if __name__ == "__main__":
    main()
