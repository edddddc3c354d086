"""ExaBGP as percale runs it: `exabgp server CONFIG`, with a reactor that sleeps while nothing
happens.

    python .../percale/bgpd/exabgp_pace.py server /var/run/percale/exabgp.conf

Run as a file, not as part of the percale package: the process imports ExaBGP and nothing of
percale (bgpd/speaker.py starts it).

Why. ExaBGP's reactor wakes on a fixed beat (its poll timeout, `reactor.speed` / 100 s) to run
every peer's state machine, whether anything happened or not. Sockets and the API pipe wake it
anyway; the beat is there for timers: keepalives, hold timers, connection retries. Each beat
walks every peer, so an idle node of an N-node mesh spent CPU in proportion to N: a 60-node
mesh of idle nodes kept more than a whole core busy (bench/lab.py, issue #15).

What changes. The beat is kept while there is anything to do soon: a session that is not
established (its connect and OPEN exchange are driven by the beat), scheduled API work, updates
still to send. When every session is established and nothing is pending, the reactor sleeps up
to IDLE_SECONDS instead: a keepalive (every 30 s with percale's hold time of 90 s) then goes out
at most that late. A signal (SIGUSR1, the agent's reload; SIGTERM) wakes the sleep at once
through a wake-up pipe, since Python would otherwise resume the poll after running the handler.

Received routes are decoded with three of ExaBGP's per-NLRI costs taken away (`_lean_parsing`),
and written to the API as the same JSON with less work per prefix (`_lean_update_json`).

GTSM (a BGPPeer's ttlSecurity, `incoming-ttl`) is applied to each accepted connection, not to
the listening socket that every session on the node's address shares (`_gtsm_per_connection`).

A neighbour removed from the configuration (a BGPPeer deleted) ends its session with a Cease
NOTIFICATION, "Peer De-configured", as BIRD does, graceful restart or not; stopping or
restarting ExaBGP still closes every session silently (`_cease_when_deconfigured`).
Nothing else in ExaBGP is changed.
"""

from __future__ import annotations

import os
import select
import signal
import socket
import sys
import time

from exabgp.application.main import main as exabgp_main
from exabgp.bgp.fsm import FSM
from exabgp.reactor.loop import Reactor

# How long an idle reactor sleeps between looks at its timers, at most.
IDLE_SECONDS = 1.0

_beat = Reactor._wait_for_io


def _idle(reactor: Reactor) -> bool:
    """Every session established and nothing queued: only timers can need the reactor now."""
    if not reactor.asynchronous.ready():
        return False
    for peer in reactor._peers.values():
        # Updates still to send make the peer ask for another turn at once anyway; looking at
        # them here too keeps a slow peer's queue from waiting on a long sleep.
        # A removed peer still saying goodbye (_cease_when_deconfigured) needs its turns.
        if (peer.fsm != FSM.ESTABLISHED or peer.neighbor.rib.outgoing.pending()
                or peer.stopping()):
            return False
    return bool(reactor._peers)


class _WakeUp:
    """A pipe that a signal writes to (signal.set_wakeup_fd), polled beside ExaBGP's sockets."""

    def __init__(self) -> None:
        self.read_fd, write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
        self.registered: set[int] = set()

    def drain(self) -> None:
        try:
            while os.read(self.read_fd, 512):
                pass
        except BlockingIOError:
            pass


_wakeup: _WakeUp | None = None


def _paced_wait_for_io(self: Reactor, sleeptime: int):
    if sleeptime and _idle(self):
        sleeptime = int(IDLE_SECONDS * 1000)
    if _wakeup is not None and id(self._poller) not in _wakeup.registered:
        self._poller.register(_wakeup.read_fd, select.POLLIN)
        _wakeup.registered.add(id(self._poller))
    for fd in _beat(self, sleeptime):
        if _wakeup is not None and fd == _wakeup.read_fd:
            _wakeup.drain()  # the signal's handler has run; the loop looks at its flag next
            continue
        yield fd


