"""Durable runs end to end, through the CLI and the real SDK against the localhost fake:
skip-unchanged, --force/--from/--only, resume, approval gates, audit rounds, budgets,
per-stage policy, the task lock, plan and explain."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from typing import Any

import pytest

from orchestrator.state.lock import TaskLock
from orchestrator.state.repository import recover_state

from .conftest import FEATURE, CliResult, CliRunner, TempProject, event_lines, started_until
from .fake_anthropic import FakeAnthropic
from .test_anthropic_run import VERDICT_PASS, at, by_stage, stage_of, verdict_reply

RUN = ("run", "workflows/feature.yaml", "--task", "add-login", "--param", "goal=login")


@pytest.fixture
def feature(project: TempProject) -> TempProject:
    project.workflow(FEATURE)
    return project


def lines(result: CliResult) -> list[str]:
    return event_lines(result.out)


def requested(api: FakeAnthropic) -> list[str]:
    return sorted(stage_of(r) or "?" for r in api.messages())


def state_of(project: TempProject, task: str = "add-login") -> dict[str, Any]:
    return json.loads((project.root / "docs/ai" / task / "state.json").read_text())


def replies(api: FakeAnthropic) -> None:
    for sid in ("plan", "backend", "frontend", "integrate"):
        api.reply(f"{sid.upper()} OUTPUT", when=at(sid))
    verdict_reply(api, VERDICT_PASS)


# -- skip-unchanged ----------------------------------------------------------------------------------


def test_a_second_run_of_a_finished_unchanged_task_makes_no_request(
    api: FakeAnthropic, feature: TempProject, cli: CliRunner
) -> None:
    replies(api)
    assert cli(*RUN, cwd=feature.root).code == 0
    assert len(api.messages()) == 5
    again = cli(*RUN, cwd=feature.root)
    assert again.code == 0, again.out + again.err
    assert len(api.messages()) == 5  # not one request more
    for sid in ("plan", "backend", "frontend", "integrate", "audit"):
        assert any(line.startswith(f"{sid}: kept (unchanged since run ") for line in lines(again))
    saved = state_of(feature)
    assert saved["status"] == "succeeded" and saved["cost_usd"] == 0
    assert all(s["reused"] for s in saved["stages"].values())
    assert (feature.root / "docs/ai/add-login/stages/backend.md").read_text() == "BACKEND OUTPUT\n"


def test_an_edited_template_reruns_only_the_stages_it_reaches_and_says_why(
    api: FakeAnthropic, feature: TempProject, cli: CliRunner
) -> None:
    replies(api)
    assert cli(*RUN, cwd=feature.root).code == 0
    feature.template("frontend.md", '{% extends "builtin/frontend.md" %}{% block focus %}Use plain CSS.{% endblock %}')
    again = cli(*RUN, cwd=feature.root)
    assert again.code == 0
    assert "note: since the last run: new: content/instructions/frontend.md" in again.err
    started = [line for line in lines(again) if ": started" in line]
    assert started == [
        "frontend: started (frontend, claude-sonnet-5-5) — instructions changed: content/instructions/frontend.md"
    ]
    # frontend's reply did not change, so integrate and the audit keep theirs: same inputs, same outputs.
    assert requested(api).count("frontend") == 2 and requested(api).count("integrate") == 1


def test_changed_upstream_output_reruns_downstream_and_force_from_only_pick_what_reruns(
    api: FakeAnthropic, feature: TempProject, cli: CliRunner
) -> None:
    replies(api)
    assert cli(*RUN, cwd=feature.root).code == 0
    api.rules.insert(0, api.rules.pop())  # keep the verdict rule first
    api.reply("BACKEND OUTPUT, SECOND TAKE", when=at("backend"))
    api.rules.insert(0, api.rules.pop())
    base = len(api.messages())
    result = cli(*RUN, "--from", "backend", cwd=feature.root)
    assert result.code == 0
    assert sorted(stage_of(r) or "" for r in api.messages()[base:]) == ["audit", "backend", "integrate"]
    assert "backend: started (build, claude-sonnet-5-5) — --from backend" in lines(result)
    assert any(line.startswith("integrate: started") and "--from backend" in line for line in lines(result))
    assert any(line.startswith("frontend: kept") for line in lines(result))

    base = len(api.messages())
    only = cli(*RUN, "--only", "frontend", cwd=feature.root)
    assert only.code == 0
    assert [stage_of(r) for r in api.messages()[base:]] == ["frontend"]
    assert state_of(feature)["status"] == "partial"

    base = len(api.messages())
    forced = cli(*RUN, "--force", cwd=feature.root)
    assert forced.code == 0
    assert sorted(stage_of(r) or "" for r in api.messages()[base:]) == [
        "audit",
        "backend",
        "frontend",
        "integrate",
        "plan",
    ]
    bad = cli(*RUN, "--from", "backnd", cwd=feature.root)
    assert bad.code == 2 and "--from backnd: the workflow has no stage 'backnd'" in bad.err
    assert "did you mean 'backend'?" in bad.err


def test_after_a_failure_the_same_command_redoes_only_what_did_not_finish(
    api: FakeAnthropic, feature: TempProject, cli: CliRunner
) -> None:
    replies(api)
    api.reply("bad request", when=at("backend"), status=400, error="invalid_request_error", times=1)
    api.rules.insert(0, api.rules.pop())
    first = cli(*RUN, cwd=feature.root)
    assert first.code == 1
    saved = state_of(feature)
    assert saved["stages"]["backend"]["status"] == "failed"
    assert saved["stages"]["integrate"]["status"] == "skipped"
    base = len(api.messages())
    second = cli(*RUN, cwd=feature.root)
    assert second.code == 0, second.out
    assert sorted(stage_of(r) or "" for r in api.messages()[base:]) == ["audit", "backend", "integrate"]
    assert any(line.startswith("backend: started") and "failed last time: HTTP 400" in line for line in lines(second))


# -- approval gates ----------------------------------------------------------------------------------

GATED = FEATURE.replace(
    '    prompt: "Write an implementation plan for: {{ params.goal }}"\n',
    '    prompt: "Write an implementation plan for: {{ params.goal }}"\n    approval: Check the plan first\n',
).replace(
    "  - id: audit\n    agent: auditor\n    needs: [integrate]\n",
    "  - id: release\n    type: approval\n    needs: [integrate]\n"
    "  - id: audit\n    agent: auditor\n    needs: [release]\n",
)


def test_an_approval_gate_pauses_the_run_and_the_note_reaches_downstream_prompts(
    api: FakeAnthropic, project: TempProject, cli: CliRunner
) -> None:
    project.workflow(GATED)
    replies(api)
    paused = cli(*RUN, "--json", cwd=project.root)
    assert paused.code == 3
    events = [json.loads(line) for line in paused.out.splitlines()]
    gate = next(e for e in events if e["event"] == "approval_requested")
    assert gate["stage"] == "plan" and gate["message"] == "Check the plan first"
    assert gate["output_file"] == "stages/plan.md"
    assert events[-1]["status"] == "waiting_approval" and events[-1]["waiting"] == ["plan"]
    assert requested(api) == ["plan"]
    status = cli("status", "add-login", cwd=project.root)
    assert "waiting for approval: plan" in status.out
    assert "orchestrate approve add-login plan [--note TEXT]" in status.out

    too_early = cli("approve", "add-login", "backend", cwd=project.root)
    assert too_early.code == 2 and "is not waiting for approval (it is pending)" in too_early.err
    assert cli("approve", "add-login", "plan", "--note", "Use SQLite", cwd=project.root).code == 0
    resumed = cli(*RUN, cwd=project.root)
    assert resumed.code == 3  # now at the release gate
    assert requested(api).count("plan") == 1  # the approved plan was kept, not asked for again
    backend = by_stage(api)["backend"][0].body["messages"][0]["content"]
    assert "## Approval of stage `plan`" in backend and "Note: Use SQLite" in backend
    assert state_of(project)["stages"]["release"]["status"] == "waiting_approval"

    assert cli("reject", "add-login", "release", "--note", "not yet", cwd=project.root).code == 0
    rejected = cli(*RUN, cwd=project.root)
    assert rejected.code == 1
    saved = state_of(project)
    assert saved["stages"]["release"]["status"] == "failed"
    assert saved["stages"]["release"]["error"] == "rejected: not yet"
    assert saved["stages"]["audit"]["status"] == "skipped"
    assert "audit" not in requested(api)
    explained = cli("explain", "add-login", "release", cwd=project.root)
    assert "Rejected by" in explained.out and "not yet" in explained.out


def test_approve_all_runs_through_gates(api: FakeAnthropic, project: TempProject, cli: CliRunner) -> None:
    project.workflow(GATED)
    replies(api)
    result = cli(*RUN, "--approve-all", cwd=project.root)
    assert result.code == 0, result.out
    assert state_of(project)["stages"]["plan"]["approval"]["by"] == "--approve-all"


def test_a_rejected_stage_runs_again_told_why(api: FakeAnthropic, project: TempProject, cli: CliRunner) -> None:
    project.workflow(GATED)
    replies(api)
    assert cli(*RUN, cwd=project.root).code == 3
    assert cli("reject", "add-login", "plan", "--note", "split it into two steps", cwd=project.root).code == 0
    assert cli(*RUN, cwd=project.root).code == 1  # the branch fails; nothing downstream ran
    assert requested(api) == ["plan"]
    again = cli(*RUN, cwd=project.root)
    assert again.code == 3  # the plan ran again and waits for a new decision
    second = by_stage(api)["plan"][1].body["messages"][0]["content"]
    assert "## Your previous output was rejected" in second and "split it into two steps" in second


# -- audit rounds ------------------------------------------------------------------------------------


def test_a_failed_audit_sends_the_owning_stages_back_with_its_findings(
    api: FakeAnthropic, project: TempProject, cli: CliRunner
) -> None:
    project.workflow(FEATURE + "audit: {max_rounds: 2}\n")
    failing = {
        "verdict": "fail",
        "summary": "The backend stores passwords in plain text.",
        "findings": [{"stage": "backend", "severity": "critical", "title": "Plain-text passwords", "fix": "Hash"}],
        "checklist": [],
    }
    api.reply(json.dumps(VERDICT_PASS), when="The backend stores passwords")
    api.reply("BACKEND WITH HASHING", when="The audit sent this stage back")
    replies(api)
    api.reply(json.dumps(failing), when=at("audit"), times=1)
    api.rules.insert(2, api.rules.pop())  # the failing verdict comes first, once
    result = cli(*RUN, cwd=project.root)
    assert result.code == 0, result.out
    assert "audit round 1: fail (1 findings); sending back backend" in lines(result)
    assert requested(api).count("backend") == 2 and requested(api).count("audit") == 2
    assert requested(api).count("frontend") == 1 and requested(api).count("plan") == 1
    reworked = by_stage(api)["backend"][1].body["messages"][0]["content"]
    assert "## The audit sent this stage back (round 2)" in reworked and "[critical] Plain-text passwords" in reworked
    saved = state_of(project)
    assert [(r["round"], r["verdict"], r["rework"]) for r in saved["rounds"]] == [
        (1, "fail", ["backend"]),
        (2, "pass", []),
    ]
    assert saved["status"] == "succeeded"
    assert (project.root / "docs/ai/add-login/stages/backend.md").read_text() == "BACKEND WITH HASHING\n"
    # Each rerun says why: not "not run before", which it had just been.
    assert "backend: started (build, claude-sonnet-5-5) — the audit sent it back with 1 finding (round 2)" in lines(
        result
    )
    assert saved["stages"]["integrate"]["reason"] == "what it needs was redone in audit round 2"


def test_with_one_round_a_failed_audit_fails_the_run(api: FakeAnthropic, feature: TempProject, cli: CliRunner) -> None:
    replies(api)
    failing = {
        "verdict": "fail",
        "summary": "no",
        "findings": [{"stage": "backend", "severity": "major", "title": "x"}],
    }
    api.reply(json.dumps(failing), when=at("audit"))
    api.rules.insert(0, api.rules.pop())
    result = cli(*RUN, cwd=feature.root)
    assert result.code == 1
    assert requested(api).count("backend") == 1
    assert state_of(feature)["rounds"] == [
        {
            "round": 1,
            "verdict": "fail",
            "summary": "no",
            "findings": 1,
            "rework": [],
            "finished": state_of(feature)["rounds"][0]["finished"],
        }
    ]


# -- budgets and per-stage policy ----------------------------------------------------------------------


def test_the_budget_stops_new_stages_and_a_raised_budget_continues(
    api: FakeAnthropic, feature: TempProject, cli: CliRunner
) -> None:
    feature.workflow(FEATURE.replace("  max_parallel: 4\n", "  max_parallel: 4\n  max_tokens: 2000\n"))
    replies(api)
    for rule in api.rules:  # every reply writes all 2,000 tokens it may: $0.04 on opus (plan), $0.02 on sonnet
        rule.usage = {"output_tokens": 2000}
    stopped = cli(*RUN, "--budget", "0.07", cwd=feature.root)
    assert stopped.code == 4, stopped.out
    saved = state_of(feature)
    assert saved["status"] == "budget_exceeded"
    assert "the run's budget of $0.07 would be exceeded" in saved["note"]
    # Each request's worst case is reserved before it is sent, so the run ends at or under its budget.
    spent = saved["cost_usd"]
    assert 0.04 < spent <= 0.07
    assert saved["stages"]["plan"]["status"] == "succeeded"
    assert saved["stages"]["audit"]["status"] == "pending"
    assert "Raise `budget.usd` in the workflow (or pass `--budget USD`)" in stopped.out
    done_before = {sid for sid, stage in saved["stages"].items() if stage["status"] == "succeeded"}
    more = cli(*RUN, "--budget", "100", cwd=feature.root)
    assert more.code == 0, more.out
    again = [stage_of(r) for r in api.messages()]
    assert all(again.count(sid) == 1 for sid in done_before)  # finished stages kept, not paid for twice
    total = sum(stage["cost_usd"] for stage in state_of(feature)["stages"].values())
    assert state_of(feature)["cost_usd"] == pytest.approx(total, abs=1e-6)  # one ledger for the run
    assert state_of(feature)["cost_usd"] > spent


def test_retries_timeout_and_continue_on_failure(api: FakeAnthropic, project: TempProject, cli: CliRunner) -> None:
    workflow = FEATURE.replace(
        "  - id: backend\n    agent: build\n    needs: [plan]\n",
        "  - id: backend\n    agent: build\n    needs: [plan]\n    retries: 1\n",
    ).replace(
        "  - id: frontend\n    agent: frontend\n    needs: [plan]\n",
        "  - id: frontend\n    agent: frontend\n    needs: [plan]\n    timeout: 0.5\n    continue_on_failure: true\n",
    )
    project.workflow(workflow)
    api.reply("bad", when=at("backend"), status=400, error="invalid_request_error", times=1)
    api.reply("slow", when=at("frontend"), delay=3)
    replies(api)
    started = time.monotonic()
    result = cli(*RUN, cwd=project.root)
    assert time.monotonic() - started < 3
    saved = state_of(project)
    backend = saved["stages"]["backend"]
    assert backend["status"] == "succeeded" and backend["tries"] == 2 and len(backend["attempts"]) == 2
    assert "backend: try 1 failed, trying again: HTTP 400 invalid_request_error: bad" in " ".join(lines(result))
    frontend = saved["stages"]["frontend"]
    assert frontend["status"] == "failed" and frontend["error"].startswith("timed out after 0.5 s")
    assert saved["stages"]["integrate"]["status"] == "succeeded"  # it ran, told about the failure
    integrate = by_stage(api)["integrate"][0].body["messages"][0]["content"]
    assert "## Stage `frontend` failed" in integrate
    assert result.code == 0 and saved["status"] == "succeeded"


def test_a_workflow_budget_needs_known_prices(project: TempProject, cli: CliRunner) -> None:
    project.workflow(
        FEATURE.replace("defaults:\n", "budget: {usd: 1}\ndefaults:\n").replace("claude-sonnet-5-5", "my-model")
    )
    result = cli(*RUN, "--offline", cwd=project.root)
    assert result.code == 2
    assert "a budget is set, but orchestrate knows no price for model 'my-model'" in result.err


# -- one writer per task ---------------------------------------------------------------------------------


def test_a_second_run_of_a_running_task_is_refused_and_a_dead_holder_is_taken_over(
    feature: TempProject, cli: CliRunner
) -> None:
    folder = feature.root / "docs/ai/add-login"
    with TaskLock(folder, "orchestrate run other"):
        busy = cli(*RUN, "--offline", cwd=feature.root)
    assert busy.code == 2
    assert f"another orchestrate run is using docs/ai/add-login/: pid {os.getpid()} on " in busy.err
    assert "hint: wait for it to finish or stop it" in busy.err
    # A lock file left by a killed run: nobody holds it, so the next run takes it over.
    (folder / ".lock").write_text(json.dumps({"pid": 999999, "host": "elsewhere", "command": "x"}))
    assert cli(*RUN, "--offline", cwd=feature.root).code == 0
    assert not (folder / ".lock").exists()


# -- signals ----------------------------------------------------------------------------------------------


COMMAND = (sys.executable, "-m", "orchestrator", "run", "workflows/feature.yaml", "--task")


def _start(feature: TempProject, task: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*COMMAND, task, "--param", "goal=x", "--offline", "--latency", "1"],
        cwd=feature.root,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for(path: Any) -> None:
    deadline = time.monotonic() + 30
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.2)


def test_sigterm_stops_cleanly_and_the_same_command_finishes_the_run(feature: TempProject) -> None:
    folder = feature.root / "docs/ai/term"
    proc = _start(feature, "term")
    _wait_for(folder / "stages/plan.md")
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert "SIGTERM: stopping" in err and "Traceback" not in err
    assert "Continue with `orchestrate run workflows/feature.yaml --task term --param goal=x --offline`" in out
    state = recover_state(folder)
    assert state.status == "interrupted"
    assert {state.stages[s].status for s in ("backend", "frontend")} == {"interrupted"}
    again = subprocess.run(
        [*COMMAND, "term", "--param", "goal=x", "--offline"],
        cwd=feature.root,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert again.returncode == 0, again.stderr
    assert "plan: kept" in again.stdout and "backend: started" in again.stdout
    assert "note: continuing run" in again.stderr


def test_a_second_ctrl_c_quits_at_once_and_leaves_valid_files(feature: TempProject) -> None:
    folder = feature.root / "docs/ai/twice"
    proc = _start(feature, "twice")
    _wait_for(folder / "stages/plan.md")
    proc.send_signal(signal.SIGINT)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=10)
    assert proc.returncode == 130
    assert "Traceback" not in err
    json.loads((folder / "state.json").read_text())
    for line in (folder / "events.jsonl").read_text().splitlines():
        json.loads(line)
    assert recover_state(folder).stages["plan"].status == "succeeded"


# -- plan and explain ---------------------------------------------------------------------------------------


def test_plan_forecasts_without_requests_and_explain_says_why(
    api: FakeAnthropic, feature: TempProject, cli: CliRunner
) -> None:
    replies(api)
    fresh = cli("plan", *RUN[1:], "--budget", "0.001", cwd=feature.root)
    assert fresh.code == 0
    assert "task add-login (a new run): 5 to run, 0 kept, 0 waiting at gates" in fresh.out
    assert "Budget: $0.0010: will exceed it" in fresh.out
    assert api.messages() == []
    assert cli(*RUN, cwd=feature.root).code == 0
    feature.template("frontend.md", '{% extends "builtin/frontend.md" %}{% block focus %}Plain CSS.{% endblock %}')
    data = json.loads(cli("plan", *RUN[1:], "--json", cwd=feature.root).out)
    actions = {s["stage"]: (s["action"], s["reason"]) for s in data["stages"]}
    assert actions["plan"][0] == "keep" and actions["backend"][0] == "keep"
    assert actions["frontend"] == ("run", "instructions changed: content/instructions/frontend.md")
    assert actions["integrate"][0] == "run" and "upstream frontend will run" in actions["integrate"][1]
    assert data["stages"][2]["prompt_chars"] > 100 and data["cost_range"][0] < data["cost_usd"] < data["cost_range"][1]
    assert len(api.messages()) == 5  # plan made no request to the model...
    assert data["counted"] is True  # ...but had the free token-counting endpoint count its prompts
    assert any(r.path.startswith("/v1/messages/count_tokens") for r in api.requests)

    explained = cli("explain", "add-login", "backend", cwd=feature.root)
    assert explained.code == 0
    assert "backend (agent build, model claude-sonnet-5-5) in task add-login" in explained.out
    assert "Why it ran: not run before" in explained.out
    assert "request 1 succeeded" in explained.out
    unknown = cli("explain", "add-login", "backnd", cwd=feature.root)
    assert unknown.code == 2 and "did you mean 'backend'?" in unknown.err


LIVE_GATE = """
name: live
stages:
  - {id: draft, agent: build, prompt: Draft it.}
  - {id: review, type: approval, needs: [draft], approval: Read the draft.}
  - {id: slow, agent: build, prompt: Take your time.}
  - {id: publish, agent: build, needs: [review], prompt: Publish it.}
  - {id: audit, agent: auditor, needs: [publish, slow]}
