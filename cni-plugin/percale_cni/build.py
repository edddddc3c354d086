"""Build the compiled CNI shim (shim.c, beside this file) with the system's C compiler.

    python -m percale_cni.build .venv/bin/percale-cni     # what scripts/dev.sh runs

How it is built and kept current is percale.ipc.compiled's (a SHA-256 stamp beside the binary).
`percalectl cni install` installs the binary found beside the running python (the venv's bin
directory) and falls back to the Python shim when there is none. The shim itself (shim.py,
shim.c) imports nothing of percale; this build step may.
"""

from __future__ import annotations

import sys
from pathlib import Path

from percale.ipc import compiled
from percale.ipc.compiled import BuildError

SOURCE = Path(__file__).resolve().parent / "shim.c"
BINARY_NAME = "percale-cni"

__all__ = ["BINARY_NAME", "SOURCE", "BuildError", "build", "installed_binary"]


def installed_binary() -> Path | None:
    """The compiled shim beside the running python, if it was built from the current source."""
    return compiled.beside_python(SOURCE, BINARY_NAME)


def build(binary: Path) -> Path:
    """Compile shim.c into `binary` unless it is current (percale.ipc.compiled.build)."""
    return compiled.build(SOURCE, binary)


def main() -> int:
    if len(sys.argv) != 2:
        print("usage: python -m percale_cni.build BINARY", file=sys.stderr)
        return 2
    return compiled.main([str(SOURCE), sys.argv[1]])


if __name__ == "__main__":
    sys.exit(main())
