"""One writer per task: the lock a run holds on its state folder.

The lock is ``docs/ai/<task>/.lock``, held with ``flock`` for as long as the
run lasts and naming its holder (pid, host, start, command) so a second run can
say who has it. The kernel drops a ``flock`` when its process dies, however it
dies, so a lock left by a killed run is simply free: the next run takes it over
and says so. The file is removed on release; a run that opened it just before
the removal notices (the path no longer names the file it locked) and tries
again, so two runs can never both believe they hold the lock.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from pathlib import Path
from types import TracebackType

from ..errors import StateError

__all__ = ["LOCK_FILE", "TaskLock", "is_held"]

LOCK_FILE = ".lock"


class TaskLock:
    """``with TaskLock(folder, command): ...`` — refuse (StateError) when another run holds it."""

    def __init__(self, folder: Path, command: str = "", *, display: str | None = None, wait: float = 0.0) -> None:
        self.path = folder / LOCK_FILE
        self.wait = wait  # seconds to wait for a holder to let go (state commands hold it for milliseconds)
        self.command = command
        self.display = display or str(folder)
        self.took_over: dict[str, object] | None = None  # the holder of a lock left by a dead run
        self._fd: int | None = None

    def acquire(self) -> TaskLock:
        import fcntl  # POSIX only; imported here so the rest of the package imports anywhere

        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StateError(f"can't create the state folder {self.display}: {exc.strerror or exc}") from exc
        deadline = time.monotonic() + self.wait
        replaced = 0
        while replaced < 100:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                raise StateError(f"can't open {self.display}/{LOCK_FILE}: {exc.strerror or exc}") from exc
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read(fd)
                os.close(fd)
                if time.monotonic() < deadline:
                    time.sleep(0.01)
                    continue
                raise StateError(_busy_message(self.display, holder), hint=_busy_hint(holder)) from None
            except OSError as exc:
                os.close(fd)
                raise StateError(f"can't lock {self.display}/{LOCK_FILE}: {exc.strerror or exc}") from exc
            if not _same_file(fd, self.path):  # removed by a run that just finished: lock the new one
                os.close(fd)
                replaced += 1
                continue
            previous = _read(fd)
            if previous:
                self.took_over = previous
            holder = {
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "command": self.command,
            }
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(holder) + "\n").encode("utf-8"), 0)
            self._fd = fd
            return self
        raise StateError(f"can't lock {self.display}/{LOCK_FILE}: it keeps being replaced")

    def release(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            self.path.unlink()  # before unlocking: whoever opens the path next gets a fresh file
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> TaskLock:
        return self.acquire()

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None) -> None:
        self.release()


def is_held(folder: Path) -> bool:
    """Whether a live process holds the task's lock now (a killed run's lock file stays, but not its lock)."""
    import fcntl

    try:
        fd = os.open(folder / LOCK_FILE, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        os.close(fd)  # closing drops a lock this check took
    return False


def _same_file(fd: int, path: Path) -> bool:
    try:
        here, there = os.fstat(fd), os.stat(path)
    except OSError:
        return False
    return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)


def _read(fd: int) -> dict[str, object]:
    try:
        raw = os.pread(fd, 4096, 0)
        data = json.loads(raw) if raw.strip() else {}
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _busy_message(display: str, holder: dict[str, object]) -> str:
    if not holder:
        return f"another orchestrate run is using {display}/ (it is locked)"
    since = f" since {holder['started']}" if holder.get("started") else ""
    return f"another orchestrate run is using {display}/: pid {holder.get('pid')} on {holder.get('host')}{since}"


def _busy_hint(holder: dict[str, object]) -> str:
    pid = holder.get("pid")
    stop = f"stop it (Ctrl-C in its terminal, or kill {pid})" if pid else "stop it"
    return f"wait for it to finish or {stop}; its progress is in workflow-state.md"
