"""``orchestrate run``, the ``orchestrate state`` commands and ``orchestrate plan`` decide alike.

Each scenario is one workflow and one script (what each stage outputs or why it
fails, what a person decides at each gate). It is played through ``run``
(offline replies, re-run after each decision, as a user does) and through the
state commands (a coordinator starting each ready stage and recording its
output), and the scheduler's decisions recorded in each task's
``events.jsonl`` are compared: skips and their reasons, ``if`` decisions,
expansions, gates requested and decided, audit rounds and their rework, each
stage's final status and the run's. ``plan`` is checked on what it can know
before a run: decided ``if``s, gates that will wait, and the budget.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from .conftest import CliRunner, TempProject
from .fake_anthropic import FakeAnthropic


def audit(result: str, *stages: str) -> dict[str, Any]:
    """The audit's reply: its verdict as the structured output, and the same in the text."""
    findings = [{"stage": s, "severity": "major", "title": "t", "evidence": "e", "fix": "f"} for s in stages]
    body = {"verdict": result, "summary": "checked", "findings": findings, "checklist": []}
    return {"output": "```json\n" + json.dumps(body) + "\n```\n", "verdict": body}


PASS = audit("pass")


SCENARIOS: dict[str, tuple[str, dict[str, Any], dict[str, bool]]] = {
    "failure": (
        """
name: s
stages:
  - {id: a, agent: build}
  - {id: b, agent: build, needs: [a]}
  - {id: c, agent: build, needs: [b]}
  - {id: x, agent: build}
  - {id: audit, agent: auditor, needs: [c, x]}
""",
        {"a": "A", "b": {"fail": "compiler crashed"}, "c": "C", "x": "X", "audit": PASS},
        {},
    ),
    "gate approved": (
        """
name: s
stages:
  - {id: a, agent: build, approval: "Ship a?"}
  - {id: gate, type: approval, needs: [a], approval: "Release?"}
  - {id: b, agent: build, needs: [gate]}
  - {id: audit, agent: auditor, needs: [b]}
""",
        {"a": "A", "b": "B", "audit": PASS},
        {"a": True, "gate": True},
    ),
    "gate rejected": (
        """
name: s
stages:
  - {id: a, agent: build}
  - {id: b, agent: build, needs: [a], approval: "Ship b?"}
  - {id: c, agent: build, needs: [b]}
  - {id: audit, agent: auditor, needs: [c]}
""",
        {"a": "A", "b": "B", "c": "C", "audit": PASS},
        {"b": False},
    ),
    "audit rework": (
        """
name: s
audit: {max_rounds: 2}
stages:
  - {id: a, agent: build}
  - {id: b, agent: build, needs: [a]}
  - {id: c, agent: build}
  - {id: audit, agent: auditor, needs: [b, c]}
""",
        {"a": "A", "b": "B", "c": "C", "audit": audit("fail", "a")},
        {},
    ),
    "fan-out and if": (
        """
name: s
params:
  ui: {type: boolean, default: false}
stages:
  - id: plan
    agent: plan
    output_schema:
      type: object
      required: [tasks]
      properties:
        tasks: {type: array, items: {type: object, required: [id], properties: {id: {type: string}}}}
  - {id: build, agent: build, needs: [plan], foreach: "{{ stages.plan.output.tasks }}", foreach_key: id}
  - {id: ui, agent: frontend, needs: [build], if: "params.ui"}
  - {id: docs, agent: build, needs: [build], if: "stages.build.status == 'succeeded'"}
  - {id: audit, agent: auditor, needs: [ui, docs]}
""",
        {
            "plan": {
                "output": '{"tasks": [{"id": "api"}, {"id": "db"}]}',
                "data": {"tasks": [{"id": "api"}, {"id": "db"}]},
            },
            "build": "built",
            "docs": "D",
            "audit": PASS,
        },
        {},
    ),
}


