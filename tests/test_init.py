"""``orchestrate init``: a project that works at once, files a user edited are kept, refusals are clean."""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path

import pytest

from orchestrator import scaffold

from .conftest import REPO, CliRunner

DEFAULTS = REPO / "orchestrator" / "defaults" / "instructions"
AGENT_TEMPLATES = sorted(p.name for p in DEFAULTS.glob("*.md") if not p.name.startswith("_"))


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """An empty git repository, as a user starting a project has."""
    root = tmp_path / "proj"
    root.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    return root


def next_commands(out: str) -> list[list[str]]:
    lines = out.split("Next:\n", 1)[1].splitlines()
    return [shlex.split(line) for line in lines if line.startswith("  orchestrate ")]


def test_init_makes_a_project_whose_printed_commands_all_work(repo: Path, cli: CliRunner) -> None:
    result = cli("init", cwd=repo)
    assert result.code == 0, result.err
    assert result.err == ""  # inside a git repository: nothing to warn about
    assert "  created       workflows/feature.yaml" in result.out
    assert sorted(p.name for p in (repo / "content/instructions").iterdir()) == AGENT_TEMPLATES
    for name in AGENT_TEMPLATES:
        assert (repo / "content/instructions" / name).read_bytes() == (DEFAULTS / name).read_bytes(), name
    assert "params.goal" in (repo / "workflows/feature.yaml").read_text()

    commands = next_commands(result.out)
    assert [c[1] for c in commands] == ["validate", "compile", "run"]
    assert all(c[0] == "orchestrate" for c in commands)
    assert "--offline" in commands[2]
    for command in commands:
        ran = cli(*command[1:], cwd=repo)
        assert ran.code == 0, (command, ran.out, ran.err)
        assert "warning" not in ran.err, (command, ran.err)
    assert (repo / "output/opencode/agents/feature-plan.md").is_file()
    assert (repo / "docs/ai/my-first-task/workflow-state.md").is_file()


def test_starter_workflow_runs_offline_with_any_task(repo: Path, cli: CliRunner) -> None:
    assert cli("init", cwd=repo).code == 0
    validated = cli("validate", "workflows/feature.yaml", cwd=repo)
    assert validated.code == 0 and validated.err == ""
    assert "  2. backend, frontend" in validated.out
    assert "Audit stage: audit" in validated.out
    ran = cli("run", "workflows/feature.yaml", "--task", "t", "--param", "goal=x", "--offline", cwd=repo)
    assert ran.code == 0, ran.err


def test_second_init_keeps_edited_files_and_says_so(repo: Path, cli: CliRunner) -> None:
    cli("init", cwd=repo)
    plan = repo / "content/instructions/plan.md"
    plan.write_text("My own plan brief.\n")
    (repo / "content/instructions/build.md").unlink()

    again = cli("init", cwd=repo)
    assert again.code == 0
    assert "  kept (exists) content/instructions/plan.md" in again.out
    assert "  created       content/instructions/build.md" in again.out
    assert "  unchanged     workflows/feature.yaml" in again.out
    assert "--force" in again.err
    assert plan.read_text() == "My own plan brief.\n"

    forced = cli("init", "--force", cwd=repo)
    assert forced.code == 0
    assert "  overwritten   content/instructions/plan.md" in forced.out
    assert plan.read_bytes() == (DEFAULTS / "plan.md").read_bytes()


def test_gitignore_is_opt_in_and_gets_one_line(repo: Path, cli: CliRunner) -> None:
    cli("init", cwd=repo)
    assert not (repo / ".gitignore").exists()

    (repo / ".gitignore").write_text("node_modules/")  # no final newline
    first = cli("init", "--gitignore", cwd=repo)
    assert first.code == 0
    assert "added docs/ai/" in first.out
    assert (repo / ".gitignore").read_text() == "node_modules/\ndocs/ai/\n"

    second = cli("init", "--gitignore", cwd=repo)
    assert second.code == 0
    assert "already ignores docs/ai/" in second.out
    assert (repo / ".gitignore").read_text() == "node_modules/\ndocs/ai/\n"


def test_gitignore_is_created_when_missing(repo: Path, cli: CliRunner) -> None:
    assert cli("init", "--gitignore", "--root", str(repo)).code == 0
    assert (repo / ".gitignore").read_text() == "docs/ai/\n"


def test_root_option_and_commands_that_work_from_where_the_user_is(repo: Path, cli: CliRunner) -> None:
    result = cli("init", "--root", "proj", cwd=repo.parent)
    assert result.code == 0, result.err
    assert "  created       proj/workflows/feature.yaml" in result.out
    validate = next_commands(result.out)[0]
    assert validate == ["orchestrate", "validate", "proj/workflows/feature.yaml"]
    assert cli(*validate[1:], cwd=repo.parent).code == 0


def test_outside_a_git_repository_init_works_but_warns(tmp_path: Path, cli: CliRunner) -> None:
    if any((folder / ".git").exists() for folder in (tmp_path, *tmp_path.parents)):
        pytest.skip("the temp folder is inside a git repository")
    result = cli("init", cwd=tmp_path)
    assert result.code == 0
    assert "warning: this folder is not in a git repository" in result.err
    assert (tmp_path / "workflows/feature.yaml").is_file()


def test_missing_root_is_refused(tmp_path: Path, cli: CliRunner) -> None:
    result = cli("init", "--root", str(tmp_path / "nope"))
    assert result.code == 2
    assert result.err.splitlines()[0] == f"Error: {tmp_path / 'nope'} does not exist"
    assert "hint: " in result.err
    assert "Traceback" not in result.err
    assert not (tmp_path / "nope").exists()


def test_root_that_is_a_file_is_refused(tmp_path: Path, cli: CliRunner) -> None:
    (tmp_path / "file").write_text("x")
    result = cli("init", "--root", str(tmp_path / "file"))
    assert result.code == 2
    assert "is not a folder" in result.err.splitlines()[0]


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores folder permissions, so a read-only folder stays writable")
def test_read_only_root_is_refused(tmp_path: Path, cli: CliRunner) -> None:
    root = tmp_path / "ro"
    root.mkdir()
    root.chmod(0o555)
    try:
        result = cli("init", "--root", str(root))
    finally:
        root.chmod(0o755)
    assert result.code == 2
    assert result.err.splitlines()[0] == f"Error: {root} is not writable"
    assert list(root.iterdir()) == []


def test_a_failing_write_is_an_error_not_a_traceback(
    repo: Path, cli: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Permissions can deny a write that os.access allowed (ACLs, read-only mounts, a full disk).
    def refuse(path: Path, content: bytes, *, durable: bool = True) -> None:
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(scaffold, "atomic_write", refuse)
    result = cli("init", cwd=repo)
    assert result.code == 2
    assert result.err.startswith(f"Error: can't write {repo / 'workflows/feature.yaml'}: Permission denied")
    assert "Traceback" not in result.err
