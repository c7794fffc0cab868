"""Atomic file writes: a reader (or a crash) sees the old file or the new one, never half of one."""

from __future__ import annotations

import contextlib
import os
import signal
import tempfile
import threading
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

__all__ = ["atomic_write", "replace_file", "write_together"]


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


def replace_file(path: Path, content: bytes) -> None:
    """``atomic_write(path, content, durable=False)`` in four system calls, for the one writer of a folder that
    exists (a run's state writer, under the task's lock): a temp file named after ``path`` and this process,
    created with the final mode, written, closed and renamed over ``path``."""
    tmp = f"{path.parent}/.{path.name}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o666)  # the umask applies
    try:
        view = memoryview(content)
        while view:
            view = view[os.write(fd, view) :]
    except BaseException:
        os.close(fd)
        os.unlink(tmp)
        raise
    os.close(fd)
    os.replace(tmp, path)


def write_together(contents: Mapping[Path, bytes], remove: Sequence[Path] = ()) -> None:
    """Write several files (and remove some) so that they change together: every file is written to a temp
    file first, then all are renamed at once, with Ctrl-C and SIGTERM held back until the last rename (a
    signal that came meanwhile is delivered right after). A failure before the renames changes nothing."""
    staged: list[tuple[str, Path]] = []
    try:
        for path, content in contents.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
            staged.append((tmp, path))
            os.fchmod(fd, FILE_MODE)
            with os.fdopen(fd, "wb") as handle:
                handle.write(content)
                handle.flush()
                os.fsync(handle.fileno())
        with _signals_held():
            for tmp, path in staged:
                os.replace(tmp, path)
            staged = []
            for path in remove:
                path.unlink(missing_ok=True)
    finally:
        for tmp, _ in staged:
            Path(tmp).unlink(missing_ok=True)


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """Hold SIGINT and SIGTERM back while the block runs (on the main thread, where Python handles signals):
    one that comes meanwhile is noted, and raised again once the block is done."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    came: list[int] = []

    def note(signum: int, frame: object) -> None:
        came.append(signum)

    previous = {sig: signal.signal(sig, note) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for signum in dict.fromkeys(came):
            signal.raise_signal(signum)