def output_of(response: Any) -> str | None:
    """What a stage outputs under the script; None when it fails."""
    if isinstance(response, dict):
        return None if "fail" in response else response["output"]
    return str(response)


def decisions(folder: Path) -> dict[str, Any]:
    """The scheduler's decisions in a task's record, in a form both ways of running can be compared on."""
    made: list[tuple[Any, ...]] = []
    for line in (folder / "events.jsonl").read_text().splitlines():
        event = json.loads(line)
        kind = event["event"]
        if kind == "stage_skipped":
            made.append(("skipped", event["stage"], event["reason"], event["conditional"]))
        elif kind == "stage_expanded":
            made.append(("expanded", event["stage"], tuple(event["instances"])))
        elif kind == "approval_requested":
            made.append(("gate", event["stage"], event["message"]))
        elif kind == "approval_decided":
            made.append(("decided", event["stage"], event["approved"]))
        elif kind == "audit_round":
            made.append(("audit", event["round"], event["verdict"], tuple(event["rework"])))
    state = json.loads((folder / "state.json").read_text())
    return {
        # A resumed run applies a decision recorded before again (a gate approved in an earlier invocation):
        # the same decision, once.
        "decisions": sorted(set(made)),
        "stages": {sid: s["status"] for sid, s in state["stages"].items()},
        "status": state["status"],
        "rounds": [(r["round"], r["verdict"], r["rework"]) for r in state["rounds"]],
    }


def by_run(cli: CliRunner, project: TempProject, responses: Path, gates: dict[str, bool]) -> dict[str, Any]:
    folder = project.root / "docs/ai/run"
    for _ in range(10):
        result = cli(
            "run", "workflows/s.yaml", "--task", "run", "--offline", "--responses", str(responses), cwd=project.root
        )
        state = json.loads((folder / "state.json").read_text())
        if state["status"] != "waiting_approval":
            break
        for sid, stage in state["stages"].items():
            if stage["status"] == "waiting_approval":
                verb = "approve" if gates[sid] else "reject"
                assert cli(verb, "run", sid, "--note", "by the script", cwd=project.root).code == 0
    else:
        pytest.fail(f"the run never finished: {result.out}")
    return decisions(folder)


def by_state_commands(
    cli: CliRunner, project: TempProject, script: dict[str, Any], gates: dict[str, bool]
) -> dict[str, Any]:
    root = project.root
    assert cli("state", "begin", "workflows/s.yaml", "--task", "st", cwd=root).code == 0
    for _ in range(50):
        step = json.loads(cli("state", "next", "st", "--json", cwd=root).out)
        if step["status"] not in ("running", "waiting_approval"):
            break
        for ready in step["ready"]:
            sid = ready["stage"]
            assert cli("state", "start", "st", sid, cwd=root).code == 0
            output = output_of(script.get(sid.split("[")[0], f"{sid} done"))
            if output is None:
                assert cli("state", "fail", "st", sid, "--reason", "compiler crashed", cwd=root).code == 0
                continue
            path = root.parent / "out.md"
            path.write_text(output)
            finished = cli("state", "done", "st", sid, "--output", str(path), cwd=root)
            assert finished.code == 0, finished.err
        for sid in step["waiting_approval"]:
            verb = "approve" if gates[sid] else "reject"
            assert cli(verb, "st", sid, "--note", "by the script", cwd=root).code == 0
    else:
        pytest.fail("the driven run never finished")
    return decisions(root / "docs/ai/st")


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_run_and_the_state_commands_make_the_same_decisions(
    scenario: str, project: TempProject, cli: CliRunner
) -> None:
    workflow, script, gates = SCENARIOS[scenario]
    project.workflow(workflow, name="s")
    responses = project.write("responses.json", json.dumps(script))
    ran = by_run(cli, project, responses, gates)
    driven = by_state_commands(cli, project, script, gates)
    assert ran == driven
    # And the decisions are the ones the scenario is about (not two runs that agree on doing nothing).
    assert ran["decisions"] or ran["rounds"]