def _lean_parsing() -> None:
    """Three of ExaBGP's costs per received NLRI, taken away where nothing depends on them.

    * `log.debug` builds and calls a closure per NLRI even when debug logging is off, which it
      always is under percale (exabgp_config.environment: INFO). The wrapper asks the level
      first, as ExaBGP's own `log.logger` does, one call sooner.
    * `NLRI.unpack_nlri` made the family's AFI and SAFI objects and formatted their names into
      a lookup key for every NLRI. The lookup is remembered per (afi, safi) pair; the decoder
      called, and what it raises for an unknown family, are ExaBGP's own. With debug logging on,
      ExaBGP's original runs, so its per-NLRI log lines stay.

    * `INET.unpack_nlri`, for a plain unicast or multicast prefix (no ADD-PATH), builds the same
      INET and CIDR objects with their attributes set directly: its general path (labels,
      route distinguishers, a family lookup per step) took 1.9 us a prefix, this one 0.8.
      Anything else, and every malformed prefix (whose Notify is ExaBGP's to word), takes
      ExaBGP's own path.

    Together a quarter of ExaBGP's CPU on a 100k-route load (bench/bgp.py: 0.58 -> 0.43 s)
    before the third, which takes a further ~1 us of each prefix. tests/unit/test_exabgp_pace.py
    decodes the same NLRIs both ways and compares every attribute.
    """
    from exabgp.bgp.message.notification import Notify
    from exabgp.bgp.message.update.nlri import inet
    from exabgp.bgp.message.update.nlri.cidr import CIDR
    from exabgp.bgp.message.update.nlri.nlri import NLRI
    from exabgp.bgp.message.update.nlri.qualifier.path import PathInfo
    from exabgp.logger import _log, option
    from exabgp.protocol.family import AFI, SAFI

    debug_as_shipped = _log.debug.__func__
    unpack_as_shipped = NLRI.unpack_nlri.__func__

    def debug(cls, message, source="", level="DEBUG"):
        if option.logit.get("DEBUG"):
            debug_as_shipped(cls, message, source, level)

    families: dict = {}

    def unpack_nlri(cls, afi, safi, data, action, addpath):
        if option.logit.get("DEBUG"):
            return unpack_as_shipped(cls, afi, safi, data, action, addpath)
        found = families.get((afi, safi))
        if found is None:
            a, s = AFI.create(afi), SAFI.create(safi)
            found = families[(afi, safi)] = (a, s, cls.registered_nlri.get(f"{a}/{s}"))
        a, s, decoder = found
        if decoder is None:
            raise Notify(3, 0, f"trying to decode unknown family {a}/{s}")
        return decoder.unpack_nlri(a, s, data, action, addpath)

    inet_as_shipped = inet.INET.unpack_nlri.__func__
    plain_safis = (SAFI.unicast, SAFI.multicast)
    zeros = [bytes(n) for n in range(17)]
    new = object.__new__

    def unpack_inet(cls, afi, safi, bgp, action, addpath):
        width = 4 if afi is AFI.ipv4 else 16 if afi is AFI.ipv6 else 0
        if cls is not inet.INET or addpath or not width or safi not in plain_safis or not bgp:
            return inet_as_shipped(cls, afi, safi, bgp, action, addpath)
        mask = bgp[0]
        size = (mask + 7) >> 3
        if mask > width * 8 or len(bgp) <= size:
            return inet_as_shipped(cls, afi, safi, bgp, action, addpath)
        cidr = new(CIDR)  # CIDR(packed, mask), as INET.unpack_nlri makes it
        cidr._packed, cidr.mask, cidr._ip = bgp[1:1 + size] + zeros[width - size], mask, None
        nlri = new(cls)  # INET(afi, safi, action), its attributes as INET.__init__ sets them
        nlri.afi, nlri.safi, nlri.action = afi, safi, action
        nlri.path_info, nlri.cidr, nlri.nexthop = PathInfo.NOPATH, cidr, inet.NoNextHop
        return nlri, bgp[1 + size:]

    _log.debug = classmethod(debug)
    NLRI.unpack_nlri = classmethod(unpack_nlri)
    inet.INET.unpack_nlri = classmethod(unpack_inet)


