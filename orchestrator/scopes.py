"""Write scopes: which paths a stage may change, whether two scopes can touch, what a stage changed.

A stage declares ``writes: ["backend/**", "docs/api.md"]``. This module owns the
pure pieces of that contract: checking a scope pattern, matching paths against
patterns, deciding (conservatively) whether two scopes overlap, and snapshotting a
folder cheaply so the files a stage changed can be listed and blamed.

It does no scheduling and holds no state, never raises for a user's mistake
(``scope_problem`` says what is wrong), and never follows a symlinked folder.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from functools import lru_cache
from pathlib import Path

__all__ = [
    "DEFAULT_IGNORE",
    "Snapshot",
    "changed_files",
    "in_scope",
    "outside_scope",
    "scope_problem",
    "scopes_overlap",
    "take_snapshot",
]

# Tool caches and dependency folders churn on their own; blaming a stage for them would be noise.
DEFAULT_IGNORE: tuple[str, ...] = (
    ".git",
    "__pycache__",
    ".pytest_cache",
    ".mypy_cache",
    ".ruff_cache",
    "node_modules",
    ".venv",
    "venv",
    ".tox",
)

_WILD = frozenset("*?[")


def _segments(path: str) -> tuple[str, ...]:
    return tuple(part for part in path.split("/") if part not in ("", "."))


def _is_wild(segment: str) -> bool:
    return not _WILD.isdisjoint(segment)


def literal_head(pattern: str) -> tuple[tuple[str, ...], bool]:
    """The leading segments of ``pattern`` that name one folder or file (up to the first wildcard, or the first
    template a stage renders), and whether that is the whole pattern."""
    segments = _segments(pattern)
    head: list[str] = []
    for segment in segments:
        if _is_wild(segment) or "{" in segment:
            break
        head.append(segment)
    return tuple(head), len(head) == len(segments)


def _pattern(pattern: str) -> tuple[str, ...]:
    """A pattern as segments; a literal one also covers everything under it, so it gains a trailing ``**``."""
    segments = _segments(pattern)
    if not any(_is_wild(s) for s in segments):
        segments += ("**",)
    # Runs of "**" mean the same as one and would only multiply the matching work.
    collapsed: list[str] = []
    for segment in segments:
        if not (segment == "**" and collapsed and collapsed[-1] == "**"):
            collapsed.append(segment)
    return tuple(collapsed)


def scope_problem(pattern: str) -> str | None:
    """Why ``pattern`` can't be a write scope (a posix path relative to the workspace), or None."""
    if not pattern.strip():
        return "a write scope is empty"
    if "\x00" in pattern:
        return f"{pattern!r} contains a NUL character"
    if "\\" in pattern:
        return f"{pattern!r} contains a backslash; write paths with forward slashes"
    if pattern.startswith("/"):
        return f"{pattern!r} is absolute; scopes are relative to the workspace"
    if ".." in pattern.split("/"):
        return f"{pattern!r} climbs out with '..'; scopes stay inside the workspace"
    if not _segments(pattern):
        return f"{pattern!r} names no path; use '**' for the whole workspace"
    return None


@lru_cache(maxsize=4096)
def _matches(path: tuple[str, ...], pattern: tuple[str, ...]) -> bool:
    if not pattern:
        return not path
    head, rest = pattern[0], pattern[1:]
    if head == "**":
        return any(_matches(path[i:], rest) for i in range(len(path) + 1))
    return bool(path) and fnmatchcase(path[0], head) and _matches(path[1:], rest)


def in_scope(path: str, patterns: Sequence[str]) -> bool:
    """Whether the relative posix ``path`` is covered by one of ``patterns``.

    - ``*``, ``?`` and ``[...]`` match within one path segment: ``*.md`` covers
      ``README.md`` but not ``docs/x.md``.
    - ``**`` as a whole segment matches any number of segments, including none:
      ``docs/**/*.md`` covers ``docs/a.md`` and ``docs/x/y/a.md``; ``**`` alone covers everything.
    - A pattern without wildcards covers that file, or everything under it if it is a
      folder: ``backend`` and ``backend/`` both cover ``backend/x/y.py``.
    - A pattern with wildcards must match the whole path: ``docs/*`` covers
      ``docs/a.md``, not ``docs/sub/a.md``.

    Matching is case-sensitive. Empty and ``.`` segments are ignored on both sides;
    patterns are assumed valid (see ``scope_problem``).
    """
    segments = _segments(path)
    return any(_matches(segments, _pattern(p)) for p in patterns)


