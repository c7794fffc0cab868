"""Atomic file writes: a reader (or a crash) sees the old file or the new one, never half of one."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

__all__ = ["atomic_write"]


def atomic_write(path: Path, content: bytes, *, durable: bool = True) -> None:
    """Write ``content`` to a temp file in the same folder, fsync it, then rename it over ``path``.

    The rename is what makes it atomic: a killed process leaves the old file or the
    new one. ``durable=False`` skips the fsync, for files whose durability comes
    from a later fsync (on ext4 and most journaling file systems, fsyncing a later
    file commits the journal, and ordered data mode writes earlier files' data first).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(content)
            if durable:
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
