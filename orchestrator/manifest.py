"""What a stage that acts can see of the workspace: the content of its files, as a manifest and a digest.

A stage with tools or a ``run:`` command reads the workspace, so its output
depends on the files as well as on its request: its fingerprint takes in the
manifest of the workspace when it starts (path -> digest of the content), and a
command after a stage that changed files runs again. The files are those git
would consider (tracked, and untracked but not ignored) in a git repository, else
every file found walking the folder; the state folder, ``output/`` and tool
caches are left out. A file is read only when its size, modification time or
inode changed since it was last hashed.

Manifests a run relied on are kept, content-addressed, in the state folder
(``workspace/<digest>.json``), so a later run can say which files changed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from .fileio import atomic_write
from .scopes import DEFAULT_IGNORE, in_scope, take_snapshot

__all__ = ["Manifests", "changed_paths"]

Manifest = Mapping[str, str]
_DIGEST = 16  # hex characters of a file's content digest


class Manifests:
    """Takes manifests of ``root``, leaving out ``ignore`` (paths or globs from the root, and names at any depth).

    ``folder`` is where manifests are kept; with ``keep=False`` (``plan``) they are read there, never written.
    """

    def __init__(
        self, root: Path, ignore: Sequence[str] = (), folder: Path | None = None, *, keep: bool = True
    ) -> None:
        self.root = root
        self.ignore = tuple(dict.fromkeys((*DEFAULT_IGNORE, *ignore)))
        self.folder = folder
        self.keep = keep
        self._hashed: dict[str, tuple[tuple[int, int, int], str]] = {}
        self._taken: dict[str, Manifest] = {}
        self._git = (root / ".git").exists() and shutil.which("git") is not None

    def take(self) -> tuple[str, Manifest]:
        """The workspace's manifest now, and its digest (kept in the state folder, if there is one)."""
        manifest: dict[str, str] = {}
        for rel in sorted(self._paths()):
            content = self._content(rel)
            if content is not None:
                manifest[rel] = content
        text = json.dumps(manifest, sort_keys=True, separators=(",", ":"))
        key = hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]
        if key not in self._taken:
            self._taken[key] = manifest
            if self.folder is not None and self.keep:
                path = self.folder / f"{key}.json"
                if not path.exists():
                    atomic_write(path, text.encode("utf-8"), durable=False)
        return key, manifest

    def get(self, key: str) -> Manifest | None:
        """A manifest taken in this run or kept by an earlier one; None if it is gone."""
        if key in self._taken:
            return self._taken[key]
        if self.folder is None:
            return None
        try:
            loaded = json.loads((self.folder / f"{key}.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return loaded if isinstance(loaded, dict) else None

    def _paths(self) -> list[str]:
        if self._git:
            try:
                listed = subprocess.run(
                    ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                    cwd=self.root,
                    capture_output=True,
                    timeout=60,
                    check=True,
                ).stdout.decode("utf-8", "surrogateescape")
            except (OSError, subprocess.SubprocessError):
                listed = None
            if listed is not None:
                return [p for p in listed.split("\0") if p and not self._ignored(p)]
        return [p for p in take_snapshot(self.root, self.ignore).files if not self._ignored(p)]

    def _ignored(self, rel: str) -> bool:
        parts = rel.split("/")
        return any(in_scope(rel, (entry, f"{entry}/**")) or entry in parts for entry in self.ignore)

    def _content(self, rel: str) -> str | None:
        path = self.root / rel
        try:
            stat = os.lstat(path)
        except OSError:
            return None  # a tracked file that is gone: it is simply not in the manifest
        key = (stat.st_size, stat.st_mtime_ns, stat.st_ino)
        cached = self._hashed.get(rel)
        if cached is not None and cached[0] == key:
            return cached[1]
        try:
            data = os.readlink(path).encode() if os.path.islink(path) else path.read_bytes()
        except OSError:
            return None
        content = hashlib.sha256(data).hexdigest()[:_DIGEST]
        self._hashed[rel] = (key, content)
        return content


def changed_paths(before: Manifest, after: Manifest) -> list[str]:
    """Files added, removed or changed between two manifests, sorted."""
    return sorted(p for p in before.keys() | after.keys() if before.get(p) != after.get(p))