"""


def test_a_decision_on_an_approval_stage_reaches_the_run_that_waits_for_it(
    api: FakeAnthropic, project: TempProject
) -> None:
    """approve while the run goes on (another stage is still working): it carries on past the gate."""
    project.workflow(LIVE_GATE, name="live")
    api.reply("A draft.", when=at("draft"))
    api.reply("Took it.", when=at("slow"), delay=4)
    api.reply("Published.", when=at("publish"))
    api.reply(json.dumps(VERDICT_PASS), when=at("audit"))
    env = {**os.environ, "ANTHROPIC_BASE_URL": api.url, "ANTHROPIC_API_KEY": "test-key-not-a-secret"}
    command = [sys.executable, "-m", "orchestrator", "run", "workflows/live.yaml", "--task", "t"]
    running = started_until(command, project.root, env, "approval_requested")
    approve = [sys.executable, "-m", "orchestrator", "approve", "t", "review", "--note", "Ship it"]
    assert subprocess.run(approve, cwd=project.root, capture_output=True, timeout=60).returncode == 0
    out, _ = running.communicate(timeout=60)
    assert running.returncode == 0, out.decode()
    saved = state_of(project, "t")
    assert saved["stages"]["review"]["status"] == "succeeded" and saved["stages"]["publish"]["status"] == "succeeded"
    assert "Note: Ship it" in by_stage(api)["publish"][0].text()


def test_a_state_folder_that_can_no_longer_be_written_stops_the_run_before_it_pays_for_more(
    api: FakeAnthropic, feature: TempProject, cli: CliRunner
) -> None:
    """The writes fail (here the stages/ folder is replaced by a file mid-run): nothing new starts."""
    stages = feature.root / "docs/ai/add-login/stages"

    def break_the_folder(body: dict[str, Any]) -> bool:
        # The run's writer may recreate the folder between the removal and the file: try until a file is there.
        while at("backend") in json.dumps(body) and not stages.is_file():
            with contextlib.suppress(OSError):
                shutil.rmtree(stages)
                stages.write_text("not a folder")
        return False  # a matcher with a side effect: it never answers

    api.reply(when=break_the_folder)
    api.reply("INTEGRATED", when=at("integrate"), delay=0.5)  # if it started before the failure was known
    replies(api)
    result = cli(*RUN, cwd=feature.root)
    assert result.code == 2, result.out + result.err
    assert "can't write" in result.err and "Traceback" not in result.err
    # The failure is known within milliseconds of backend's end (integrate may have started by then):
    # from then on nothing starts.
    assert "audit" not in requested(api)


def test_a_continued_runs_duration_counts_every_invocation(
    api: FakeAnthropic, project: TempProject, cli: CliRunner
) -> None:
    project.workflow(GATED)
    api.reply("PLAN OUTPUT", when=at("plan"), delay=0.3)  # each invocation takes a moment the total must hold
    api.reply("BACKEND OUTPUT", when=at("backend"), delay=0.3)
    replies(api)
    assert cli(*RUN, cwd=project.root).code == 3  # paused at the plan's gate
    first = state_of(project)["duration"]
    assert first >= 0.3
    assert cli("approve", "add-login", "plan", cwd=project.root).code == 0
    assert cli(*RUN, cwd=project.root).code == 3  # then at the release gate
    second = state_of(project)
    assert second["resumed"] == 1
    assert second["duration"] >= first + 0.3  # not only the last invocation's
