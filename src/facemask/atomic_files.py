"""Files written whole or not at all: the content goes to `<name>.part` beside the target, then
replaces it in one rename, so a reader never sees half a file and a writer killed mid-way leaves
the previous file intact (and at most a `.part`, which the media retention sweeps)."""

from __future__ import annotations

import os
from pathlib import Path

PART_SUFFIX = ".part"


def write_atomic(path: Path | str, data: bytes | str) -> None:
    """Write `data` (bytes, or text as UTF-8) to `path`, creating its folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + PART_SUFFIX)
    tmp.write_bytes(data.encode() if isinstance(data, str) else data)
    os.replace(tmp, path)
