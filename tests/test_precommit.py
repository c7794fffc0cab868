"""The pre-commit hook, and the ``compile`` forms it relies on: several workflows, or all of a project's."""

from __future__ import annotations

import re
import shlex
import tomllib
from typing import Any

import pytest
import yaml

from .conftest import REPO, CliRunner, TempProject

FEATURE = """
name: feature
stages:
  - {id: plan, agent: plan, prompt: "Plan it"}
  - {id: build, agent: build, needs: [plan]}
"""
BUGFIX = """
name: bugfix
stages:
  - {id: fix, agent: build}
"""


def hook() -> dict[str, Any]:
    hooks = yaml.safe_load((REPO / ".pre-commit-hooks.yaml").read_text(encoding="utf-8"))
    assert isinstance(hooks, list)
    [found] = [h for h in hooks if h["id"] == "orchestrate-compile-check"]
    assert isinstance(found, dict)
    return found


@pytest.fixture
def two(project: TempProject) -> TempProject:
    project.workflow(FEATURE)
    project.workflow(BUGFIX, name="bugfix")
    for name in ("plan", "build", "auditor"):
        project.template(f"{name}.md", f"# {name}\n\nYou are {{{{ agent.config_name }}}}.\n")
    return project


def run_hook(cli: CliRunner, project: TempProject) -> Any:
    """The hook's entry as pre-commit runs it: from the repository root, with no file names."""
    program, *args = shlex.split(hook()["entry"])
    assert program == "orchestrate"
    return cli(*args, cwd=project.root)


def test_the_hook_is_a_python_hook_that_runs_once_per_commit() -> None:
    found = hook()
    assert found["language"] == "python"
    assert found["entry"] == "orchestrate compile --check"
    assert found["pass_filenames"] is False  # a template edit must re-check every workflow
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]["scripts"]
    assert "orchestrate" in scripts  # what pre-commit's python install puts on the PATH


@pytest.mark.parametrize(
    ("path", "runs"),
    [
        ("workflows/feature.yaml", True),
        ("workflows/bugfix.yml", True),
        ("content/instructions/plan.md", True),
        ("content/instructions/team/review.md", True),
        ("output/opencode/agents/feature-plan.md", True),
        ("output/claude/agents/feature-plan.md", True),
        ("README.md", False),
        ("orchestrator/workflow/fields.py", False),
        ("examples/feature/workflows/feature.yaml", False),
    ],
)
def test_the_hook_runs_for_the_files_that_change_the_output(path: str, runs: bool) -> None:
    assert bool(re.search(hook()["files"], path)) is runs


def test_the_hook_passes_when_output_is_current_and_fails_after_a_template_edit(
    two: TempProject, cli: CliRunner
) -> None:
    assert cli("compile", cwd=two.root).code == 0
    passed = run_hook(cli, two)
    assert passed.code == 0, passed.err
    assert passed.out.splitlines() == [
        "output/ is up to date with workflows/bugfix.yaml (6 files)",
        "output/ is up to date with workflows/feature.yaml (8 files)",
    ]

    two.template("build.md", "# build\n\nYou build, as {{ agent.config_name }}.\n")
    failed = run_hook(cli, two)
    assert failed.code == 1
    assert failed.out.splitlines() == [
        "output/ is not up to date with workflows/bugfix.yaml:",
        "  stale   output/claude/agents/bugfix-build.md",
        "  stale   output/opencode/agents/bugfix-build.md",
        "output/ is not up to date with workflows/feature.yaml:",
        "  stale   output/claude/agents/feature-build.md",
        "  stale   output/opencode/agents/feature-build.md",
    ]
    assert "Run: orchestrate compile workflows/bugfix.yaml workflows/feature.yaml" in failed.err.splitlines()

    fix = failed.err.splitlines()[-1].removeprefix("Run: orchestrate ")
    assert cli(*shlex.split(fix), cwd=two.root).code == 0
    assert run_hook(cli, two).code == 0


