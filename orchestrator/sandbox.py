"""Commands under the operating system's sandbox: bubblewrap (``bwrap``) on Linux.

Every command a stage runs (a ``run:`` stage, a bash tool call) is started
through ``Sandbox.wrap``, which puts it in new namespaces:

- the filesystem is read-only, except the folders the stage may write (its
  write scope, else the workspace) minus the protected ones (the state
  folder, ``output/``, ``content/instructions/``, the workflows and ``.git``),
  which stay read-only whatever the scope says;
- credentials in the home folder (``~/.ssh``, cloud and registry tokens) are
  hidden, and ``HOME`` points to an empty folder in a private ``/tmp``;
- a new PID namespace: ``/proc`` shows only the command's own processes, so
  no process of orchestrate (or its environment) can be read;
- no network unless the stage or its agent says ``network: true``;
- the environment is only what the caller passes (an allow-list, never the
  API key: see ``workspace.scrub_env``).

The kernel enforces it: a write outside fails at the call, whatever the
command was (redirections, symlinks and ``..`` included). ``sandbox: none`` in
a workflow turns it off, with a warning on every run. It never decides what a
stage may write: the run hands it the paths.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .errors import UsageError
from .scopes import literal_head

__all__ = ["HIDDEN_IN_HOME", "PACKAGE", "Confinement", "Sandbox", "available", "require", "writable_paths"]

PACKAGE = "bubblewrap"  # the Debian and Ubuntu package that installs bwrap
# Credentials commonly kept in a home folder: covered by an empty folder (or /dev/null for a file).
HIDDEN_IN_HOME = (
    ".ssh",
    ".gnupg",
    ".aws",
    ".azure",
    ".config/gcloud",
    ".config/gh",
    ".kube",
    ".docker",
    ".netrc",
    ".pypirc",
    ".npmrc",
    ".git-credentials",
    ".anthropic",
)
SANDBOX_HOME = "/tmp/home"


@functools.cache
def _probe(bwrap: str) -> str:
    """Why ``bwrap`` can't make a sandbox here ("" when it can): a real run of ``true`` in new namespaces."""
    try:
        result = subprocess.run(
            [bwrap, "--ro-bind", "/", "/", "--unshare-pid", "--unshare-net", "--proc", "/proc", "--", "true"],
            capture_output=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"bwrap could not start: {exc}"
    if result.returncode != 0:
        return "bwrap could not create namespaces: " + result.stderr.decode(errors="replace").strip()
    return ""


def available() -> str:
    """Why commands can't be sandboxed on this machine ("" when they can)."""
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        return "bwrap is not installed"
    return _probe(bwrap)


def require(source: str) -> None:
    """Refuse, before any spend, a run whose commands would have no sandbox."""
    problem = available()
    if problem:
        raise UsageError(
            f"{source}: its stages run commands, which run sandboxed, and {problem}",
            hint=f"install it (Debian/Ubuntu: sudo apt-get install {PACKAGE}; other Linux: the {PACKAGE} "
            "package), or run them unconfined by adding `sandbox: none` to the workflow",
        )


@dataclass(frozen=True)
class Sandbox:
    """Where a command may write and what it may reach (see the module docstring)."""

    root: Path  # the workspace
    writable: tuple[Path, ...]  # folders (or files) the command may change
    protected: tuple[Path, ...] = ()  # read-only whatever ``writable`` says
    network: bool = False
    home: Path | None = field(default_factory=lambda: Path.home())
    hidden: tuple[Path, ...] = ()  # folders covered by an empty one

    def wrap(self, argv: Sequence[str], cwd: Path, env: dict[str, str]) -> list[str]:
        """``argv`` as bwrap runs it in ``cwd`` with exactly ``env``."""
        bwrap = shutil.which("bwrap") or "bwrap"
        out = [bwrap, "--die-with-parent", "--unshare-pid", "--unshare-ipc", "--unshare-uts"]
        if not self.network:
            out.append("--unshare-net")
        out += ["--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp"]
        out += ["--ro-bind", str(self.root), str(self.root)]  # again: the private /tmp may have covered it
        if self.home is not None:
            for name in HIDDEN_IN_HOME:
                secret = self.home / name
                if secret.is_dir() and not secret.is_symlink():
                    out += ["--tmpfs", str(secret)]
                elif secret.exists():
                    out += ["--ro-bind", "/dev/null", str(secret)]
        for path in self.hidden:
            if path.is_dir():
                out += ["--tmpfs", str(path)]
        for path in self.writable:
            if path.exists():
                out += ["--bind", str(path), str(path)]
        for path in self.protected:
            if not path.exists() and path.name != ".git":
                # Not there yet: made empty (git shows no empty folder) and mounted read-only, so that no command
                # can put files there for a later compile or run to pick up.
                path.mkdir(parents=True, exist_ok=True)
            if path.exists():
                out += ["--ro-bind", str(path), str(path)]
        out += ["--dir", SANDBOX_HOME, "--chdir", str(cwd), "--clearenv"]
        for name, value in {**env, "HOME": SANDBOX_HOME, "TMPDIR": "/tmp"}.items():
            out += ["--setenv", name, value]
        return [*out, "--", *argv]


def writable_paths(root: Path, scope: Sequence[str]) -> tuple[Path, ...]:
    """The folders a write scope reaches, for the kernel: each pattern's literal leading folders (``src/**`` ->
    ``src``, ``docs/*.md`` -> ``docs``, ``**`` -> the workspace). Finer patterns are checked after the stage."""
    out: list[Path] = []
    for pattern in scope:
        head, whole = literal_head(pattern)
        path = root.joinpath(*head)
        if head and whole and not path.is_dir():
            path = path.parent  # one file: its folder, so the file can be made or replaced
        out.append(path)
    return tuple(dict.fromkeys(p for p in out if os.path.commonpath([root, p]) == str(root)))


@dataclass(frozen=True)
class Confinement:
    """How a run confines its commands: on (bubblewrap) or off (``sandbox: none``), and the paths no stage
    may write (the state folder, ``output/``, ``content/instructions/``, the workflows, ``.git``)."""

    enabled: bool = True
    protected: tuple[Path, ...] = ()
    hidden: tuple[Path, ...] = ()  # outside the workspace and not for commands to read: the key that signs decisions

    def for_stage(self, root: Path, writes: Sequence[str], network: bool) -> Sandbox | None:
        """The sandbox of one stage's commands (None when the run's commands are not confined)."""
        if not self.enabled:
            return None
        return Sandbox(root, writable_paths(root, writes), self.protected, network, hidden=self.hidden)
