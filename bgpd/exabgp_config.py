"""ExaBGP's configuration, rendered from the sessions percale computed (bgpd/peering.py).

Pure: text in, text out; `exabgp validate` checks the result in the tests. ExaBGP 5.0 traps this
avoids (../shared/reference/exabgp.md):
  * manual-eor: after a restart ExaBGP would send End-of-RIB before percale has re-announced
    anything, and peers would flush the routes graceful restart was keeping for us;
  * one helper (the bridge) on every neighbour, so every command reaches every peer;
  * peer-as is mandatory since 5.0.12; ExaBGP accepts connections only for neighbours with a
    `listen`, so every neighbour gets one;
  * a neighbour's `listen` socket is bound to its local-address, the node's address, so percale
    listens on the node's address and nowhere else: BGPConfiguration bindMode NodeIP (BIRD's
    `listen bgp address <node IP>`), whatever bindMode says. BIRD's default, every address, is
    not copied: ExaBGP takes a connection only for a neighbour whose local-address it reached
    (reactor/listener.py, new_connections), so a wildcard socket would admit no more sessions.
    A session with sourceAddress: None has no local-address and so no `listen`: it only
    connects out;
  * no Adj-RIB-In in ExaBGP: the RIB keeps one, and ExaBGP's second copy only cost memory and CPU
    per received route (`show adj-rib in` then answers nothing; percale never asks it).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

HELPER = "percale"
DEFAULT_RESTART_TIME = 120
HOLD_TIME = 90
# The largest values BGP can carry: the OPEN's 16-bit hold time, and graceful restart's 12-bit
# restart time (RFC 4724 §3). ExaBGP sends only the low 12 bits of a longer restart time, so
# 5000 s would reach the peer as 904 s; it is sent as 4095 s instead.
HOLD_TIME_MAX = 65535
RESTART_TIME_MAX = 4095


@dataclass(frozen=True)
class Neighbor:
    """What ExaBGP needs to know about one session (a view of bgpd.peering.Session)."""

    name: str
    family: int
    peer_address: str
    peer_port: int
    peer_as: int
    local_as: int
    local_address: str | None
    passive: bool
    restart_time: int = DEFAULT_RESTART_TIME
    password: str | None = None
    ttl_security: int | None = None
    listen_port: int = 179
    keepalive_time: int | None = None  # BGPPeer keepaliveTime, seconds


# The kernel's TCP_MD5SIG key holds at most 80 bytes; ExaBGP refuses a longer password, and
# with it the whole configuration (every session of the node).
MAX_PASSWORD_BYTES = 80
# ExaBGP's tokenizer switches quoting at either quote and unescapes backslashes, and its TCP code
# encodes the password as ASCII (anything else killed ExaBGP at start, every session with it).
_PASSWORD_REFUSED = {'"': "a double quote", "'": "a single quote", "\\": "a backslash"}


def password_problem(text: str) -> str | None:
    """Why ExaBGP's configuration cannot hold `text` as an MD5 password; None if it can."""
    for char in text:
        if char in _PASSWORD_REFUSED:
            return f"a BGP password cannot contain {_PASSWORD_REFUSED[char]}"
        if not " " <= char <= "~":
            return ("a BGP password is printable ASCII: it cannot contain a line break, "
                    "a control character or a character outside ASCII")
    if len(text) > MAX_PASSWORD_BYTES:
        return f"a BGP password is at most {MAX_PASSWORD_BYTES} characters (it has {len(text)})"
    return None


def _quote(text: str) -> str:
    if problem := password_problem(text):
        raise ValueError(problem)
    return f'"{text}"'


