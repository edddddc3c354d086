"""The policy ruleset into the kernel: `nft -f -`, one transaction per change (dataplane.md §B8, G2).

    writer = PolicyTable()                 # in the network namespace it runs in
    writer.apply(ruleset)                  # first call: the whole table, replacing what was there
    writer.apply(next_ruleset)             # later: only the sets, chains and map entries that changed
    writer.drifted()                       # someone changed the table behind us?

The first apply (and any apply after a failure or drift) writes the whole table in one
transaction -- `add table`, `delete table`, the table -- so packets see the old rules or the new
ones, never none: an agent that restarts adopts the rules it left in the kernel without a gap.
Later applies change what differs: new chains and sets first, then the rewritten chains (flush +
rules), then the map entries, then what went away; all in one transaction too. Only
`inet percale` is touched.
"""

from __future__ import annotations

import ctypes
import json
import logging
import subprocess
import threading
from collections.abc import Mapping

from percale.policy.compile import BASE_CHAINS, DISPATCH_CHAINS, FAMILY, TABLE, Ruleset, render

log = logging.getLogger("percale.policy")

T = f"{FAMILY} {TABLE}"


class NftError(RuntimeError):
    """nft refused a transaction (nothing of it was applied)."""


def run_nft(script: str, *, release: bool = False) -> None:
    """`nft -f -`: a process per transaction (about 5 ms on an idle machine); nothing is kept
    (`release` has nothing to free)."""
    done = subprocess.run(["nft", "-f", "-"], input=script, capture_output=True, text=True)
    if done.returncode != 0:
        raise NftError(done.stderr.strip() or f"nft exited with {done.returncode}")


class LibNftables:
    """The same transactions through libnftables in this process (the library `nft` itself is
    built on): no process to start, about 0.1 ms for a small change against ~5 ms for `nft -f`.
    Netlink talks to the network namespace of the calling thread, which for percale-node is the
    node's.

    The context is kept between transactions (making one costs ~10 ms), but libnftables caches
    the kernel's ruleset in it: for a table of thousands of rules that is hundreds of MB. So after
    a transaction on a big table (`release`) the context is freed and the heap trimmed, and the
    next one pays for a new context."""

    def __init__(self) -> None:
        lib = ctypes.CDLL("libnftables.so.1")
        lib.nft_ctx_new.restype = ctypes.c_void_p
        lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
        for name in ("nft_ctx_buffer_output", "nft_ctx_buffer_error", "nft_ctx_free"):
            getattr(lib, name).argtypes = [ctypes.c_void_p]
        lib.nft_ctx_get_error_buffer.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_get_error_buffer.restype = ctypes.c_char_p
        lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        self._lib = lib
        self._ctx = None
        self._trim = getattr(ctypes.CDLL(None), "malloc_trim", None)
        self._lock = threading.Lock()

    def __call__(self, script: str, *, release: bool = False) -> None:
        with self._lock:
            if self._ctx is None:
                self._ctx = self._lib.nft_ctx_new(0)
                # Output and errors into buffers, not onto the agent's stdout and stderr.
                self._lib.nft_ctx_buffer_output(self._ctx)
                self._lib.nft_ctx_buffer_error(self._ctx)
            try:
                if self._lib.nft_run_cmd_from_buffer(self._ctx, script.encode()) != 0:
                    raise NftError((self._lib.nft_ctx_get_error_buffer(self._ctx) or b"").decode(
                        errors="replace").strip() or "libnftables refused the transaction")
            finally:
                if release:
                    self._lib.nft_ctx_free(self._ctx)
                    self._ctx = None
                    if self._trim is not None:
                        self._trim(0)


def default_runner():
    """libnftables when the machine has it (Debian's nftables package brings it), else `nft`."""
    try:
        return LibNftables()
    except OSError:
        return run_nft


def _vmap_changes(name: str, old: Mapping[str, str], new: Mapping[str, str]) -> tuple[list[str], list[str]]:
    """(deletes, adds) for a verdict map's elements."""
    gone = [i for i in old if old[i] != new.get(i)]
    come = [i for i in new if new[i] != old.get(i)]
    deletes = ([f'delete element {T} {name} {{ {", ".join(chr(34) + i + chr(34) for i in sorted(gone))} }}']
               if gone else [])
    adds = ([f'add element {T} {name} {{ {", ".join(f"{chr(34)}{i}{chr(34)} : goto {new[i]}" for i in sorted(come))} }}']
            if come else [])
    return deletes, adds


