"""The state of each BGP session this node holds: one row of `percalectl node status` each.

Fed by ExaBGP's neighbour events (bgpd.exabgp_json.PeerState); read by the status socket, the
NodeStatus record, /readyz and /metrics. Pure: time comes from the caller's clock.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from percale.bgpd import peering
from percale.bgpd.exabgp_json import PeerState


@dataclass
class PeerStatus:
    """One row of `percalectl node status`, in BIRD's words as calicoctl shows them: STATE is
    the protocol state (up, start), INFO the BGP state (Established, Connect, Passive, ...)."""

    session: peering.Session
    state: str = "start"
    info: str = "Connect"
    since: float = field(default_factory=time.time)  # wall-clock seconds

    def set(self, state: str, info: str) -> None:
        if (state, info) != (self.state, self.info):
            self.state, self.info, self.since = state, info, time.time()


def waiting(session: peering.Session) -> str:
    # A passive side waits for the other to connect; an active one keeps trying.
    return "Passive" if session.passive else "Connect"


class PeerTable(dict[str, PeerStatus]):
    """Peer address -> status, for every configured session (a dict, so readers iterate it as
    one)."""

    def configure(self, sessions: Iterable[peering.Session]) -> None:
        """The sessions now configured: new ones start waiting, removed ones go, and kept ones
        keep their state (a reload leaves unchanged sessions up)."""
        kept = {}
        for session in sessions:
            status = self.get(session.peer_address) or PeerStatus(session, info=waiting(session))
            status.session = session
            kept[session.peer_address] = status
        self.clear()
        self.update(kept)

    def speaker_restarted(self) -> None:
        """A (new) ExaBGP connected: every session of the old one ended, and ExaBGP says `down`
        for none of them, nor anything for a peer it then fails to reach. Each session starts
        again from where a new one starts (waiting), so status, /readyz and /metrics stop
        calling a peer Established that the running ExaBGP never reached."""
        for status in self.values():
            status.set("start", waiting(status.session))

    def heard(self, event: PeerState) -> None:
        status = self.get(str(event.peer.address))
        if status is None:
            return
        if event.state == "up":
            status.set("up", "Established")
        elif event.state == "connected":
            status.set("start", "OpenSent")
        elif event.state == "down":
            reason = f" ({event.reason})" if event.reason else ""
            status.set("start", waiting(status.session) + reason)

    def established(self) -> list[tuple[str, PeerStatus]]:
        return [(address, status) for address, status in sorted(self.items()) if status.state == "up"]
