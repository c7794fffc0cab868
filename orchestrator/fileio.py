"""Atomic file writes: a reader (or a crash) sees the old file or the new one, never half of one."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

__all__ = ["atomic_write"]


def _umask() -> int:
    """The process's umask, read without changing it where the system says it (Linux), else by setting and
    restoring it (done once, at import, before any thread of ours runs)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# New files get the mode any program's would (0666 less the umask), not the temp file's 0600.
FILE_MODE = 0o666 & ~_umask()


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
        os.fchmod(fd, FILE_MODE)
        with os.fdopen(fd, "wb") as handle:
            handle.write(content)
            if durable:
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