def _single_star(segment: str) -> tuple[str, str] | None:
    """(prefix, suffix) of a segment whose only wildcard is one ``*``."""
    if segment.count("*") != 1 or "?" in segment or "[" in segment:
        return None
    prefix, suffix = segment.split("*")
    return prefix, suffix


def _segments_overlap(a: str, b: str) -> bool:
    wild_a, wild_b = _is_wild(a), _is_wild(b)
    if not wild_a and not wild_b:
        return a == b
    if not wild_a:
        return fnmatchcase(a, b)
    if not wild_b:
        return fnmatchcase(b, a)
    # Two "prefix*suffix" segments share a name exactly when their prefixes and suffixes agree;
    # anything more elaborate is assumed to overlap.
    star_a, star_b = _single_star(a), _single_star(b)
    if star_a is None or star_b is None:
        return True
    (pa, sa), (pb, sb) = star_a, star_b
    return (pa.startswith(pb) or pb.startswith(pa)) and (sa.endswith(sb) or sb.endswith(sa))


@lru_cache(maxsize=4096)
def _patterns_overlap(a: tuple[str, ...], b: tuple[str, ...]) -> bool:
    if not a or not b:
        return all(s == "**" for s in a + b)
    if a[0] == "**":
        # "**" either ends here or swallows b's next segment (any segment can be swallowed).
        return _patterns_overlap(a[1:], b) or _patterns_overlap(a, b[1:])
    if b[0] == "**":
        return _patterns_overlap(a, b[1:]) or _patterns_overlap(a[1:], b)
    return _segments_overlap(a[0], b[0]) and _patterns_overlap(a[1:], b[1:])


def scopes_overlap(a: Sequence[str], b: Sequence[str]) -> bool:
    """Whether some path could be covered by a pattern of ``a`` and one of ``b`` (see ``in_scope``).

    Conservative: when unsure it says True. Segments are compared one by one:
    two different literals never meet, a literal meets a wildcard segment that
    matches it, ``**`` can stand for any run of segments, and two wildcard
    segments are assumed to meet unless both are ``prefix*suffix`` forms that
    can't share a name (``*.md`` and ``*.py``). A folder overlaps everything
    under it. An empty scope list overlaps nothing.
    """
    return any(_patterns_overlap(_pattern(p), _pattern(q)) for p in a for q in b)


@dataclass(frozen=True)
class Snapshot:
    """What a folder held at one moment: relative posix path -> (size, mtime_ns)."""

    files: Mapping[str, tuple[int, int]]


def take_snapshot(root: Path, ignore: Sequence[str] = DEFAULT_IGNORE) -> Snapshot:
    """Sizes and modification times of every file under ``root``.

    Symlinked folders are not followed (a symlink is recorded as a file, with its
    own lstat data). An ``ignore`` entry without ``/`` is a file or folder name
    skipped at any depth; one with ``/`` (``docs/ai``) is a path from the root.
    Unreadable folders and files that vanish mid-walk are left out.
    """
    names = {entry.strip("/") for entry in ignore if "/" not in entry.strip("/")}
    paths = {"/".join(_segments(entry)) for entry in ignore if "/" in entry.strip("/")}
    files: dict[str, tuple[int, int]] = {}
    pending: list[tuple[str, str]] = [(os.fspath(root), "")]
    while pending:
        folder, prefix = pending.pop()
        try:
            with os.scandir(folder) as entries:
                listed = list(entries)
        except OSError:
            continue
        for entry in listed:
            rel = prefix + entry.name
            if entry.name in names or rel in paths:
                continue
            try:
                if entry.is_dir(follow_symlinks=False):
                    pending.append((entry.path, rel + "/"))
                else:
                    stat = entry.stat(follow_symlinks=False)
                    files[rel] = (stat.st_size, stat.st_mtime_ns)
            except OSError:
                continue
    return Snapshot(files)


def changed_files(before: Snapshot, after: Snapshot) -> list[str]:
    """Paths added, removed, or whose size or mtime_ns differs, sorted."""
    return sorted(p for p in before.files.keys() | after.files.keys() if before.files.get(p) != after.files.get(p))


def outside_scope(changed: Sequence[str], patterns: Sequence[str]) -> list[str]:
    """The ``changed`` paths no pattern covers, sorted and without repeats."""
    return sorted(p for p in set(changed) if not in_scope(p, patterns))
