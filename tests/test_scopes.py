"""Write scopes: matching paths, overlapping scopes, and blaming the files a stage changed."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from orchestrator.scopes import changed_files, in_scope, outside_scope, scope_problem, scopes_overlap, take_snapshot


@pytest.mark.parametrize(
    ("path", "pattern", "covered"),
    [
        ("anything/at/all.txt", "**", True),
        ("top.md", "**", True),
        ("backend/api.py", "backend/**", True),
        ("backend/x/y.py", "backend/**", True),
        ("backend.py", "backend/**", False),
        ("backend/x/y.py", "backend", True),
        ("backend/x/y.py", "backend/", True),
        ("backend", "backend", True),
        ("backendx/y.py", "backend", False),
        ("README.md", "*.md", True),
        ("docs/x.md", "*.md", False),
        ("docs/a.md", "docs/**/*.md", True),
        ("docs/api/v1/a.md", "docs/**/*.md", True),
        ("docs/api/a.py", "docs/**/*.md", False),
        ("src/a.py", "src/[ab].py", True),
        ("src/c.py", "src/[ab].py", False),
        ("src/a1.py", "src/a?.py", True),
        ("docs/sub/a.md", "docs/*", False),
        ("docs/api.md", "docs/api.md", True),
        ("docs/api.md.bak", "docs/api.md", False),
        ("Backend/x.py", "backend", False),
        ("./backend/x.py", "backend", True),
    ],
)
def test_in_scope(path: str, pattern: str, covered: bool) -> None:
    assert in_scope(path, [pattern]) is covered


def test_a_path_is_in_scope_when_any_pattern_covers_it() -> None:
    assert in_scope("docs/api.md", ["backend/**", "docs/api.md"])
    assert not in_scope("docs/other.md", ["backend/**", "docs/api.md"])
    assert not in_scope("docs/api.md", [])


@pytest.mark.parametrize(
    ("a", "b", "overlap"),
    [
        (["backend/**"], ["frontend/**"], False),
        (["backend"], ["frontend"], False),
        (["backend"], ["backend/api.py"], True),
        (["backend/**"], ["backend/api.py"], True),
        (["**"], ["anything/deep/file.txt"], True),
        (["**"], ["*.md"], True),
        (["*.md"], ["README.md"], True),
        (["*.md"], ["docs/x.md"], False),
        (["*.md"], ["*.py"], False),
        (["docs/**"], ["docs/api/*.md"], True),
        (["docs/**/*.md"], ["docs/api/v1/x.md"], True),
        (["**/*.md"], ["src/*.py"], False),
        # A literal scope also covers what is under it, should "src/main.py" be a folder.
        (["**/*.md"], ["src/main.py"], True),
        (["src/[ab].py"], ["src/a.py"], True),
        (["src/[ab].py"], ["src/c.py"], False),
        (["docs/api.md"], ["docs/*.md"], True),
        (["docs/*"], ["docs/sub/x.md"], False),
        (["backend/**", "docs/api.md"], ["frontend/**", "docs"], True),
        ([], ["**"], False),
        (["**"], [], False),
    ],
)
def test_scopes_overlap(a: list[str], b: list[str], overlap: bool) -> None:
    assert scopes_overlap(a, b) is overlap
    assert scopes_overlap(b, a) is overlap


@pytest.mark.parametrize(
    ("pattern", "why"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("/etc/passwd", "absolute"),
        ("../elsewhere/**", ".."),
        ("docs/../../x", ".."),
        ("backend\\api.py", "backslash"),
        ("docs/\x00", "NUL"),
        (".", "no path"),
    ],
)
def test_bad_scope_patterns_say_why(pattern: str, why: str) -> None:
    problem = scope_problem(pattern)
    assert problem is not None and why in problem


@pytest.mark.parametrize("pattern", ["**", "backend/**", "docs/api.md", "src/[ab].py", "notes..md", "backend/"])
def test_good_scope_patterns_pass(pattern: str) -> None:
    assert scope_problem(pattern) is None


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_snapshots_see_added_modified_and_removed_files_but_not_ignored_folders(tmp_path: Path) -> None:
    kept = write(tmp_path / "src/kept.py", "same")
    edited = write(tmp_path / "src/edited.py", "aaaa")
    removed = write(tmp_path / "docs/old.md", "bye")
    write(tmp_path / ".git/HEAD", "ref: main")
    write(tmp_path / "src/__pycache__/edited.pyc", "x")
    write(tmp_path / "docs/ai/state.json", "{}")
    before = take_snapshot(tmp_path, ignore=(".git", "__pycache__", "docs/ai"))
    assert set(before.files) == {"src/kept.py", "src/edited.py", "docs/old.md"}

    stamp = edited.stat().st_mtime_ns
    edited.write_text("bbbb")  # same size: only the mtime can tell
    os.utime(edited, ns=(stamp + 5_000_000_000, stamp + 5_000_000_000))
    removed.unlink()
    write(tmp_path / "src/new.py", "hello")
    write(tmp_path / ".git/HEAD", "ref: other-branch")
    write(tmp_path / ".git/objects/ab/cdef", "blob")
    write(tmp_path / "src/__pycache__/new.pyc", "y")
    write(tmp_path / "docs/ai/state.json", '{"changed": true}')
    after = take_snapshot(tmp_path, ignore=(".git", "__pycache__", "docs/ai"))

    assert changed_files(before, after) == ["docs/old.md", "src/edited.py", "src/new.py"]
    assert kept.read_text() == "same"


def test_default_ignore_skips_tool_folders_at_any_depth(tmp_path: Path) -> None:
    write(tmp_path / "app/node_modules/lib/index.js", "x")
    write(tmp_path / "pkg/.venv/bin/python", "x")
    write(tmp_path / "pkg/.mypy_cache/x.json", "x")
    write(tmp_path / "pkg/mod.py", "x")
    assert set(take_snapshot(tmp_path).files) == {"pkg/mod.py"}


def test_symlinked_folders_are_recorded_not_followed(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    write(outside / "big/file.txt", "x")
    root = tmp_path / "ws"
    write(root / "a.txt", "a")
    (root / "linked").symlink_to(outside, target_is_directory=True)
    files = take_snapshot(root).files
    assert set(files) == {"a.txt", "linked"}
    assert files["linked"][0] == os.lstat(root / "linked").st_size


def test_an_unreadable_folder_is_skipped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path / "ok.txt", "x")
    locked = write(tmp_path / "locked/secret.txt", "x").parent
    real_scandir = os.scandir

    # chmod can't lock out root (tests may run as root), so the refusal is simulated.
    def scandir(path: str) -> Any:
        if Path(path) == locked:
            raise PermissionError(13, "Permission denied", path)
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    assert set(take_snapshot(tmp_path).files) == {"ok.txt"}


def test_outside_scope_names_exactly_the_files_outside() -> None:
    changed = ["backend/api.py", "docs/api.md", "docs/guide.md", "README.md", "backend/tests/t.py", "README.md"]
    assert outside_scope(changed, ["backend/**", "docs/api.md"]) == ["README.md", "docs/guide.md"]
    assert outside_scope(changed, ["**"]) == []
    assert outside_scope([], ["backend"]) == []
