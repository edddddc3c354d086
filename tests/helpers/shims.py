"""The compiled CNI shim for tests: built from the current cni-plugin/percale_cni/shim.c into the
venv's bin directory (where `percalectl cni install` looks for it), once per change of the
source."""

from __future__ import annotations

import sys
from pathlib import Path

from percale_cni import build


def compiled_shim() -> Path:
    return build.build(Path(sys.executable).parent / build.BINARY_NAME)