def test_the_scenarios_reach_what_they_are_named_for(project: TempProject, cli: CliRunner) -> None:
    outcomes = {}
    for scenario, (workflow, script, gates) in SCENARIOS.items():
        project.workflow(workflow, name="s")
        responses = project.write("responses.json", json.dumps(script))
        for leftover in (project.root / "docs/ai").glob("*"):
            import shutil

            shutil.rmtree(leftover)
        outcomes[scenario] = by_run(cli, project, responses, gates)
    assert ("skipped", "c", "needs b, which failed", False) in outcomes["failure"]["decisions"]
    assert outcomes["failure"]["stages"]["x"] == "succeeded" and outcomes["failure"]["status"] == "failed"
    assert outcomes["gate approved"]["status"] == "succeeded"
    assert ("decided", "gate", True) in outcomes["gate approved"]["decisions"]
    assert (
        outcomes["gate rejected"]["stages"]["b"] == "failed" and outcomes["gate rejected"]["stages"]["c"] == "skipped"
    )
    assert outcomes["audit rework"]["rounds"] == [(1, "fail", ["a"]), (2, "fail", [])]
    fan = outcomes["fan-out and if"]
    assert ("expanded", "build", ("build[api]", "build[db]")) in fan["decisions"]
    assert fan["stages"]["ui"] == "skipped" and fan["stages"]["docs"] == "succeeded"
    assert fan["status"] == "succeeded"


def plan_actions(cli: CliRunner, project: TempProject, *args: str) -> dict[str, Any]:
    result = cli("plan", "workflows/s.yaml", "--task", "p", "--json", *args, cwd=project.root)
    assert result.code == 0, result.err
    return json.loads(result.out)


def test_plan_decides_what_it_can_know_as_the_run_does(project: TempProject, cli: CliRunner) -> None:
    workflow, script, gates = SCENARIOS["fan-out and if"]
    project.workflow(workflow, name="s")
    forecast = plan_actions(cli, project)
    actions = {s["stage"]: s["action"] for s in forecast["stages"]}
    # ``params.ui`` is known now: plan skips ui as the run will; docs reads an output to come: counted as running.
    assert actions["ui"] == "skip" and actions["docs"] == "run" and actions["build"] == "run"
    responses = project.write("responses.json", json.dumps(script))
    ran = by_run(cli, project, responses, gates)
    assert ran["stages"]["ui"] == "skipped" and ran["stages"]["docs"] == "succeeded"
    assert [s["stage"] for s in forecast["stages"]] == [s for s in ran["stages"] if "[" not in s]

    workflow, script, gates = SCENARIOS["gate approved"]
    project.workflow(workflow, name="s")
    actions = {s["stage"]: s["action"] for s in plan_actions(cli, project)["stages"]}
    assert actions["gate"] == "wait"  # a pure gate waits for a person, in the plan as in the run


def test_plan_and_run_agree_on_a_budget_stop(api: FakeAnthropic, project: TempProject, cli: CliRunner) -> None:
    workflow = SCENARIOS["failure"][0].replace("name: s\n", "name: s\ndefaults: {max_tokens: 2000, max_parallel: 1}\n")
    project.workflow(workflow, name="s")
    api.reply("done")
    for rule in api.rules:
        rule.usage = {"output_tokens": 2000}
    forecast = plan_actions(cli, project, "--budget", "0.02")
    assert forecast["budget_check"].startswith(("will exceed", "may exceed"))
    result = cli("run", "workflows/s.yaml", "--task", "p", "--budget", "0.02", cwd=project.root)
    assert result.code == 4, result.out
    state = json.loads((project.root / "docs/ai/p/state.json").read_text())
    assert state["status"] == "budget_exceeded"
    assert state["stages"]["audit"]["status"] == "pending"  # nothing new started once the budget was reached
