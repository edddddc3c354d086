"""What the BGP side asks of the parts it does not own: the speaker (ExaBGP, bgpd/speaker.py)
and the kernel's tables (dataplane/fib.py, dataplane/blackholes.py).

bgpd decides; these do. The agent is handed objects that fit these shapes, so bgpd never imports
the dataplane, and tests can hand it stand-ins that record what they were told.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Protocol


class Speaker(Protocol):
    async def send(self, command: str, timeout: float = 30) -> None:
        """One ExaBGP API command, acknowledged; SpeakerError if refused or ExaBGP is gone."""


class Outcome(Protocol):
    @property
    def failed(self) -> Mapping[Any, str]:
        """Each prefix the kernel refused, with its reason."""


class RouteTable(Protocol):
    """The kernel's BGP routes (dataplane.fib.FIB): a desired-state map it keeps in the kernel.
    Blocking calls: the agent makes them from a worker thread."""

    @property
    def programmed(self) -> Mapping[Any, Any]: ...

    def apply(self, changes: Mapping[Any, Iterable[Any] | None]) -> Outcome: ...

    def replace_all(self, routes: Mapping[Any, Iterable[Any]]) -> Outcome: ...

    def reconcile(self) -> Outcome: ...


class BlackholeTable(Protocol):
    """A blackhole route per own block (dataplane.blackholes.Blackholes); blocking."""

    def sync(self, blocks: Iterable[str], *, check: bool = False) -> None: ...
