"""Templates: the sandbox, static checks with file and line, confinement of includes, context files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from orchestrator.compiler import compile_workflow, load_plan
from orchestrator.errors import WorkflowError, WorkflowErrors
from orchestrator.project import Project
from orchestrator.render import Renderer

from .conftest import CliRunner, TempProject

SIMPLE = """
name: feature
params:
  goal: {description: What to build, required: true}
stages:
  - id: plan
    agent: plan
    prompt: "Plan: {{ params.goal }}"
  - id: build
    agent: build
    needs: [plan]
"""


def compile_errors(project: TempProject) -> list[WorkflowError]:
    with pytest.raises(WorkflowError) as info:
        compile_workflow(project.root / "workflows/feature.yaml", Project(project.root))
    err = info.value
    return err.errors if isinstance(err, WorkflowErrors) else [err]


def rendered(project: TempProject, agent: str) -> str:
    compiled = compile_workflow(project.root / "workflows/feature.yaml", Project(project.root))
    return next(a.text for a in compiled.rendered if a.agent == agent)


HOSTILE = [
    "{{ ''.__class__.__mro__ }}",
    "{{ ''|attr('__class__') }}",
    "{{ ().__class__.__base__.__subclasses__() }}",
    "{{ cycler.__init__.__globals__ }}",
    "{{ lipsum.__globals__['os'] }}",
    "{{ self.__init__ }}",
    "{{ '{0.__class__}'.format(1) }}",
    "{{ agent|attr('__class__') }}",
    "{{ 'x' * 10**9 }}",
    "{% for i in range(10**8) %}{% endfor %}",
]


@pytest.mark.parametrize("body", HOSTILE)
def test_hostile_templates_fail_inside_the_sandbox_with_a_clean_error(
    body: str, project: TempProject, cli: CliRunner
) -> None:
    project.workflow(SIMPLE)
    project.template("plan.md", f"Plan agent.\n{body}\n")
    result = cli("validate", "workflows/feature.yaml", cwd=project.root)
    assert result.code == 2
    assert result.err.startswith("Error: content/instructions/plan.md:2: ")
    assert "Traceback" not in result.err


def test_run_time_variable_in_instructions_is_a_compile_error_with_line(project: TempProject) -> None:
    project.workflow(SIMPLE)
    project.template("plan.md", "You plan.\n\nThe goal is {{ params.goal }}.\n")
    (err,) = compile_errors(project)
    assert str(err) == (
        "content/instructions/plan.md:3: 'params' is only known at run time, but instructions are rendered at "
        "compile time"
    )
    assert err.hint and "stage's prompt" in err.hint


def test_unknown_variable_suggests_the_known_one(project: TempProject) -> None:
    project.workflow(SIMPLE)
    project.template("plan.md", "{{ agnet.name }}\n")
    (err,) = compile_errors(project)
    assert str(err) == "content/instructions/plan.md:1: unknown template variable 'agnet'"
    assert err.hint == "did you mean 'agent'?"


def test_every_template_problem_is_reported_in_one_pass(project: TempProject) -> None:
    project.workflow(SIMPLE)
    project.template("plan.md", "line\n{% if agent.name %}\nno endif\n")
    project.template("build.md", "{{ task }}\n")
    errors = compile_errors(project)
    assert [str(e).split(": ")[0] for e in errors] == [
        "content/instructions/build.md:1",
        "content/instructions/plan.md:3",
    ]
    assert "syntax error" in errors[1].message


def test_missing_attribute_names_the_template_line(project: TempProject) -> None:
    project.workflow(SIMPLE)
    project.template("plan.md", "ok\n{{ agent.nope }}\n")
    (err,) = compile_errors(project)
    assert str(err).startswith("content/instructions/plan.md:2: ")
    assert "has no attribute 'nope'" in err.message


def test_undefined_in_an_included_template_names_that_file(project: TempProject) -> None:
    project.workflow(SIMPLE)
    project.template("plan.md", "{% include 'parts/rules.md' %}\n")
    project.template("parts/rules.md", "one\ntwo {{ workflow.nope }}\n")
    (err,) = compile_errors(project)
    assert str(err).startswith("content/instructions/parts/rules.md:2: ")


def test_missing_agent_template_points_at_the_stage(project: TempProject) -> None:
    project.workflow(
        "name: feature\nstages:\n  - {id: plan, agent: plan}\n  - {id: x, agent: reviewr, needs: [plan]}\n"
    )
    (err,) = compile_errors(project)
    assert str(err) == (
        "workflows/feature.yaml:4:20: template 'reviewr.md' for agent 'reviewr' not found in "
        "content/instructions/ or the built-in templates"
    )
    assert err.hint and "create content/instructions/reviewr.md" in err.hint


def test_missing_custom_template_points_at_the_agents_template_key(project: TempProject) -> None:
    project.workflow("name: feature\nagents:\n  plan: {template: planner.md}\nstages: [{agent: plan}]\n")
    (err,) = compile_errors(project)
    assert str(err).startswith("workflows/feature.yaml:3:20: template 'planner.md'")


@pytest.mark.parametrize(
    "include",
    ["../../workflows/feature.yaml", "/etc/passwd", "..\\..\\x.md", "./plan.md", "parts/../../x.md"],
)
def test_includes_cannot_leave_the_template_folders(include: str, project: TempProject) -> None:
    project.workflow(SIMPLE)
    project.template("plan.md", f"{{% include {include!r} %}}\n")
    (err,) = compile_errors(project)
    assert "not found" in err.message


def test_a_symlink_pointing_outside_is_refused(project: TempProject, tmp_path: Path) -> None:
    secret = tmp_path / "secret.md"
    secret.write_text("TOP SECRET\n")
    project.workflow(SIMPLE)
    project.template("plan.md", "{% include 'leak.md' %}\n")
    os.symlink(secret, project.root / "content/instructions/leak.md")
    errors = compile_errors(project)
    assert any("leak.md" in e.message for e in errors)
    assert not any("TOP SECRET" in str(e) for e in errors)


def test_project_template_can_extend_the_builtin_one(project: TempProject) -> None:
    project.workflow(SIMPLE)
    builtin = compile_workflow(project.root / "workflows/feature.yaml", Project(project.root))
    project.template("plan.md", "{% extends 'builtin/plan.md' %}\n")
    project.template("build.md", "{% include 'builtin/build.md' %}\n\n## House rules\nRun ruff.\n")
    compiled = compile_workflow(project.root / "workflows/feature.yaml", Project(project.root))
    texts = {a.agent: a.text for a in compiled.rendered}
    defaults = {a.agent: a.text for a in builtin.rendered}
    assert texts["plan"] == defaults["plan"]
    assert texts["build"].startswith(defaults["build"].rstrip("\n"))
    assert texts["build"].endswith("## House rules\nRun ruff.\n")


def test_project_templates_win_over_builtin_ones(project: TempProject) -> None:
    project.workflow(SIMPLE)
    project.template("plan.md", "Project plan agent for {{ workflow.name }}.\n")
    assert rendered(project, "plan") == "Project plan agent for feature.\n"


def test_instructions_see_the_workflow_the_agent_and_the_state_paths(project: TempProject) -> None:
    project.workflow(SIMPLE)
    project.template(
        "build.md",
        """
        {{ agent.config_name }} serves {% for s in agent.stages %}{{ s.id }} (after {{ s.needs|join }}){% endfor %}.
        Waves: {% for w in workflow.waves %}[{{ w|join(' ') }}]{% endfor +%}
        State: {{ state.file }}
        Audit: {{ workflow.audit_stage }} by {% for a in agents if a.name == 'auditor' %}{{ a.config_name }}{% endfor %}
        """,
    )
    assert rendered(project, "build") == (
        "feature-build serves build (after plan).\n"
        "Waves: [plan][build][audit]\n"
        "State: docs/ai/<task>/workflow-state.md\n"
        "Audit: audit by feature-auditor\n"
    )


def test_context_files_go_into_the_brief_every_agent_shares_and_missing_ones_warned(project: TempProject) -> None:
    project.workflow("name: feature\ncontext: [AGENTS.md, MISSING.md]\nstages: [{agent: plan}, {agent: build}]\n")
    project.template("plan.md", "Plan.\n")
    project.template("build.md", "Build.\n")
    project.write("AGENTS.md", "Use tabs.\n")
    compiled = compile_workflow(project.root / "workflows/feature.yaml", Project(project.root))
    plan = next(a for a in compiled.rendered if a.agent == "plan")
    build = next(a for a in compiled.rendered if a.agent == "build")
    assert plan.text == "Plan.\n"
    assert plan.brief.startswith("## The workflow\n")
    assert plan.brief.endswith("\n## Project context\n\n### AGENTS.md\n\nUse tabs.\n")
    assert plan.brief == build.brief  # one text for every agent: one cached prompt prefix serves them all
    assert plan.instructions == plan.brief + "\n" + plan.text
    assert "context file MISSING.md not found; agents get no MISSING.md" in compiled.warnings


def test_context_symlink_out_of_the_project_is_refused(project: TempProject, tmp_path: Path) -> None:
    (tmp_path / "outside.md").write_text("secret\n")
    project.workflow("name: feature\ncontext: [NOTES.md]\nstages: [{agent: plan}]\n")
    os.symlink(tmp_path / "outside.md", project.root / "NOTES.md")
    (err,) = compile_errors(project)
    assert "resolves outside the project" in err.message


# -- stage prompts (rendered at run time, checked at compile time) ---------------------------------


def test_prompt_checks_params_upstream_stages_and_names(project: TempProject) -> None:
    project.workflow(
        """
        name: feature
        params:
          goal: {required: true}
        stages:
          - id: plan
            agent: plan
            prompt: "{{ params.gaol }}"
          - id: build
            agent: build
            needs: [plan]
            prompt: |
              Build it.
              {{ stages.plan.output }} {{ stages.audit.output }}
              {{ agent.name }}
        """
    )
    errors = compile_errors(project)
    assert [str(e).split(": ", 1) for e in errors] == [
        [
            "workflows/feature.yaml:7:13",
            "the prompt of stage 'plan' uses params.gaol, which the workflow does not declare",
        ],
        ["workflows/feature.yaml:14", "unknown template variable 'agent'"],
        ["workflows/feature.yaml:13", "the prompt of stage 'build' reads stages.audit, which is not upstream of it"],
    ]
    assert errors[0].hint == "did you mean params.goal?"
    assert errors[1].hint and "exists only in instructions" in errors[1].hint


def test_prompt_renders_at_run_time_with_params_and_upstream_outputs(project: TempProject) -> None:
    project.workflow(
        """
        name: feature
        params:
          goal: {required: true}
        stages:
          - {id: plan, agent: plan, prompt: "Plan {{ params.goal }} for {{ task }}"}
          - {id: build, agent: build, needs: [plan], prompt: "Build from: {{ stages.plan.output }}"}
        """
    )
    plan, source, data = load_plan(project.root / "workflows/feature.yaml", Project(project.root))
    renderer = Renderer(Project(project.root), plan, source, data)
    assert renderer.render_prompt("plan", {"params": {"goal": "login"}, "task": "add-login"}) == (
        "Plan login for add-login"
    )
    built = renderer.render_prompt("build", {"stages": {"plan": {"output": "1. do it"}}})
    assert built == "Build from: 1. do it"
    with pytest.raises(WorkflowError, match="has no attribute 'output'"):
        renderer.render_prompt("build", {"stages": {"plan": {}}})