def test_the_fix_command_names_only_the_stale_workflows(two: TempProject, cli: CliRunner) -> None:
    assert cli("compile", cwd=two.root).code == 0
    two.template("plan.md", "# plan\n\nYou plan.\n")  # only feature has a plan stage
    result = run_hook(cli, two)
    assert result.code == 1
    assert result.out.splitlines()[0] == "output/ is up to date with workflows/bugfix.yaml (6 files)"
    assert result.err.splitlines()[-1] == "Run: orchestrate compile workflows/feature.yaml"
    one_tool = cli("compile", "--check", "--target", "opencode", cwd=two.root)
    assert one_tool.err.splitlines()[-1] == "Run: orchestrate compile workflows/feature.yaml --target opencode"


def test_compile_with_no_workflow_writes_every_workflow_of_the_project(two: TempProject, cli: CliRunner) -> None:
    two.write("workflows/other.yml", "name: other\nstages: [{agent: build}]\n")
    two.write("workflows/notes.txt", "not a workflow\n")
    two.write("workflows/.#feature.yaml", "an editor's lock file\n")
    result = cli("compile", cwd=two.root)
    assert result.code == 0, result.err
    summaries = [line for line in result.out.splitlines() if line.startswith("Compiled ")]
    assert [s.split(" → ")[0] for s in summaries] == [
        "Compiled workflows/bugfix.yaml",
        "Compiled workflows/feature.yaml",
        "Compiled workflows/other.yml",
    ]
    # Notes name their workflow when there are several.
    assert "note: workflows/bugfix.yaml: no audit stage declared" in result.err
    again = cli("compile", cwd=two.root)
    assert [line for line in again.out.splitlines() if "wrote" in line] == []


def test_several_workflows_can_be_named(two: TempProject, cli: CliRunner) -> None:
    result = cli("compile", "workflows/feature.yaml", "workflows/bugfix.yaml", cwd=two.root)
    assert result.code == 0, result.err
    assert cli("compile", "--check", "workflows/bugfix.yaml", "workflows/feature.yaml", cwd=two.root).code == 0


def test_root_points_the_zero_argument_form_at_another_folder(two: TempProject, cli: CliRunner) -> None:
    assert cli("compile", "--root", "proj", cwd=two.root.parent).code == 0
    result = cli("compile", "--check", "--root", "proj", cwd=two.root.parent)
    assert result.code == 0, result.err
    assert result.out.splitlines()[0] == "proj/output/ is up to date with proj/workflows/bugfix.yaml (6 files)"


def test_an_invalid_workflow_is_reported_and_the_others_still_checked(two: TempProject, cli: CliRunner) -> None:
    assert cli("compile", cwd=two.root).code == 0
    two.workflow("name: bugfix\nstages:\n  - {id: fix, agent: build, neds: [x]}\n", name="bugfix")
    result = run_hook(cli, two)
    assert result.code == 2
    assert "Error: workflows/bugfix.yaml:3:29: unknown key 'neds' in stages[0]" in result.err
    assert result.out.splitlines() == ["output/ is up to date with workflows/feature.yaml (8 files)"]


def test_a_folder_without_workflows_is_a_usage_error(project: TempProject, cli: CliRunner) -> None:
    result = cli("compile", "--check", cwd=project.root)
    assert result.code == 2
    assert result.err.splitlines()[0] == "Error: no workflow files (*.yaml, *.yml) in workflows/"
    elsewhere = cli("compile", cwd=project.root / "workflows")
    assert elsewhere.code == 2
    assert "hint: name the workflow files to compile, or run it in the project folder" in elsewhere.err


def test_out_takes_a_single_workflow(two: TempProject, cli: CliRunner) -> None:
    result = cli("compile", "--out", "gen", cwd=two.root)
    assert result.code == 2
    assert "--out takes a single workflow" in result.err
    assert not (two.root / "gen").exists()
    assert cli("compile", "workflows/feature.yaml", "--out", "gen", cwd=two.root).code == 0