def update_script(old: Ruleset, new: Ruleset) -> str:
    """The nft commands that turn the table holding `old` into one holding `new`."""
    lines: list[str] = []
    # Sets first, as every rule that references one needs it.
    for name, declared in sorted(new.sets.items()):
        before = old.sets.get(name)
        if before is None:
            lines.append(f"add {declared.declaration(name).replace('set ', f'set {T} ', 1)}")
        elif before != declared:
            lines.append(f"flush set {T} {name}")
            if declared.elements:
                lines.append(f"add element {T} {name} {{ {', '.join(declared.elements)} }}")
    for name in sorted(set(new.chains) - set(old.chains)):
        lines.append(f"add chain {T} {name}")
    # Most chains are the same list as before (RulesetCompiler keeps them): find the few that
    # changed, then sort only those, for a stable script.
    changed = [name for name, rules in new.chains.items()
               if (before := old.chains.get(name)) is not rules and before != rules]
    for name in sorted(changed):
        if name in old.chains:
            lines.append(f"flush chain {T} {name}")
        lines += [f"add rule {T} {name} {rule}" for rule in new.chains[name]]
    from_deletes, from_adds = _vmap_changes("from-endpoint", old.from_endpoint, new.from_endpoint)
    to_deletes, to_adds = _vmap_changes("to-endpoint", old.to_endpoint, new.to_endpoint)
    lines += from_deletes + to_deletes + from_adds + to_adds
    # What went away, now that nothing refers to it: chains (flushed first, so one gone chain
    # may jump to another gone chain), then sets.
    gone_chains = sorted(set(old.chains) - set(new.chains))
    lines += [f"flush chain {T} {name}" for name in gone_chains]
    lines += [f"delete chain {T} {name}" for name in gone_chains]
    lines += [f"delete set {T} {name}" for name in sorted(set(old.sets) - set(new.sets))]
    return "\n".join(lines) + ("\n" if lines else "")


# Rules plus set elements past which libnftables' cached copy of the table is not kept.
BIG_TABLE = 2000


class PolicyTable:
    """The `inet percale` table of the network namespace this process is in."""

    def __init__(self, nft=None):
        self._nft = nft or default_runner()
        self.applied: Ruleset | None = None

    def apply(self, ruleset: Ruleset) -> bool:
        """Make the table hold `ruleset`; True when something was written."""
        release = ruleset.size > BIG_TABLE or (self.applied is not None and self.applied.size > BIG_TABLE)
        if self.applied is None:
            self._nft(render(ruleset), release=release)
        else:
            script = update_script(self.applied, ruleset)
            if not script:
                return False
            try:
                self._nft(script, release=release)
            except NftError as err:
                # The table is not what we think (changed behind us?): write it whole.
                log.warning("policy update refused (%s); rewriting the table", err)
                self._nft(render(ruleset), release=release)
        self.applied = ruleset
        return True

    def drifted(self) -> bool:
        """Whether the kernel's table differs from the last one applied in its chains, rule
        counts, sets or map entries (a hand edit, a `nft flush ruleset`)."""
        if self.applied is None:
            return False
        done = subprocess.run(["nft", "-j", "list", "table", FAMILY, TABLE],
                              capture_output=True, text=True)
        if done.returncode != 0:
            return True
        rules: dict[str, int] = {}
        sets: dict[str, int] = {}
        maps: dict[str, int] = {}
        for item in json.loads(done.stdout).get("nftables", []):
            if "rule" in item:
                rules[item["rule"]["chain"]] = rules.get(item["rule"]["chain"], 0) + 1
            elif "chain" in item:
                rules.setdefault(item["chain"]["name"], 0)
            elif "set" in item:
                sets[item["set"]["name"]] = len(item["set"].get("elem", []))
            elif "map" in item:
                maps[item["map"]["name"]] = len(item["map"].get("elem", []))
        want = self.applied
        # The fixed chains too: a flushed prerouting chain is anti-spoofing gone. A base chain's
        # first line is its hook, not a rule.
        expected_rules = {**{name: len(body) - 1 for name, body in BASE_CHAINS.items()},
                          **{name: len(body) for name, body in DISPATCH_CHAINS.items()},
                          **{name: len(body) for name, body in want.chains.items()}}
        return (rules != expected_rules
                or sets != {name: len(s.elements) for name, s in want.sets.items()}
                or maps != {"from-endpoint": len(want.from_endpoint), "to-endpoint": len(want.to_endpoint)})

    def counters(self) -> dict[str, tuple[int, int]]:
        """Packets and bytes per rule comment (a policy rule's identity), summed over the nft
        rules it became."""
        done = subprocess.run(["nft", "-j", "list", "table", FAMILY, TABLE],
                              capture_output=True, text=True)
        found: dict[str, tuple[int, int]] = {}
        if done.returncode != 0:
            return found
        for item in json.loads(done.stdout).get("nftables", []):
            rule = item.get("rule")
            if not rule or "comment" not in rule:
                continue
            for expression in rule.get("expr", []):
                if "counter" in expression:
                    packets, size = found.get(rule["comment"], (0, 0))
                    found[rule["comment"]] = (packets + expression["counter"]["packets"],
                                              size + expression["counter"]["bytes"])
        return found