def _lean_update_json() -> None:
    """ExaBGP's JSON for a received UPDATE, with the per-prefix work cut to the prefix itself.

    ExaBGP's encoder (JSON._update) groups the NLRIs by family and next hop, then asks each for
    its JSON. Per prefix that meant formatting the next hop, making a Family object and asking
    it for its (afi, safi) pair, and two method calls to format "address/length": a third of
    ExaBGP's CPU on a 100k-route load (bench/bgp.py). Here the next hop's text is made once per
    next-hop object and the family key once per (afi, safi) of the UPDATE; a plain INET prefix
    without ADD-PATH is formatted directly, as INET.json would. Every other NLRI (EOR, labelled,
    ADD-PATH, flow, ...) is asked for its own JSON, and the text around the prefixes is put
    together as ExaBGP does. tests/unit/test_exabgp_pace.py compares the two encoders' output.
    """
    from exabgp.bgp.message.action import Action
    from exabgp.bgp.message.update.nlri.inet import INET
    from exabgp.bgp.message.update.nlri.qualifier.path import PathInfo
    from exabgp.reactor.api.response.json import JSON

    announce, withdraw = Action.ANNOUNCE, Action.WITHDRAW
    no_path = PathInfo.NOPATH
    unreadable = object()  # an NLRI without a next hop, whose text ExaBGP makes "null"
    ntop, AF_INET, AF_INET6 = socket.inet_ntop, socket.AF_INET, socket.AF_INET6

    def update_json(self, update):
        compact = self.compact
        plus: dict = {}   # (afi, safi) -> next hop's text -> the NLRIs' JSON
        minus: dict = {}  # (afi, safi) -> the NLRIs' JSON
        next_hops: dict = {}  # id(next hop) -> its text; the NLRIs keep each one alive
        families: dict = {}   # (afi, safi) as the NLRI holds them -> its family().afi_safi()
        last_hop = last_family = texts = None
        for nlri in update.nlris:
            plain = type(nlri) is INET and nlri.path_info is no_path
            if plain:
                key = (nlri.afi, nlri.safi)
                family = families.get(key)
                if family is None:
                    family = families[key] = nlri.family().afi_safi()
                cidr = nlri.cidr
                address = cidr._ip
                if not address:  # CIDR.top(), which remembers the text as well
                    packed = cidr._packed
                    address = cidr._ip = ntop(AF_INET if len(packed) == 4 else AF_INET6, packed)
                text = (f'"{address}/{cidr.mask}"' if compact else
                        f'{{ "nlri": "{address}/{cidr.mask}" }}')
            else:
                family = None
                text = nlri.json(compact=compact)
            action = nlri.action
            if action == announce:
                try:
                    hop = nlri.nexthop
                except Exception:
                    hop = unreadable
                if family is None:
                    family = nlri.family().afi_safi()
                if hop is not last_hop or family is not last_family:
                    # Most UPDATEs have one family and one next hop: their list is found once.
                    next_hop = next_hops.get(id(hop))
                    if next_hop is None:
                        try:
                            next_hop = "null" if hop is unreadable else str(hop)
                        except Exception:
                            next_hop = "null"
                        next_hops[id(hop)] = next_hop
                    texts = plus.setdefault(family, {}).setdefault(next_hop, [])
                    last_hop, last_family = hop, family
                texts.append(text)
            elif action == withdraw:
                if family is None:
                    family = nlri.family().afi_safi()
                minus.setdefault(family, []).append(text)

        if not plus and not minus and update.nlris:  # an EOR, whose json() is an object already
            return {"message": self._json(update.nlris[0].json())}
        add = [
            f'"{afi} {safi}": {{ '
            + ", ".join(f'"{hop}": [ {", ".join(texts)} ]' for hop, texts in by_hop.items())
            + " }"
            for (afi, safi), by_hop in plus.items()
        ]
        remove = [f'"{afi} {safi}": [ {", ".join(texts)} ]' for (afi, safi), texts in minus.items()]
        parts = []
        if add:
            parts.append(f'"announce": {{ {", ".join(add)} }}')
        if remove:
            parts.append(f'"withdraw": {{ {", ".join(remove)} }}')
        nlri_text = ", ".join(parts)
        attributes = f'"attribute": {{ {update.attributes.json()} }}' if update.attributes else ""
        if attributes and nlri_text:
            body = f'"update": {{ {attributes}, {nlri_text} }}'
        else:
            body = f'"update": {{ {attributes}{nlri_text} }}'
        return {"message": self._json(f"{{ {body} }}")}

    JSON._update = update_json


# linux/tcp.h; CPython's socket module exports neither.
TCP_SAVE_SYN = getattr(socket, "TCP_SAVE_SYN", 27)
TCP_SAVED_SYN = getattr(socket, "TCP_SAVED_SYN", 28)
# RFC 5082 §3: a GTSM speaker sends with the highest TTL, so that what arrives tells the hops.
GTSM_TTL = 255


def _syn_ttl(sock: socket.socket) -> int | None:
    """The TTL (IPv4) or hop limit (IPv6) an accepted connection's SYN arrived with, read from
    the SYN its listening socket saved (TCP_SAVE_SYN: the IP and TCP headers). None when none was
    saved: a connection made through a SYN cookie, while the listen queue overflowed. The kernel
    hands the SYN over once and then frees it."""
    try:
        syn = sock.getsockopt(socket.IPPROTO_TCP, TCP_SAVED_SYN, 512)
    except OSError:
        return None
    version = syn[0] >> 4 if syn else 0
    if version == 4 and len(syn) >= 20:
        return syn[8]
    if version == 6 and len(syn) >= 40:
        return syn[7]
    return None


