"""What every percalectl command shares: the datastore settings, and how failures end.

Every failure a user can cause ends as a message on stderr and exit status 1, never a traceback.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Optional, TypeVar

import typer

from percale.ctl.documents import InputError
from percale.datastore import Datastore, DatastoreError
from percale.datastore.config import ConfigError, DatastoreConfig, load_config, open_datastore
from percale.ipam.errors import IPAMError

T = TypeVar("T")

# Filled by the top-level callback from --config and the --etcd-* flags.
settings: dict[str, Optional[str]] = {}


def fail(*lines: str) -> typer.Exit:
    for line in lines:
        typer.echo(line, err=True)
    return typer.Exit(1)


def with_datastore(work: Callable[[Datastore], Awaitable[T]]) -> T:
    """Run `work` against the configured datastore, turning every user-facing failure into a
    message and exit 1."""
    try:
        config: DatastoreConfig = load_config(**settings)
    except ConfigError as err:
        raise fail(f"Invalid datastore configuration: {err}") from None

    async def main() -> T:
        store = open_datastore(config)
        try:
            return await work(store)
        finally:
            await store.close()

    try:
        return asyncio.run(main())
    except InputError as err:
        raise fail(*err.problems, "No resources were changed.") from None
    except (DatastoreError, IPAMError) as err:
        raise fail(f"Failed to execute command: {err}") from None
