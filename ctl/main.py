"""The `percalectl` command: where the datastore comes from, the resource commands, the
`ipam` command group (ctl/ipam_*.py), `cni install` and `node status` (node_cmd.py).

Bad input names the file, document, field and reason; an unreachable datastore says which
endpoints were tried; neither prints a traceback (ctl/context.py).
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from percale.ctl import __version__
from percale.ctl import crud, ipam_check, ipam_show, lab_cmd, printer
from percale.ctl.cni_cmd import cni_app
from percale.ctl.context import fail, settings, with_datastore
from percale.ctl.documents import InputError, load
from percale.ctl.ipam_app import ipam_app
from percale.ctl.lab_cmd import lab_app
from percale.ctl.node_cmd import node_app
from percale.ctl.policy_cmd import policy_app
from percale.datastore import Datastore, DatastoreError, Key, NotFound
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

if TYPE_CHECKING:
    from pathlib import Path

app = typer.Typer(
    name="percalectl",
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
    """Datastore settings: flags win over environment, environment over the config file."""
    settings.update(
        config_file=config, datastore_type=datastore_type, etcd_endpoints=etcd_endpoints,
        etcd_ca_cert_file=etcd_ca_cert_file, etcd_cert_file=etcd_cert_file,
        etcd_key_file=etcd_key_file, kubeconfig=kubeconfig,
    )


FileOption = Annotated[list[str], typer.Option(
    "--filename", "-f", help="File, folder or - (stdin) holding YAML or JSON resources")]


def _report(outcome: crud.Outcome, kinds: list[str]) -> None:
    done, failed = crud.summary(outcome, kinds)
    for line in done:
        typer.echo(line)
    if failed:
        raise fail(*failed)


def _write(action: crud.Action, filenames: list[str], skip: bool = False) -> None:
    try:
        documents = load(filenames)
    except InputError as err:
        raise fail(*err.problems, "No resources were changed.") from None
    outcome = with_datastore(lambda store: crud.run(store, action, documents, skip))
    _report(outcome, [d.resource.kind for d in documents])


@app.command()
def apply(filename: FileOption) -> None:
    """Create or update resources from files; unchanged resources are left as they are."""
    _write("apply", filename)


@app.command()
def create(
    filename: FileOption,
    skip_exists: Annotated[bool, typer.Option(help="Skip resources that already exist")] = False,
) -> None:
    """Create resources from files; fails, writing nothing, if any already exists."""
    _write("create", filename, skip_exists)


@app.command()
def replace(filename: FileOption) -> None:
    """Replace existing resources from files; fails, writing nothing, if any does not exist."""
    _write("replace", filename)


def _kind(name: str) -> type[Resource]:
    try:
        return kind_named(name)
    except KeyError:
        known = ", ".join(sorted(c.info.plural for c in KINDS.values()))
        raise fail(f"Failed to execute command: resource type '{name}' is not supported; "
                   f"use one of: {known}") from None


def _namespace(cls: type[Resource], namespace: Optional[str], all_namespaces: bool = False) -> Optional[str]:
    if not cls.info.namespaced or all_namespaces:
        return None
    return namespace or "default"


@app.command()
def delete(
    kind: Annotated[Optional[str], typer.Argument(help="Kind, e.g. ippool")] = None,
    names: Annotated[Optional[list[str]], typer.Argument(help="Names of the resources")] = None,
    filename: Annotated[Optional[list[str]], typer.Option(
        "--filename", "-f", help="File, folder or - naming the resources to delete")] = None,
    namespace: Annotated[Optional[str], typer.Option("--namespace", "-n")] = None,
    skip_not_exists: Annotated[bool, typer.Option(
        help="Skip resources that do not exist")] = False,
) -> None:
    """Delete resources named on the command line (KIND NAME...) or in files (-f); each that
    cannot be deleted is named and the others are deleted all the same (exit 1). A Node goes
    with its endpoints, addresses, block affinities, BGPPeers and node.NAME BGPConfiguration, as
    calicoctl's; on the Kubernetes datastore, delete the Kubernetes Node with kubectl first."""
    if filename:
        if kind:
            raise fail("Give either -f or KIND NAME, not both.")
        _write("delete", filename, skip_not_exists)
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
    namespace: Annotated[Optional[str], typer.Option("--namespace", "-n")] = None,
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


OUTPUTS = ("ps", "table", "wide", "yaml", "json")


@app.command()
def get(
    kind: Annotated[str, typer.Argument(help="Kind, e.g. ippools, nodes, bgppeers, bgpconfig")],
    names: Annotated[Optional[list[str]], typer.Argument(help="Names; all when omitted")] = None,
    output: Annotated[str, typer.Option(
        "--output", "-o", help="table (also ps), wide, yaml or json")] = "ps",
    namespace: Annotated[Optional[str], typer.Option("--namespace", "-n")] = None,
    all_namespaces: Annotated[bool, typer.Option("--all-namespaces", "-A")] = False,
) -> None:
    """Show resources as a table, or as YAML/JSON that `apply -f` takes back unchanged."""
    if output not in OUTPUTS:
        raise fail(f"Invalid value for --output: {output!r}; use one of: {', '.join(OUTPUTS)}")
    cls = _kind(kind)
    ns = _namespace(cls, namespace, all_namespaces)

    async def read(store: Datastore) -> tuple[list[Resource], str | None, int]:
        revision = None
        if names:
            # A name this kind cannot take names nothing stored (and has no key to look under:
            # a BlockAffinity's key is built from the node and block its name holds).
            if bad := next((n for n in names if not cls.is_valid_name(n)), None):
                raise DatastoreError(f"resource does not exist: {cls.info.kind}({bad})")
            try:
                found = [(await store.get(Key(cls.info.kind, n, ns or _namespace(cls, None)))).value
                         for n in names]
            except NotFound as err:
                raise DatastoreError(str(err)) from None
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
        return found, revision, default_as

    resources, revision, default_as = with_datastore(read)
    if output in ("yaml", "json"):
        doc = printer.document(cls.info.kind, resources, revision, single=len(names or []) == 1)
        sys.stdout.write(printer.as_yaml(doc) if output == "yaml" else printer.as_json(doc))
    else:
        ctx = printer.Context(default_as)
        sys.stdout.write(printer.table(cls.info.kind, resources, output == "wide", ctx))


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
    output_dir: Annotated[str, typer.Option(help="Folder to write rbac.yaml and operator.yaml into")] = "manifests",
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