def _gtsm_per_connection() -> None:
    """GTSM (RFC 5082) for the sessions a peer opens, without it reaching every other session.

    ExaBGP listens with one socket per (address, port), shared by every neighbour with that
    local address: for percale, every session of the node. A neighbour's `incoming-ttl` set
    IP_MINTTL on that socket, so the kernel dropped every SYN below it, whichever peer sent it.
    One BGPPeer with ttlSecurity (incoming-ttl 255) cut the node off from every mesh peer and
    route reflector that connects to it with the default TTL of 64: in a mesh the node with the
    lower address is passive, so those sessions never came up (tests/interop/test_ttl_security.py,
    the kernel's TCPMinTTLDrop counting B's SYNs). And the socket answered every SYN with a
    SYN-ACK at the default TTL, which the GTSM peer itself drops: a GTSM session came up only
    when percale connected out, never when the peer did.

    So here the listening socket checks no TTL, answers every SYN with TTL 255 (harmless to a
    peer that checks nothing) and saves each SYN (TCP_SAVE_SYN). Once ExaBGP has matched an
    accepted connection to its neighbour, and before the neighbour's state machine sees it:
      * a GTSM neighbour's connection is closed unless its SYN arrived with at least
        incoming-ttl (no SYN saved: closed too, GTSM fails closed); then IP_MINTTL on the
        connection makes the kernel hold every later packet to the same minimum;
      * every connection sends with its neighbour's TTL: outgoing-ttl, else 255 for GTSM, else
        the kernel's default again (-1) rather than the listener's 255.
    A packet that reached the connection between the handshake and the IP_MINTTL is not
    checked by the kernel; to be accepted a packet from further away would have to belong to a
    connection whose SYN passed the check, that is, to guess its sequence numbers.
    Connections percale opens are ExaBGP's own (reactor/network/outgoing.py): minimum and
    sending TTL on the one socket, unchanged.
    """
    from exabgp.logger import log
    from exabgp.reactor.listener import Listener
    from exabgp.reactor.network.error import NetworkError
    from exabgp.reactor.network.tcp import sending_ttl, set_minimum_ttl, set_sending_ttl
    from exabgp.reactor.peer import Peer

    listen_as_shipped = Listener._listen
    handle_as_shipped = Peer.handle_connection

    def listen(self, local_ip, peer_ip, local_port, use_md5, md5_base64, ttl_in):
        listen_as_shipped(self, local_ip, peer_ip, local_port, use_md5, md5_base64, None)
        for sock, (local, port, _, _) in self._sockets.items():
            if (local, port) != (local_ip.top(), local_port):
                continue
            try:
                sock.setsockopt(socket.IPPROTO_TCP, TCP_SAVE_SYN, 1)
            except OSError as exc:
                log.error(lambda exc=exc: f"could not save SYNs on {local}:{port} ({exc}): "
                          "connections from GTSM neighbours will be refused", "network")
            set_sending_ttl(sock, local_ip.afi, local, GTSM_TTL)

    def handle_connection(self, connection):
        neighbor, sock = self.neighbor, connection.io
        if sock is None:
            return handle_as_shipped(self, connection)
        minimum = neighbor["incoming-ttl"]
        if minimum:
            arrived = _syn_ttl(sock)
            refused = None
            if arrived is None:
                refused = "no SYN was saved to check"
            elif arrived < minimum:
                refused = f"its SYN arrived with TTL {arrived}"
            else:
                try:
                    set_minimum_ttl(sock, connection.afi, neighbor["peer-address"].top(), minimum)
                except NetworkError as exc:
                    refused = str(exc)
            if refused:
                log.warning(lambda: f"refused a connection from {neighbor['peer-address']}: "
                            f"{refused}, and incoming-ttl is {minimum} (GTSM)", "network")
                connection.close()
                return iter(())  # the listener's "denied": the state machine never sees it
        try:
            set_sending_ttl(sock, connection.afi, neighbor["peer-address"].top(),
                            sending_ttl(neighbor["outgoing-ttl"], minimum) or -1)
        except NetworkError as exc:
            # The message is made by ExaBGP's logger, maybe after `exc` is unbound.
            reason = str(exc)
            log.error(lambda: f"could not set the sending TTL of {connection.name()} ({reason})",
                      "network")
        return handle_as_shipped(self, connection)

    Listener._listen = listen
    Peer.handle_connection = handle_connection


