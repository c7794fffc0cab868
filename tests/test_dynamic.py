"""Structured outputs, fan-out and conditions, end to end through the CLI and the real SDK against the fake API."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .conftest import CliRunner, TempProject
from .fake_anthropic import FakeAnthropic

PLAN_SCHEMA = """
    output_schema:
      type: object
      properties:
        tasks:
          type: array
          maxItems: 3
          items:
            type: object
            properties: {id: {type: string}, title: {type: string}}
            required: [id, title]
      required: [tasks]
"""

FANOUT = (
    """
name: fan
params:
  ui: {type: boolean, default: false}
defaults: {max_parallel: 2}
stages:
  - id: plan
    agent: plan
    prompt: Split the work.
"""
    + PLAN_SCHEMA
    + """
  - id: build
    agent: build
    needs: [plan]
    foreach: "{{ stages.plan.output.tasks }}"
    foreach_key: id
    prompt: "Do {{ item.title }} ({{ item.id }})."
  - id: ui
    agent: frontend
    needs: [build]
    if: params.ui and stages.build.status == 'succeeded'
  - id: audit
    agent: auditor
    needs: [ui]
"""
)


def at(stage: str) -> str:
    return f": stage `{stage}` of workflow"


def tasks(*ids: str) -> str:
    return json.dumps({"tasks": [{"id": i, "title": f"task {i}"} for i in ids]})


def requests_of(api: FakeAnthropic, stage: str) -> list[Any]:
    return [r for r in api.messages() if at(stage) in r.text()]


def run(cli: CliRunner, project: TempProject, *more: str) -> Any:
    return cli("run", "workflows/fan.yaml", "--task", "t", *more, cwd=project.root)


def test_a_plan_fans_out_into_instances_that_each_see_their_item(
    cli: CliRunner, project: TempProject, api: FakeAnthropic
) -> None:
    project.workflow(FANOUT, name="fan")
    api.reply(tasks("api", "form", "docs"), when=at("plan"))
    for key in ("api", "form", "docs"):
        api.reply(f"built {key}", when=at(f"build[{key}]"))
    result = run(cli, project)
    assert result.code == 0, result.out + result.err
    # The plan asked for structured output with its schema; its data is saved beside its text.
    plan_request = requests_of(api, "plan")[0].body
    assert plan_request["output_config"]["format"]["schema"]["required"] == ["tasks"]
    state_dir = project.root / "docs/ai/t"
    assert json.loads((state_dir / "stages/plan.json").read_text())["tasks"][1]["id"] == "form"
    # One request per item, each with its own item and the rendered prompt.
    for key in ("api", "form", "docs"):
        (request,) = requests_of(api, f"build[{key}]")
        assert f"Do task {key} ({key})." in request.text()
        assert f'"id": "{key}"' in request.text()
        assert (state_dir / f"stages/build[{key}].md").read_text() == f"built {key}\n"
    # Dependents wait for all instances and read their outputs together.
    combined = (state_dir / "stages/build.md").read_text()
    assert combined.index("## build[api]") < combined.index("## build[form]") < combined.index("## build[docs]")
    audit = requests_of(api, "audit")[0].text()
    assert "built api" in audit and "built docs" in audit
    assert "Stage `ui` was skipped" in audit
    state = json.loads((state_dir / "state.json").read_text())
    assert state["stages"]["ui"]["status"] == "skipped" and state["stages"]["ui"]["conditional"] is True
    assert "its condition is false" in state["stages"]["ui"]["error"]
    assert state["status"] == "succeeded"


def test_instances_are_kept_one_by_one_when_the_plan_changes(
    cli: CliRunner, project: TempProject, api: FakeAnthropic
) -> None:
    project.workflow(FANOUT, name="fan")
    api.reply(tasks("a", "b", "c"), when=at("plan"), times=1)
    assert run(cli, project).code == 0
    before = len(api.messages())
    assert run(cli, project).code == 0
    assert len(api.messages()) == before  # nothing changed: no request at all
    # The plan now returns b with a new title and drops c: only build[b] (and the audit) run again.
    api.rules.insert(0, api.rules.pop())  # keep later rules as they are
    api.reply(json.dumps({"tasks": [{"id": "a", "title": "task a"}, {"id": "b", "title": "task B2"}]}), when=at("plan"))
    result = run(cli, project, "--from", "plan")
    assert result.code == 0, result.out + result.err
    assert "build[a]: kept" in result.out
    assert "build[b]: started" in result.out
    assert "build[c]" not in result.out.split("build: 2 items")[1]
    state = json.loads((project.root / "docs/ai/t/state.json").read_text())
    assert state["stages"]["build"]["instances"] == ["build[a]", "build[b]"]
    assert "build[c]" not in state["stages"]


def test_a_condition_over_params_runs_the_stage_when_true(
    cli: CliRunner, project: TempProject, api: FakeAnthropic
) -> None:
    project.workflow(FANOUT, name="fan")
    api.reply(tasks("a"), when=at("plan"))
    result = run(cli, project, "--param", "ui=true")
    assert result.code == 0, result.out + result.err
    assert len(requests_of(api, "ui")) == 1
    assert "ui: started" in result.out


def test_foreach_over_something_that_is_not_a_list_fails_the_stage_cleanly(
    cli: CliRunner, project: TempProject, api: FakeAnthropic
) -> None:
    project.workflow(FANOUT.replace("stages.plan.output.tasks", "stages.plan.output"), name="fan")
    api.reply(tasks("a"), when=at("plan"))
    result = run(cli, project)
    assert result.code == 1
    assert "build: failed" in result.out and "foreach needs a list, but got dict" in result.out
    assert "Traceback" not in result.out + result.err
    assert not requests_of(api, "build")


def test_repeated_foreach_keys_fail_the_stage_naming_them(
    cli: CliRunner, project: TempProject, api: FakeAnthropic
) -> None:
    project.workflow(FANOUT, name="fan")
    api.reply(tasks("a", "a"), when=at("plan"))
    result = run(cli, project)
    assert result.code == 1
    assert "items 0 and 1 both have id = 'a'" in result.out


def test_an_invalid_structured_output_is_sent_back_with_the_error_then_fails(
    cli: CliRunner, project: TempProject, api: FakeAnthropic
) -> None:
    """The API compiles the schema without maxItems (it can't enforce it): the stage's contract still does."""
    project.workflow(
        FANOUT.replace("    prompt: Split the work.", "    prompt: Split the work.\n    retries: 1"), name="fan"
    )
    api.reply(
        tasks("a", "b", "c", "d"),
        when=lambda body: at("plan") in json.dumps(body) and "broke the stage's contract" not in json.dumps(body),
    )
    api.reply(
        tasks("x"),
        when=lambda body: at("plan") in json.dumps(body) and "broke the stage's contract" in json.dumps(body),
    )
    result = run(cli, project)
    assert result.code == 0, result.out + result.err
    first, second = requests_of(api, "plan")
    assert "broke the stage's contract" not in first.text()
    assert "maxItems" not in json.dumps(first.body["output_config"]["format"]["schema"]["properties"]["tasks"]).replace(
        "{maxItems: 3}", ""
    )
    assert "tasks:" in second.text() and "is too long" in second.text()
    assert "plan: try 1 failed, trying again" in result.out


def test_a_structured_output_that_never_fits_fails_the_stage_saying_why(
    cli: CliRunner, project: TempProject, api: FakeAnthropic
) -> None:
    project.workflow(FANOUT, name="fan")
    api.reply(tasks("a", "b", "c", "d", "e"), when=at("plan"))
    result = run(cli, project)
    assert result.code == 1
    assert "plan: failed" in result.out and "its structured output does not match output_schema" in result.out
    assert "(after 2 tries)" in result.out  # retries: 0, and one more try told what was wrong
    state = json.loads((project.root / "docs/ai/t/state.json").read_text())
    assert state["stages"]["build"]["status"] == "skipped"


def test_run_time_fields_are_checked_before_anything_runs(cli: CliRunner, project: TempProject) -> None:
    cases = {
        "item outside foreach": (
            FANOUT.replace("    if: params.ui", '    prompt: "{{ item }}"\n    if: params.ui'),
            "item",
        ),
        "unknown param in if": (FANOUT.replace("if: params.ui", "if: params.iu"), "params.iu"),
        "foreach reading a stage that is not upstream": (
            FANOUT.replace("stages.plan.output.tasks", "stages.ui.output"),
            "stages.ui, which is not upstream",
        ),
        "a schema that is not an object": (
            FANOUT.replace(
                "      type: object\n      properties:\n        tasks",
                "      type: array\n      properties:\n        tasks",
                1,
            ),
            "object",
        ),
    }
    for name, (text, expected) in cases.items():
        project.workflow(text, name="fan")
        result = cli("validate", "workflows/fan.yaml", cwd=project.root)
        assert result.code == 2, name
        assert expected in result.err and "workflows/fan.yaml:" in result.err, (name, result.err)
        assert "Traceback" not in result.err


def test_a_schema_file_is_read_relative_to_the_project(
    cli: CliRunner, project: TempProject, api: FakeAnthropic
) -> None:
    project.write(
        "schemas/plan.yaml",
        """
        type: object
        properties:
          tasks: {type: array, items: {type: object, properties: {id: {type: string}, title: {type: string}}}}
        required: [tasks]
        """,
    )
    text = (
        FANOUT.split("    output_schema:")[0]
        + "    output_schema: schemas/plan.yaml\n"
        + FANOUT.split("required: [tasks]\n")[1]
    )
    project.workflow(text, name="fan")
    api.reply(tasks("only"), when=at("plan"))
    result = run(cli, project)
    assert result.code == 0, result.out + result.err
    assert requests_of(api, "build[only]")
    project.write("schemas/plan.yaml", "type: string\n")
    bad = cli("validate", "workflows/fan.yaml", cwd=project.root)
    assert bad.code == 2 and "schemas/plan.yaml is not a usable JSON Schema" in bad.err


def test_a_foreach_stage_cannot_be_an_approval_gate(cli: CliRunner, project: TempProject) -> None:
    project.workflow(FANOUT.replace("    foreach_key: id\n", "    foreach_key: id\n    approval: true\n"), name="fan")
    result = cli("validate", "workflows/fan.yaml", cwd=project.root)
    assert result.code == 2
    assert "a foreach stage can't be an approval gate" in result.err and "workflows/fan.yaml:" in result.err


def test_foreach_and_conditions_are_refused_on_the_audit_stage(cli: CliRunner, project: TempProject) -> None:
    project.workflow(FANOUT.replace("    needs: [ui]\n", "    needs: [ui]\n    if: params.ui\n"), name="fan")
    result = cli("validate", "workflows/fan.yaml", cwd=project.root)
    assert result.code == 2
    assert "the audit stage 'audit' can't be conditional" in result.err


def test_offline_runs_fan_out_over_a_sample_of_the_schema(cli: CliRunner, project: TempProject, tmp_path: Path) -> None:
    project.workflow(FANOUT, name="fan")
    result = run(cli, project, "--offline")
    assert result.code == 0, result.out + result.err
    assert "build: 2 items" in result.out


def test_a_write_scope_may_name_a_field_of_each_instance_item(cli: CliRunner, project: TempProject) -> None:
    scoped = FANOUT.replace("    foreach_key: id\n", "    foreach_key: id\n    writes: ['src/{{ item.id }}/**']\n")
    project.workflow(scoped, name="fan")
    result = run(cli, project, "--offline")
    assert result.code == 0, result.out + result.err
    assert "build: 2 items" in result.out
