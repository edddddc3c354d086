"""Build the compiled CNI shim (shim.c, beside this file) with the system's C compiler.

    python -m percale_cni.build .venv/bin/percale-cni     # what scripts/dev.sh runs

The binary is rebuilt only when shim.c changed since it was built: the source's SHA-256 is kept
beside it (`<binary>.sha256`). `percalectl cni install` installs the binary found beside the
running python (the venv's bin directory) and falls back to the Python shim when there is none.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

SOURCE = Path(__file__).resolve().parent / "shim.c"
BINARY_NAME = "percale-cni"
CFLAGS = ("-O2", "-Wall", "-Wextra", "-Werror", "-s")


class BuildError(Exception):
    pass


def source_digest() -> str:
    return hashlib.sha256(SOURCE.read_bytes()).hexdigest()


def installed_binary() -> Path | None:
    """The compiled shim beside the running python, if it was built from the current source."""
    binary = Path(sys.executable).parent / BINARY_NAME
    return binary if is_current(binary) else None


def is_current(binary: Path) -> bool:
    stamp = binary.with_name(binary.name + ".sha256")
    try:
        return os.access(binary, os.X_OK) and stamp.read_text().strip() == source_digest()
    except OSError:
        return False


def build(binary: Path) -> Path:
    """Compile shim.c into `binary` unless it is current; the old binary stays until the new one
    is complete (a rename), so a runtime never runs half a file."""
    if is_current(binary):
        return binary
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise BuildError("no C compiler (cc or gcc) to build the compiled CNI shim")
    binary.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=binary.parent, prefix=f".{binary.name}.")
    os.close(fd)
    try:
        done = subprocess.run([compiler, *CFLAGS, "-o", temporary, str(SOURCE)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            raise BuildError(f"{compiler} failed on {SOURCE}:\n{done.stderr}")
        os.chmod(temporary, 0o755)
        os.replace(temporary, binary)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)
    binary.with_name(binary.name + ".sha256").write_text(source_digest() + "\n")
    return binary


def main() -> int:
    if len(sys.argv) != 2:
        print("usage: python -m percale_cni.build BINARY", file=sys.stderr)
        return 2
    try:
        print(build(Path(sys.argv[1])))
    except BuildError as err:
        print(err, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