# RFC 4486 §4: the Cease subcode of a session whose peer was removed from the configuration.
CEASE_PEER_DECONFIGURED = 3
# How long a removed neighbour may take to write its NOTIFICATION (a peer that stopped reading
# leaves no room for it in the socket) before its session is closed without one.
CEASE_WRITE_SECONDS = 5.0


def _cease_when_deconfigured() -> None:
    """A neighbour removed from the configuration sends a Cease NOTIFICATION, subcode 3 "Peer
    De-configured" (RFC 4486), before its session closes.

    ExaBGP's reload removes such a neighbour with Peer.remove, which closed the TCP connection
    at once, without any NOTIFICATION. A peer that had negotiated graceful restart with us took
    that for a restart (RFC 4724 §4.2: BIRD logs "Neighbor graceful restart detected") and kept
    the node's routes as stale for the whole restart time (120 s by default), routing traffic to
    a node that no longer peers with it. A NOTIFICATION tells it the session ended for good, and
    it withdraws the routes at once, as it does when Calico's BIRD drops a BGPPeer's protocol.

    Only a removal sends it: shutting ExaBGP down (the agent stopping or restarting) still goes
    through Peer.shutdown and closes silently, so that graceful restart keeps the node's routes
    at its peers until the next ExaBGP has announced them again.

    How. remove() marks the peer and asks it to stop, leaving its connection open; the peer's
    next turn, before its state machine (_establish or _main) resumes, writes the NOTIFICATION
    and closes the connection. Its state machine must not resume: with graceful restart it
    would close silently, as ExaBGP's own teardown does. A neighbour with no OPEN sent yet has
    nothing to cease and closes as before (RFC 4271 §8.2.2, ManualStop in Connect or Active).
    """
    from exabgp.bgp.message import Notify
    from exabgp.logger import log
    from exabgp.reactor.api.processes import ProcessError
    from exabgp.reactor.network.error import NetworkError
    from exabgp.reactor.peer import ACTION, Peer

    remove_as_shipped = Peer.remove
    in_session = (FSM.OPENSENT, FSM.OPENCONFIRM, FSM.ESTABLISHED)
    # The connection (its Protocol) that a removal ends with a Cease: that one only, so a peer
    # configured again meanwhile, whose reload reestablishes it, starts its next one afresh.
    Peer._to_cease = None

    def remove(self):
        if self.proto is None or not self.generator or self.fsm not in in_session:
            return remove_as_shipped(self)
        self._to_cease = self.proto
        # What Peer.stop does but for leaving the state machine: _close reports the session
        # down to the API only while it is in one of these states.
        self._teardown = CEASE_PEER_DECONFIGURED
        self._restart = False
        self._restarted = False
        self._delay.reset()
        self.neighbor.rib.uncache()
        return None

    def cease(self):
        # No data: RFC 4486 gives subcode 3 none (ExaBGP's default would add its name as text).
        notify = Notify(6, CEASE_PEER_DECONFIGURED, b"")
        deadline = time.monotonic() + CEASE_WRITE_SECONDS
        sent = False
        try:
            for sent in self.proto.write(notify):
                if sent or time.monotonic() > deadline:
                    break
                yield ACTION.LATER  # the socket is full: its next turn tries again
        except (NetworkError, ProcessError):
            sent = False
        if sent:
            log.info(lambda: f"{self.me('removed from the configuration')}: sent a Cease "
                     "NOTIFICATION (Peer De-configured)", self.id())
        else:
            log.warning(lambda: f"{self.me('removed from the configuration')}: could not send "
                        "its Cease NOTIFICATION; closing without one", self.id())
        self._close(f"peer de-configured, notification sent (6,{CEASE_PEER_DECONFIGURED})"
                    if sent else "peer de-configured")
        self._to_cease = None
        # _run ends the peer on a NetworkError; the connection is already closed.
        raise NetworkError("peer de-configured")

    def ceasing(step):
        def run(self):
            inner = step(self)
            for action in inner:
                yield action
                if self._to_cease is not None and self._to_cease is self.proto:
                    inner.close()
                    yield from cease(self)
        run.__name__ = step.__name__
        return run

    Peer.remove = remove
    Peer._establish = ceasing(Peer._establish)
    Peer._main = ceasing(Peer._main)


def main() -> int:
    global _wakeup
    _lean_parsing()
    _lean_update_json()
    _gtsm_per_connection()
    _cease_when_deconfigured()
    Reactor._wait_for_io = _paced_wait_for_io
    _wakeup = _WakeUp()
    sys.argv[0] = "exabgp"
    return exabgp_main()


if __name__ == "__main__":
    sys.exit(main())
