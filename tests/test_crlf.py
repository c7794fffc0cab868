"""CRLF checkouts (git's autocrlf on Windows): the same sources give the same output, and nothing is rewritten."""

from __future__ import annotations

from pathlib import Path

import pytest

from .conftest import CliRunner, TempProject

WORKFLOW = """
name: feature
description: >
  Plan a feature,
  then build it.
context: [AGENTS.md]
params:
  goal: {description: What to build, required: true}
agents:
  plan:
    description: |
      Breaks the goal
      into a plan.
stages:
  - id: plan
    agent: plan
    prompt: |
      Write a plan for:
      {{ params.goal }}
  - id: build
    agent: build
    needs: [plan]
    description: "Builds what the plan
      says, step by step"
"""
PLAN = """
{% extends "builtin/plan.md" %}
{% block method %}
Read the code first.
{# a comment #}
{% if workflow.description %}
Goal of the workflow: {{ workflow.description }}
{% endif %}
{% endblock %}
"""
BUILD = """
You build for {{ workflow.name }}.
{% for stage in agent.stages %}
- {{ stage.id }}: {{ stage.description }}
{% endfor %}
{% include "partials/rules.md" %}
{{ context }}
"""
RULES = """
Rules:
  - keep it small
  - test it
"""
AGENTS_MD = "# Agents\n\nRun the tests.\nKeep commits small.\n"


@pytest.fixture
def feature(project: TempProject) -> TempProject:
    project.workflow(WORKFLOW)
    project.template("plan.md", PLAN)
    project.template("build.md", BUILD)
    project.template("partials/rules.md", RULES)
    project.write("AGENTS.md", AGENTS_MD)
    return project


def sources(project: TempProject) -> list[Path]:
    return [project.root / "workflows/feature.yaml", project.root / "AGENTS.md", *instructions(project)]


def instructions(project: TempProject) -> list[Path]:
    return sorted((project.root / "content/instructions").rglob("*.md"))


def outputs(project: TempProject, out: str = "output") -> dict[str, bytes]:
    folder = project.root / out
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*.md"))}


def to_crlf(paths: list[Path]) -> None:
    for path in paths:
        data = path.read_bytes()
        assert b"\r" not in data
        path.write_bytes(data.replace(b"\n", b"\r\n"))


@pytest.mark.parametrize("converted", ["sources", "output", "both"])
def test_check_passes_whichever_files_have_crlf_endings(converted: str, feature: TempProject, cli: CliRunner) -> None:
    assert cli("compile", "workflows/feature.yaml", cwd=feature.root).code == 0
    generated = [feature.root / "output" / rel for rel in outputs(feature)]
    assert len(generated) == 8
    if converted in ("sources", "both"):
        to_crlf(sources(feature))
    if converted in ("output", "both"):
        to_crlf(generated)
    result = cli("compile", "workflows/feature.yaml", "--check", cwd=feature.root)
    assert result.code == 0, result.out
    assert result.out == "output/ is up to date with workflows/feature.yaml (8 files)\n"


def test_crlf_sources_render_byte_for_byte_what_lf_sources_do(feature: TempProject, cli: CliRunner) -> None:
    assert cli("compile", "workflows/feature.yaml", "--out", "from-lf", cwd=feature.root).code == 0
    to_crlf(sources(feature))
    assert cli("compile", "workflows/feature.yaml", "--out", "from-crlf", cwd=feature.root).code == 0
    from_lf, from_crlf = outputs(feature, "from-lf"), outputs(feature, "from-crlf")
    assert from_crlf == from_lf
    assert all(b"\r" not in data for data in from_crlf.values())
    # The fixture's sources really reached the output: context, includes, block scalars.
    build = from_lf["claude/agents/feature-build.md"].decode()
    assert "Keep commits small." in build and "  - test it" in build
    assert "- build: Builds what the plan says, step by step" in build
    assert "Goal of the workflow: Plan a feature, then build it." in from_lf["claude/agents/feature-plan.md"].decode()


def test_compile_leaves_a_crlf_checkout_of_current_output_alone(feature: TempProject, cli: CliRunner) -> None:
    assert cli("compile", "workflows/feature.yaml", cwd=feature.root).code == 0
    to_crlf(sources(feature))
    to_crlf([feature.root / "output" / rel for rel in outputs(feature)])
    before = outputs(feature)
    result = cli("compile", "workflows/feature.yaml", cwd=feature.root)
    assert result.code == 0, result.err
    assert result.out == "Compiled workflows/feature.yaml → output/: 0 written, 8 unchanged, 0 removed\n"
    assert outputs(feature) == before  # still CRLF: git sees no change


def test_a_real_change_on_a_crlf_checkout_is_still_caught_and_written(feature: TempProject, cli: CliRunner) -> None:
    assert cli("compile", "workflows/feature.yaml", cwd=feature.root).code == 0
    to_crlf(sources(feature))
    to_crlf([feature.root / "output" / rel for rel in outputs(feature)])
    rules = feature.root / "content/instructions/partials/rules.md"
    rules.write_bytes(rules.read_bytes().replace(b"test it", b"test it twice"))
    check = cli("compile", "workflows/feature.yaml", "--check", cwd=feature.root)
    assert check.code == 1
    assert check.out.splitlines()[1:] == [
        "  stale   output/claude/agents/feature-build.md",
        "  stale   output/opencode/agents/feature-build.md",
    ]
    result = cli("compile", "workflows/feature.yaml", cwd=feature.root)
    assert result.out.splitlines() == [
        "  wrote    output/claude/agents/feature-build.md",
        "  wrote    output/opencode/agents/feature-build.md",
        "Compiled workflows/feature.yaml → output/: 2 written, 6 unchanged, 0 removed",
    ]
    assert cli("compile", "workflows/feature.yaml", "--check", cwd=feature.root).code == 0


@pytest.mark.parametrize(
    ("rel", "text", "error"),
    [
        (
            "workflows/feature.yaml",
            "name: feature\ndescription: >\n  a\n  b\nstages:\n  - {id: plan, agent: plan, nedds: [x]}\n",
            "Error: workflows/feature.yaml:6:29: unknown key 'nedds' in stages[0]",
        ),
        (
            "workflows/feature.yaml",
            "name: feature\nstages:\n  - id: plan\n    agent: plan\n    prompt: |\n      one\n      {% if %}\n",
            "Error: workflows/feature.yaml:7: syntax error in the prompt of stage 'plan'",
        ),
        (
            "content/instructions/build.md",
            "You build.\n{# a comment\nover two lines #}\n{{ nope }}\n",
            "Error: content/instructions/build.md:4: unknown template variable 'nope'",
        ),
    ],
)
def test_errors_in_crlf_files_name_the_right_line(
    rel: str, text: str, error: str, feature: TempProject, cli: CliRunner
) -> None:
    feature.write(rel, text)
    to_crlf([feature.root / rel])
    result = cli("compile", "workflows/feature.yaml", "--check", cwd=feature.root)
    assert result.code == 2
    assert result.err.startswith(error), result.err
