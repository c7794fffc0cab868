"""``orchestrate state``: a whole workflow driven stage by stage, as a coordinator inside a tool does it."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from .conftest import FEATURE, CliRunner, TempProject
from .fake_anthropic import FakeAnthropic
from .test_dynamic import FANOUT, tasks

PASS = '```json\n{"verdict": "pass", "summary": "All good.", "findings": [], "checklist": []}\n```\n'


def fail_verdict(stage: str) -> str:
    finding = {"stage": stage, "severity": "major", "title": "No tests", "evidence": "-", "fix": "Add tests"}
    body = {"verdict": "fail", "summary": "Missing tests.", "findings": [finding], "checklist": []}
    return "Audit.\n```json\n" + json.dumps(body) + "\n```\n"


def state_of(project: TempProject, task: str = "t") -> dict[str, Any]:
    return json.loads((project.root / "docs/ai" / task / "state.json").read_text())


def statuses(project: TempProject, task: str = "t") -> dict[str, str]:
    return {sid: s["status"] for sid, s in state_of(project, task)["stages"].items()}


def events(project: TempProject, task: str = "t") -> list[dict[str, Any]]:
    lines = (project.root / "docs/ai" / task / "events.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def done(cli: CliRunner, project: TempProject, stage: str, text: str, task: str = "t") -> Any:
    path = project.root.parent / f"{stage.replace('[', '_').replace(']', '')}.out"
    path.write_text(text)
    return cli("state", "done", task, stage, "--output", str(path), cwd=project.root)


@pytest.fixture
def feature(project: TempProject, cli: CliRunner) -> TempProject:
    project.workflow(FEATURE)
    result = cli(
        "state", "begin", "workflows/feature.yaml", "--task", "t", "--param", "goal=Add login", cwd=project.root
    )
    assert result.code == 0, result.err
    assert "ready    plan  → feature-plan" in result.out
    return project


def test_a_whole_workflow_driven_through_the_state_commands_only(
    feature: TempProject, cli: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = feature.root
    started = cli("state", "start", "t", "plan", cwd=root)
    assert started.code == 0, started.err
    # The message for the subagent is the user message `orchestrate run` sends, with the param filled in.
    assert "# Task `t`: stage `plan` of workflow `feature`" in started.out
    assert "Write an implementation plan for: Add login" in started.out
    assert "subagent feature-plan" in started.err
    assert statuses(feature)["plan"] == "running"
    assert "| `plan` | plan | claude-opus-5-5 | running |" in (root / "docs/ai/t/workflow-state.md").read_text()

    assert done(cli, feature, "plan", "1. API\n2. UI\n").code == 0
    nxt = cli("state", "next", "t", "--json", cwd=root)
    ready = [r["stage"] for r in json.loads(nxt.out)["ready"]]
    assert ready == ["backend", "frontend"]

    assert cli("state", "start", "t", "backend", cwd=root).code == 0
    frontend = cli("state", "start", "t", "frontend", cwd=root)
    assert "## Output of stage `plan` (docs/ai/t/stages/plan.md)\n\n1. API\n2. UI" in frontend.out
    monkeypatch.setattr(sys, "stdin", io.StringIO("backend built\n"))
    assert cli("state", "done", "t", "backend", "--output", "-", cwd=root).code == 0
    assert done(cli, feature, "frontend", "frontend built\n").code == 0
    assert cli("state", "note", "t", "frontend", "used the design system", cwd=root).code == 0

    assert cli("state", "start", "t", "integrate", cwd=root).code == 0
    assert done(cli, feature, "integrate", "integrated\n").code == 0
    audit = cli("state", "start", "t", "audit", cwd=root)
    for stage in ("plan", "backend", "frontend", "integrate"):
        assert f"## Output of stage `{stage}`" in audit.out
    finished = done(cli, feature, "audit", "Checked everything.\n" + PASS)
    assert finished.code == 0, finished.err
    assert "The run succeeded, audit pass." in finished.out

    state = state_of(feature)
    assert state["status"] == "succeeded" and state["driver"] == "state"
    assert state["audit"]["verdict"] == "pass"
    assert set(statuses(feature).values()) == {"succeeded"}
    assert (root / "docs/ai/t/stages/backend.md").read_text() == "backend built\n"
    assert json.loads((root / "docs/ai/t/stages/audit.json").read_text())["verdict"] == "pass"
    markdown = (root / "docs/ai/t/workflow-state.md").read_text()
    assert "**Status: succeeded" in markdown and "used the design system" in markdown
    names = [e["event"] for e in events(feature)]
    assert names[0] == "run_started" and names[-1] == "run_finished" and "stage_noted" in names
    assert names.count("stage_succeeded") == 5 and names.count("stage_started") == 5
    status = cli("status", "t", cwd=root)
    assert status.code == 0 and "succeeded: every stage succeeded and the audit passed" in status.out


def test_a_run_driven_by_hand_is_kept_by_orchestrate_run(
    feature: TempProject, cli: CliRunner, api: FakeAnthropic
) -> None:
    root = feature.root
    for stage, text in (("plan", "p"), ("backend", "b"), ("frontend", "f"), ("integrate", "i"), ("audit", PASS)):
        assert cli("state", "start", "t", stage, cwd=root).code == 0
        assert done(cli, feature, stage, text).code == 0
    result = cli("run", "workflows/feature.yaml", "--task", "t", "--param", "goal=Add login", cwd=root)
    assert result.code == 0, result.err
    assert api.requests == []  # every stage's inputs are unchanged: the same fingerprints as a run's
    assert state_of(feature)["stages"]["audit"]["reused"] is True


def test_the_dag_decides_what_may_start_and_finish(feature: TempProject, cli: CliRunner) -> None:
    root = feature.root
    early = cli("state", "start", "t", "integrate", cwd=root)
    assert early.code == 2
    assert "can't start stage 'integrate': its needs are not done: backend (pending), frontend (pending)" in early.err
    assert "Traceback" not in early.err
    assert cli("state", "done", "t", "plan", cwd=root).code == 2  # not started
    assert "start it first: orchestrate state start t plan" in cli("state", "done", "t", "plan", cwd=root).err
    typo = cli("state", "start", "t", "pln", cwd=root)
    assert typo.code == 2 and "did you mean 'plan'" in typo.err
    assert cli("state", "start", "t", "plan", cwd=root).code == 0
    again = cli("state", "start", "t", "plan", cwd=root)
    assert again.code == 2 and "already running" in again.err
    nothing = cli("state", "done", "t", "plan", cwd=root)  # no --output and no file written by the stage
    assert nothing.code == 2 and "no output given" in nothing.err
    assert statuses(feature)["plan"] == "running"
    (root / "docs/ai/t/stages/plan.md").write_text("the plan, written by the subagent itself\n")
    assert cli("state", "done", "t", "plan", cwd=root).code == 0
    for stage in ("backend", "frontend"):
        assert cli("state", "start", "t", stage, cwd=root).code == 0
        assert done(cli, feature, stage, "x").code == 0
    audit = cli("state", "start", "t", "audit", cwd=root)
    assert audit.code == 2 and "integrate (pending)" in audit.err
    assert cli("state", "start", "t", "integrate", cwd=root).code == 0
    assert done(cli, feature, "integrate", "x").code == 0
    assert cli("state", "start", "t", "audit", cwd=root).code == 0
    bad = done(cli, feature, "audit", "Looks fine to me.")
    assert bad.code == 2 and "the audit reply has no verdict" in bad.err
    assert statuses(feature)["audit"] == "running"  # refused: nothing recorded
    missing = cli("state", "next", "nope", cwd=root)
    assert missing.code == 2 and "orchestrate state begin <workflow> --task nope" in missing.err


def test_a_failure_skips_what_needs_it_and_starting_it_again_reopens_them(feature: TempProject, cli: CliRunner) -> None:
    root = feature.root
    assert cli("state", "start", "t", "plan", cwd=root).code == 0
    assert done(cli, feature, "plan", "p").code == 0
    assert cli("state", "start", "t", "backend", cwd=root).code == 0
    assert cli("state", "start", "t", "frontend", cwd=root).code == 0
    failed = cli("state", "fail", "t", "backend", "--reason", "the subagent returned nothing", cwd=root)
    assert failed.code == 0
    assert statuses(feature)["integrate"] == "skipped"
    assert statuses(feature)["audit"] == "skipped"
    assert state_of(feature)["status"] == "running"  # frontend still runs
    assert done(cli, feature, "frontend", "f").code == 0
    assert state_of(feature)["status"] == "failed"
    assert "failed   backend: the subagent returned nothing" in cli("state", "next", "t", cwd=root).out
    retry = cli("state", "start", "t", "backend", cwd=root)
    assert retry.code == 0
    assert state_of(feature)["status"] == "running"
    assert statuses(feature)["integrate"] == "pending"
    assert done(cli, feature, "backend", "b").code == 0
    assert [r["stage"] for r in json.loads(cli("state", "next", "t", "--json", cwd=root).out)["ready"]] == ["integrate"]


def test_a_failed_audit_and_a_stage_done_again_with_its_findings(feature: TempProject, cli: CliRunner) -> None:
    root = feature.root
    for stage in ("plan", "backend", "frontend", "integrate", "audit"):
        assert cli("state", "start", "t", stage, cwd=root).code == 0
        assert done(cli, feature, stage, fail_verdict("backend") if stage == "audit" else stage).code == 0
    assert state_of(feature)["status"] == "failed"
    again = cli("state", "start", "t", "backend", cwd=root)
    assert again.code == 0
    assert "The audit sent this stage back" in again.out and "No tests" in again.out
    assert statuses(feature) == {
        "plan": "succeeded",
        "backend": "running",
        "frontend": "succeeded",
        "integrate": "pending",
        "audit": "pending",
    }
    busy = cli("state", "start", "t", "plan", cwd=root)
    assert busy.code == 2 and "backend" in busy.err and "running" in busy.err


def test_approval_gates_wait_for_a_person(project: TempProject, cli: CliRunner) -> None:
    project.workflow(
        """
        name: gated
        stages:
          - id: draft
            agent: build
            prompt: Draft it.
          - id: review
            type: approval
            needs: [draft]
            approval: Read the draft.
          - id: publish
            agent: build
            needs: [review]
            prompt: Publish it.
          - id: audit
            agent: auditor
            needs: [publish]
        """
    )
    root = project.root
    assert cli("state", "begin", "workflows/feature.yaml", "--task", "t", cwd=root).code == 0
    assert cli("state", "start", "t", "draft", cwd=root).code == 0
    assert done(cli, project, "draft", "the draft").code == 0
    waiting = cli("state", "next", "t", cwd=root)
    assert "waiting  review  orchestrate approve t review" in waiting.out
    gate = cli("state", "start", "t", "review", cwd=root)
    assert gate.code == 2 and "it waits for approval" in gate.err
    assert state_of(project)["status"] == "waiting_approval"
    approved = cli("approve", "t", "review", "--note", "ship it on Monday", cwd=root)
    assert approved.code == 0 and "orchestrate state next t" in approved.out
    publish = cli("state", "start", "t", "publish", cwd=root)
    assert publish.code == 0, publish.err
    assert "ship it on Monday" in publish.out
    assert statuses(project)["review"] == "succeeded"


def test_foreach_instances_and_conditions(project: TempProject, cli: CliRunner) -> None:
    project.workflow(FANOUT)
    root = project.root
    assert cli("state", "begin", "workflows/feature.yaml", "--task", "t", cwd=root).code == 0
    assert cli("state", "start", "t", "plan", cwd=root).code == 0
    wrong = done(cli, project, "plan", '{"tasks": [{"id": "a"}]}')
    assert wrong.code == 2 and "'title' is a required property" in wrong.err
    assert done(cli, project, "plan", tasks("a", "b")).code == 0
    listed = json.loads(cli("state", "next", "t", "--json", cwd=root).out)
    assert [r["stage"] for r in listed["ready"]] == ["build[a]", "build[b]"]
    parent = cli("state", "start", "t", "build", cwd=root)
    assert parent.code == 2 and "start its instances instead" in parent.err
    item = cli("state", "start", "t", "build[b]", cwd=root)
    assert "Do task b (b)." in item.out
    assert cli("state", "start", "t", "build[a]", cwd=root).code == 0
    assert done(cli, project, "build[a]", "did a").code == 0
    assert statuses(project)["build"] == "running"
    assert done(cli, project, "build[b]", "did b").code == 0
    current = statuses(project)
    assert current["build"] == "succeeded"
    assert current["ui"] == "skipped"  # params.ui is false
    assert state_of(project)["stages"]["ui"]["conditional"] is True
    audit = cli("state", "start", "t", "audit", cwd=root)
    assert audit.code == 0 and "## Output of stage `build`" in audit.out and "## build[b]\n\ndid b" in audit.out


def test_commands_called_at_once_all_land(feature: TempProject, cli: CliRunner) -> None:
    """Several agents calling the commands together: each waits for the task's lock; nothing is lost."""
    root = feature.root
    assert cli("state", "start", "t", "plan", cwd=root).code == 0
    assert done(cli, feature, "plan", "p").code == 0
    command = [sys.executable, "-m", "orchestrator", "state"]
    calls = [[*command, "note", "t", "plan", f"note {i}"] for i in range(6)]
    calls += [[*command, "start", "t", "backend"], [*command, "start", "t", "backend"]]
    calls += [[*command, "start", "t", "frontend"]]
    procs = [subprocess.Popen(c, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for c in calls]
    results = [(p.wait(timeout=60), p.stderr.read() if p.stderr else "") for p in procs]
    codes = [code for code, _ in results]
    assert codes[:6] == [0] * 6
    assert sorted(codes[6:8]) == [0, 2]  # the same stage started twice at once: exactly one wins
    assert "already running" in next(err for code, err in results[6:8] if code == 2)
    assert codes[8] == 0
    state = state_of(feature)
    assert sorted(n["text"] for n in state["stages"]["plan"]["notes"]) == [f"note {i}" for i in range(6)]
    assert statuses(feature)["backend"] == "running" and statuses(feature)["frontend"] == "running"
    log = events(feature)  # every line whole and parsed
    assert sum(1 for e in log if e["event"] == "stage_noted") == 6
    assert sum(1 for e in log if e["event"] == "stage_started" and e["stage"] == "backend") == 1
    assert not list((root / "docs/ai/t").glob(".*.tmp"))


def test_the_coordinator_is_told_to_use_the_state_commands(project: TempProject, cli: CliRunner) -> None:
    project.workflow(FEATURE)
    assert cli("compile", "workflows/feature.yaml", cwd=project.root).code == 0
    text = (project.root / "output/claude/agents/feature-coordinator.md").read_text()
    assert 'orchestrate state begin workflows/feature.yaml --task <task> --param goal="<value>"' in text
    for command in ("next <task>", "start <task> <stage>", "done <task> <stage> --output <file>", "fail <task>"):
        assert f"orchestrate state {command}" in text
    assert "never edit it, `state.json` or `events.jsonl` by hand" in text


def test_state_paths_are_checked(project: TempProject, cli: CliRunner, tmp_path: Path) -> None:
    project.workflow(FEATURE)
    bad = cli("state", "next", "../escape", cwd=project.root)
    assert bad.code == 2 and "Traceback" not in bad.err
    assert not (tmp_path / "escape").exists()


def test_a_note_left_on_a_stage_stays_through_the_next_run(feature: TempProject, cli: CliRunner) -> None:
    run = ("run", "workflows/feature.yaml", "--task", "t", "--param", "goal=x", "--offline")
    assert cli(*run, cwd=feature.root).code == 0
    assert cli("state", "note", "t", "plan", "The plan leaves out the password reset.", cwd=feature.root).code == 0
    assert cli(*run, "--force", cwd=feature.root).code == 0
    saved = json.loads((feature.root / "docs/ai/t/state.json").read_text())
    assert [n["text"] for n in saved["stages"]["plan"]["notes"]] == ["The plan leaves out the password reset."]
    assert "The plan leaves out the password reset." in (feature.root / "docs/ai/t/workflow-state.md").read_text()