def render(router_id: str, neighbors: Iterable[Neighbor], helper_command: str) -> str:
    lines = [
        f"process {HELPER} {{",
        f"    run {helper_command};",
        "    encoder json;",
        "}",
        "",
        "template {",
        "    neighbor percale {",
        f"        router-id {router_id};",
        f"        hold-time {HOLD_TIME};",
        "        manual-eor true;",
        # percale keeps the Adj-RIB-In itself (bgpd/rib.py) and never asks ExaBGP for its copy,
        # which cost ExaBGP a Change object per received route and ~60 MB at 100k routes.
        "        adj-rib-in false;",
        "        api {",
        f"            processes [ {HELPER} ];",
        "            neighbor-changes;",
        "            receive { parsed; update; open; notification; }",
        "        }",
        "    }",
        "}",
    ]
    for n in sorted(neighbors, key=lambda n: (n.family, n.peer_address, n.peer_port)):
        lines += ["", f"neighbor {n.peer_address} {{", "    inherit percale;",
                  f'    description "{n.name}";']
        if n.local_address:
            lines.append(f"    local-address {n.local_address};")
        lines += [f"    local-as {n.local_as};", f"    peer-as {n.peer_as};"]
        if n.peer_port != 179:
            lines.append(f"    connect {n.peer_port};")
        if n.passive:
            lines.append("    passive true;")
        if n.local_address:
            # Every session accepts connections, not only the passive ones: two active sides
            # (a route reflector and its client both peering by selector) would otherwise only
            # ever dial each other and never answer. ExaBGP resolves the collision (RFC 4271 §6.8).
            lines.append(f"    listen {n.listen_port};")
        if n.password:
            lines.append(f"    md5-password {_quote(n.password)};")
        if n.keepalive_time:
            # ExaBGP has no keepalive setting: it sends keepalives every hold time / 3 (RFC 4271
            # §10's suggestion), so BIRD's `keepalive time N` becomes a hold time of 3N.
            # The OPEN message holds 16 bits of it: longer keepalives get the longest hold
            # time (ExaBGP refuses a configuration above it, which would stop every session).
            lines.append(f"    hold-time {min(3 * n.keepalive_time, HOLD_TIME_MAX)};")
        if n.ttl_security:
            # GTSM (RFC 5082): accept only packets that crossed at most `hops` routers, and send
            # with TTL 255 (ExaBGP's default for a neighbour with incoming-ttl). ExaBGP as shipped
            # put this minimum on the listening socket every session shares; exabgp_pace.py
            # checks it per accepted connection instead, so other peers can still connect.
            lines.append(f"    incoming-ttl {256 - n.ttl_security};")
        family = "ipv4 unicast" if n.family == 4 else "ipv6 unicast"
        lines += [f"    family {{ {family}; }}",
                  f"    capability {{ graceful-restart {min(n.restart_time, RESTART_TIME_MAX)};"
                  " route-refresh; }", "}"]
    return "\n".join(lines) + "\n"


def environment(log_file: str, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """ExaBGP's settings as environment variables. It must stay root: the bridge helper is
    started by it and percale's routes are announced through it (by default ExaBGP drops to
    `nobody`, and then cannot start the helper)."""
    return {
        "exabgp_daemon_user": "root",
        "exabgp_daemon_daemonize": "false",
        "exabgp_log_destination": log_file,
        "exabgp_log_level": "INFO",
        "exabgp_api_ack": "true",
        "exabgp_api_cli": "false",
        # An NLRI as "10.244.2.0/26" rather than { "nlri": "10.244.2.0/26" }: about 40% fewer
        # bytes per route through the bridge, and no JSON object per route for the agent to
        # build (bgpd/exabgp_json.py reads both forms; ADD-PATH NLRIs keep the object form).
        "exabgp_api_compact": "true",
        # The reactor's idle poll timeout is speed/100 s: 10 ms by default, which cost ~1.3% of a
        # core per idle ExaBGP plus ~0.09% per peer (bench/lab.py). Sockets and the helper's pipe
        # still wake it at once; only timers (keepalives, connect retries) run on this beat.
        "exabgp_reactor_speed": "5.0",
        **(extra or {}),
    }
