"""The `percalectl ipam` command group; its commands live in ipam_show.py and ipam_check.py."""

import typer

ipam_app = typer.Typer(
    help="IP address management: show usage, check for leaks, release, configure.",
    no_args_is_help=True,
)
