"""The helper ExaBGP runs (`process percale { run ... }`): a pipe between ExaBGP and percale-node.

ExaBGP writes events to this program's stdin and reads commands from its stdout; if nobody
reads its output, ExaBGP's whole reactor stalls, keepalives included (exabgp.md §1.1). So this
program only shuttles lines, in both directions, and always drains: everything ExaBGP says goes
to the agent's unix socket, everything the agent says goes to ExaBGP. It imports nothing heavy;
ExaBGP respawns it if it dies, and the agent accepts the new connection.

    python3 -I -S .../percale/bgpd/bridge.py /var/run/percale/exabgp.sock   (standard library only)
"""

from __future__ import annotations

import os
import socket
import sys
import threading
import time


def _connect(path: str) -> socket.socket:
    # The agent may be restarting: keep trying for a while rather than die (ExaBGP would count
    # that as a helper death, and gives up after five). But not once ExaBGP itself is gone:
    # a bridge left behind would connect to the next agent and pass for its ExaBGP.
    deadline = time.monotonic() + 60
    exabgp = os.getppid()
    while True:
        if os.getppid() != exabgp:
            os._exit(0)
        try:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.connect(path)
            return sock
        except OSError:
            sock.close()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def main(path: str) -> None:
    sock = _connect(path)

    def to_exabgp() -> None:
        out = sys.stdout.buffer
        with sock.makefile("rb") as agent:
            for line in agent:
                out.write(line)
                out.flush()
        os._exit(0)  # the agent went away: exit, and ExaBGP starts a fresh bridge

    threading.Thread(target=to_exabgp, daemon=True).start()
    for line in sys.stdin.buffer:
        sock.sendall(line)
    os._exit(0)


if __name__ == "__main__":
    main(sys.argv[1])
