"""The shipped instruction templates: clean under the static checks, and briefs that say what matters."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from orchestrator.compiler import compile_workflow, load_plan
from orchestrator.project import Project
from orchestrator.render import Renderer
from orchestrator.render.sandbox import builtin_dir

from .conftest import FEATURE, TempProject

WORKFLOWS = {
    "feature": FEATURE,
    "single": "name: single\nstages: [{id: fix, agent: quick-edits, prompt: 'Fix the typo'}]\n",
    "sequential": """
name: sequential
defaults: {max_parallel: 1}
params:
  goal: {required: true}
  dry_run: {type: boolean, default: false}
agents:
  reviewer: {template: build.md, description: "Reviews: the diff | and the tests"}
stages:
  - {id: plan, agent: plan, outputs: [docs/plan.md]}
  - {id: api_v2, agent: backend, needs: [plan], prompt: "Use ```code``` fences {{ params.goal }}"}
  - {id: ui, agent: frontend, needs: [plan]}
  - {id: join-up, agent: build, needs: [api_v2, ui]}
  - {id: review, agent: reviewer, needs: [join-up]}
  - {id: audit, agent: auditor, needs: [review], prompt: "Check {{ params.goal }}"}
""",
}


def compiled(project: TempProject, name: str):  # type: ignore[no-untyped-def]
    path = project.workflow(WORKFLOWS[name], name=name)
    return compile_workflow(path, Project(project.root))


@pytest.mark.parametrize("name", sorted(WORKFLOWS))
def test_builtin_templates_pass_the_static_checks(name: str, project: TempProject) -> None:
    path = project.workflow(WORKFLOWS[name], name=name)
    plan, source, data = load_plan(path, Project(project.root))
    renderer = Renderer(Project(project.root), plan, source, data)
    assert renderer.checker.check_all(include_builtin=True) == []


@pytest.mark.parametrize("name", sorted(WORKFLOWS))
def test_rendered_briefs_are_tidy(name: str, project: TempProject) -> None:
    for agent in compiled(project, name).rendered:
        assert "\n\n\n" not in agent.text, agent.name
        assert not re.search(r"[ \t]+$", agent.text, re.MULTILINE), agent.name
        assert agent.text.startswith(f"# {agent.name}\n"), agent.name


def test_no_builtin_template_reads_context_so_context_files_are_appended() -> None:
    for path in builtin_dir().glob("*.md"):
        assert "context" not in re.findall(r"\{\{\s*(\w+)", path.read_text()), path.name


def test_coordinator_knows_the_plan_the_subagents_and_the_state_file(project: TempProject) -> None:
    text = next(a.text for a in compiled(project, "feature").rendered if a.coordinator)
    for row in (
        "| 1 | `plan` | `feature-plan` | - | backend, frontend |",
        "| 2 | `backend` | `feature-build` | plan | integrate |",
        "| 2 | `frontend` | `feature-frontend` | plan | integrate |",
        "| 3 | `integrate` | `feature-build` | backend, frontend | audit |",
        "| 4 | `audit` | `feature-auditor` | integrate | - |",
    ):
        assert row in text
    assert "docs/ai/<task>/workflow-state.md" in text
    assert "Write an implementation plan for: {{ params.goal }}" in text  # the raw prompt to fill in
    assert "never do a stage's work" in text.lower()


def test_auditor_brief_names_the_stages_it_audits_and_the_verdict_shape(project: TempProject) -> None:
    text = next(a.text for a in compiled(project, "feature").rendered if a.agent == "auditor")
    for stage in ("plan", "backend", "frontend", "integrate"):
        assert f"- `{stage}` (" in text
    assert '"verdict": "fail"' in text and '"findings": [' in text and '"checklist": [' in text
    for item in ("requirements", "tests", "completeness", "security", "consistency"):
        assert f"`{item}`" in text


def test_plan_brief_names_the_stages_that_consume_the_plan(project: TempProject) -> None:
    text = next(a.text for a in compiled(project, "feature").rendered if a.agent == "plan")
    section = text.split("## Who works from your plan", 1)[1].split("\n## ", 1)[0]
    assert "`backend` (build)" in section and "`frontend` (frontend)" in section and "`integrate` (build)" in section
    assert "`audit` (auditor) checks the finished work" in section


def test_every_default_agent_has_a_template() -> None:
    names = {p.stem for p in builtin_dir().glob("*.md") if not p.stem.startswith("_")}
    assert names == {"auditor", "backend", "build", "coordinator", "frontend", "plan", "quick-edits"}


def test_defaults_ship_inside_the_package() -> None:
    assert builtin_dir().is_dir()
    assert Path(builtin_dir(), "coordinator.md").is_file()
