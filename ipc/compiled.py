"""Small programs percale compiles from C with the system's compiler, on the node: the CNI shim
(cni-plugin/percale_cni/shim.c) and ExaBGP's bridge (bgpd/bridge.c). Both are clients of the
agent's unix sockets that a Python process would make cost an interpreter's start-up or weight.

    python -m percale.ipc.compiled SOURCE BINARY

A binary is rebuilt only when its source changed since it was built: the source's SHA-256 is kept
beside it (`<binary>.sha256`). Whoever runs one takes it from beside the running python (the
venv's bin directory, where scripts/dev.sh builds them) only while it is current, and falls back
to the Python version otherwise.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

CFLAGS = ("-O2", "-Wall", "-Wextra", "-Werror", "-s", "-pthread")


class BuildError(Exception):
    pass


def source_digest(source: Path) -> str:
    return hashlib.sha256(source.read_bytes()).hexdigest()


def is_current(source: Path, binary: Path) -> bool:
    """Whether `binary` is executable and was built from `source` as it is now."""
    stamp = binary.with_name(binary.name + ".sha256")
    try:
        return os.access(binary, os.X_OK) and stamp.read_text().strip() == source_digest(source)
    except OSError:
        return False


def beside_python(source: Path, name: str) -> Path | None:
    """The program `name` beside the running python, if it was built from `source` as it is."""
    binary = Path(sys.executable).parent / name
    return binary if is_current(source, binary) else None


def build(source: Path, binary: Path) -> Path:
    """Compile `source` into `binary` unless it is current; the old binary stays until the new
    one is complete (a rename), so nobody runs half a file."""
    if is_current(source, binary):
        return binary
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise BuildError(f"no C compiler (cc or gcc) to build {binary.name} from {source.name}")
    binary.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=binary.parent, prefix=f".{binary.name}.")
    os.close(fd)
    try:
        done = subprocess.run([compiler, *CFLAGS, "-o", temporary, str(source)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            raise BuildError(f"{compiler} failed on {source}:\n{done.stderr}")
        os.chmod(temporary, 0o755)
        os.replace(temporary, binary)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)
    binary.with_name(binary.name + ".sha256").write_text(source_digest(source) + "\n")
    return binary


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m percale.ipc.compiled SOURCE BINARY", file=sys.stderr)
        return 2
    try:
        print(build(Path(args[0]), Path(args[1])))
    except (BuildError, OSError) as err:
        print(err, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
