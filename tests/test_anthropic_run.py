"""Runs against the localhost fake of the Messages API, through the real anthropic SDK."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from typing import Any

import pytest

from orchestrator.compiler import compile_workflow
from orchestrator.project import Project
from orchestrator.run.options import RunRequest
from orchestrator.run.prepare import prepare_run, run_prepared
from orchestrator.runners.anthropic import AnthropicRunner, RetryPolicy

from .conftest import FEATURE, CliRunner, TempProject
from .fake_anthropic import FakeAnthropic, Request

VERDICT_PASS = {
    "verdict": "pass",
    "summary": "Login works and is tested.",
    "findings": [],
    "checklist": [{"item": "tests", "result": "pass", "note": "pytest: 12 passed"}],
}
VERDICT_FAIL = {
    "verdict": "fail",
    "summary": "The frontend has no tests.",
    "findings": [{"stage": "frontend", "severity": "major", "title": "No tests for the login form", "fix": "Add them"}],
    "checklist": [{"item": "tests", "result": "fail", "note": "no form tests"}],
}


def at(stage: str) -> str:
    """Matches requests for ``stage`` (its user message starts with this), not ones that quote it."""
    return f": stage `{stage}` of workflow"


def stage_of(request: Request) -> str | None:
    """The stage a request is for, from the first line of its user message."""
    for message in request.body.get("messages", []):
        content = message["content"]
        text = content if isinstance(content, str) else content[0]["text"]
        if text.startswith("# Task "):
            return text.split("stage `", 1)[1].split("`", 1)[0]
    return None


@pytest.fixture
def feature(project: TempProject) -> TempProject:
    project.workflow(FEATURE)
    return project


def by_stage(api: FakeAnthropic) -> dict[str, list[Request]]:
    out: dict[str, list[Request]] = {}
    for request in api.messages():
        out.setdefault(stage_of(request) or "?", []).append(request)
    return out


def verdict_reply(api: FakeAnthropic, verdict: dict[str, Any]) -> None:
    """The auditor's reply: held to the verdict's schema (a structured output), so it is the verdict's JSON."""
    api.reply(json.dumps(verdict), when=at("audit"))


def state(project: TempProject, task: str = "add-login") -> dict[str, Any]:
    return json.loads((project.root / "docs/ai" / task / "state.json").read_text())


def test_a_run_sends_the_right_model_system_prompt_and_upstream_outputs(
    api: FakeAnthropic, feature: TempProject, cli: CliRunner
) -> None:
    api.reply(
        "PLAN: 1. add /login 2. add the form", when=at("plan"), usage={"input_tokens": 1200, "output_tokens": 300}
    )
    verdict_reply(api, VERDICT_PASS)
    result = cli(
        "run", "workflows/feature.yaml", "--task", "add-login", "--param", "goal=Add a login page", cwd=feature.root
    )
    assert result.code == 0, result.err + result.out
    sent = by_stage(api)
    assert sorted(sent) == ["audit", "backend", "frontend", "integrate", "plan"]
    assert {stage: requests[0].body["model"] for stage, requests in sent.items()} == {
        "plan": "claude-opus-5-5",
        "backend": "claude-sonnet-5-5",
        "frontend": "claude-sonnet-5-5",
        "integrate": "claude-sonnet-5-5",
        "audit": "claude-opus-5-5",
    }
    compiled = compile_workflow(feature.root / "workflows/feature.yaml", Project(feature.root))
    rendered = {a.agent: a for a in compiled.rendered}
    cached = {"type": "ephemeral"}
    for stage, requests in sent.items():
        body = requests[0].body
        agent = rendered[{"backend": "build", "integrate": "build", "audit": "auditor"}.get(stage, stage)]
        # The brief every agent shares, then the agent's own instructions: each a cache breakpoint.
        assert body["system"] == [
            {"type": "text", "text": agent.brief, "cache_control": cached},
            {"type": "text", "text": agent.text, "cache_control": cached},
        ]
        assert body["stream"] is True
        assert not {"tool_choice", "temperature", "top_p", "top_k", "thinking"} & set(body)
    plan_prompt = sent["plan"][0].text()
    assert "Write an implementation plan for: Add a login page" in plan_prompt
    assert "PLAN: 1. add /login 2. add the form" in sent["backend"][0].text()
    audit = sent["audit"][0]
    # The verdict is a structured output: Opus 5.5 thinks, and refuses a forced tool call.
    verdict_format = audit.body["output_config"]["format"]
    assert verdict_format["type"] == "json_schema" and "verdict" in verdict_format["schema"]["properties"]
    for other in ("plan", "backend", "frontend", "integrate"):
        assert f"## Output of stage `{other}`" in audit.text()
    saved = state(feature)
    assert saved["status"] == "succeeded"
    assert saved["stages"]["plan"]["tokens"] == {"input": 1200, "output": 300, "cache_read": 0, "cache_write": 0}
    assert saved["stages"]["plan"]["cost_usd"] == pytest.approx((1200 * 4 + 300 * 20) / 1e6)  # Opus 5.5: $4 / $20
    assert saved["audit"]["verdict"] == "pass"
    assert (feature.root / "docs/ai/add-login/stages/plan.md").read_text() == "PLAN: 1. add /login 2. add the form\n"
    assert "Audit: pass: Login works and is tested." in result.out


def test_a_fail_verdict_fails_the_run_with_exit_1_and_shows_the_findings(
    api: FakeAnthropic, feature: TempProject, cli: CliRunner
) -> None:
    verdict_reply(api, VERDICT_FAIL)
    result = cli("run", "workflows/feature.yaml", "--task", "add-login", "--param", "goal=x", cwd=feature.root)
    assert result.code == 1
    assert "  - major [frontend] No tests for the login form" in result.out
    markdown = (feature.root / "docs/ai/add-login/workflow-state.md").read_text()
    assert "**Verdict: fail.** The frontend has no tests." in markdown
    assert "| major | `frontend` | No tests for the login form |" in markdown
    assert "The audit failed: fix the critical and major findings above (stages `frontend`)." in markdown


def test_independent_stages_overlap_and_max_parallel_is_respected(
    api: FakeAnthropic, feature: TempProject, cli: CliRunner
) -> None:
    api.reply("built", when=at("backend"), delay=0.4)
    api.reply("built", when=at("frontend"), delay=0.4)
    verdict_reply(api, VERDICT_PASS)

    def spans(task: str, *extra: str) -> dict[str, tuple[float, float]]:
        result = cli(
            "run", "workflows/feature.yaml", "--task", task, "--param", "goal=x", "--json", *extra, cwd=feature.root
        )
        assert result.code == 0, result.err
        events = [json.loads(line) for line in result.out.splitlines()]
        start = {e["stage"]: e["time"] for e in events if e["event"] == "stage_started"}
        end = {e["stage"]: e["time"] for e in events if e["event"] == "stage_succeeded"}
        return {s: (start[s], end[s]) for s in ("backend", "frontend")}

    parallel = spans("par")
    assert parallel["backend"][0] < parallel["frontend"][1] and parallel["frontend"][0] < parallel["backend"][1]
    sequential = spans("seq", "--max-parallel", "1")
    assert sequential["frontend"][0] >= sequential["backend"][1]


def run_library(project: TempProject, retry: RetryPolicy, task: str = "t") -> Any:
    prepared = prepare_run(
        project.root / "workflows/feature.yaml", Project(project.root), RunRequest(task=task, param_args=["goal=x"])
    )
    return run_prepared(prepared, runner=AnthropicRunner(retry=retry), flush_interval=0)


@pytest.mark.parametrize(
    ("status", "error", "headers"),
    [(429, "rate_limit_error", {"retry-after": "0"}), (529, "overloaded_error", {}), (500, "api_error", {})],
)
def test_rate_limits_overload_and_server_errors_are_retried(
    status: int, error: str, headers: dict[str, str], api: FakeAnthropic, feature: TempProject
) -> None:
    api.reply("slow down", when=at("plan"), status=status, error=error, headers=headers, times=2)
    verdict_reply(api, VERDICT_PASS)
    outcome = run_library(feature, RetryPolicy(max_attempts=3, base_delay=0.01))
    assert outcome.status == "succeeded"
    assert len(by_stage(api)["plan"]) == 3
    attempts = state(feature, "t")["stages"]["plan"]["attempts"]
    assert [a["status_code"] for a in attempts] == [status, status, None]
    assert attempts[0]["error"].startswith(f"HTTP {status} {error}: slow down [request req_fake]")


def test_retry_after_is_honoured(api: FakeAnthropic, feature: TempProject) -> None:
    api.reply("wait", when=at("plan"), status=429, error="rate_limit_error", headers={"retry-after": "0.6"}, times=1)
    verdict_reply(api, VERDICT_PASS)
    run_library(feature, RetryPolicy(max_attempts=2, base_delay=0.0))
    assert len(by_stage(api)["plan"]) == 2
    times = [
        json.loads(line)["time"]
        for line in (feature.root / "docs/ai/t/events.jsonl").read_text().splitlines()
        if '"attempt_finished"' in line and '"plan"' in line
    ]
    assert len(times) == 2 and times[1] - times[0] >= 0.55


def test_an_api_error_after_retries_fails_the_stage_and_the_run_goes_on(
    api: FakeAnthropic, feature: TempProject
) -> None:
    api.reply("internal trouble", when=at("backend"), status=500, error="api_error")
    verdict_reply(api, VERDICT_PASS)
    outcome = run_library(feature, RetryPolicy(max_attempts=2, base_delay=0.01))
    assert outcome.status == "failed"
    saved = state(feature, "t")
    backend = saved["stages"]["backend"]
    assert backend["status"] == "failed"
    assert backend["error"] == "HTTP 500 api_error: internal trouble [request req_fake] (gave up after 2 attempts)"
    assert saved["stages"]["frontend"]["status"] == "succeeded"  # the independent branch finished
    assert saved["stages"]["integrate"] == {
        **saved["stages"]["integrate"],
        "status": "skipped",
        "error": "needs backend, which failed",
    }
    assert len(by_stage(api)["backend"]) == 2


def test_a_reply_cut_off_at_max_tokens_fails_the_stage(api: FakeAnthropic, feature: TempProject) -> None:
    api.reply("a plan that goes on and", when=at("plan"), stop_reason="max_tokens")
    outcome = run_library(feature, RetryPolicy(max_attempts=1))
    assert outcome.status == "failed"
    assert state(feature, "t")["stages"]["plan"]["error"] == (
        "the reply was cut off at max_tokens (8192); raise defaults.max_tokens in the workflow"
    )


def test_no_api_key_is_a_clear_error_before_anything_runs(
    feature: TempProject, cli: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    result = cli("run", "workflows/feature.yaml", "--task", "add-login", "--param", "goal=x", cwd=feature.root)
    assert result.code == 2
    assert result.err.splitlines()[0] == "Error: ANTHROPIC_API_KEY is not set, so the stages can't reach Claude"
    assert "--offline" in result.err
    assert not (feature.root / "docs").exists()


def test_the_installed_command_runs_against_the_fake(api: FakeAnthropic, feature: TempProject) -> None:
    api.reply("PLAN", when=at("plan"))
    verdict_reply(api, VERDICT_PASS)
    env = {**os.environ, "ANTHROPIC_BASE_URL": api.url, "ANTHROPIC_API_KEY": "test-key-not-a-secret"}
    proc = subprocess.run(
        [sys.executable, "-m", "orchestrator", "run", "workflows/feature.yaml", "--task", "login", "--param", "goal=x"],
        cwd=feature.root,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr + proc.stdout
    folder = feature.root / "docs/ai/login"
    saved = json.loads((folder / "state.json").read_text())
    assert saved["schema_version"] == 2
    assert [s["status"] for s in saved["stages"].values()] == ["succeeded"] * 5
    assert (folder / "stages/plan.md").read_text() == "PLAN\n"
    events = [json.loads(line) for line in (folder / "events.jsonl").read_text().splitlines()]
    assert events[0]["event"] == "run_started" and events[-1]["event"] == "run_finished"
    assert "test-key-not-a-secret" not in "".join(p.read_text() for p in folder.rglob("*") if p.is_file())
    assert "**Status: succeeded" in (folder / "workflow-state.md").read_text()


def test_sigkill_mid_run_leaves_files_that_parse_and_finished_outputs_intact(
    api: FakeAnthropic, feature: TempProject
) -> None:
    api.reply("PLAN DONE", when=at("plan"))
    api.reply("FRONTEND DONE", when=at("frontend"))
    api.reply("slow", when=at("backend"), delay=30)
    env = {**os.environ, "ANTHROPIC_BASE_URL": api.url, "ANTHROPIC_API_KEY": "test-key-not-a-secret"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "orchestrator", "run", "workflows/feature.yaml", "--task", "k", "--param", "goal=x"],
        cwd=feature.root,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    folder = feature.root / "docs/ai/k"
    deadline = time.monotonic() + 60
    while not (folder / "stages/frontend.md").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)  # let a coalesced flush happen, then kill at an arbitrary point after it
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    saved = json.loads((folder / "state.json").read_text())
    assert saved["status"] == "running"
    assert saved["stages"]["plan"]["status"] == "succeeded"
    for line in (folder / "events.jsonl").read_text().splitlines():
        json.loads(line)
    assert (folder / "stages/plan.md").read_text() == "PLAN DONE\n"
    assert (folder / "stages/frontend.md").read_text() == "FRONTEND DONE\n"
    assert (folder / "workflow-state.md").read_text().startswith("# feature: k\n")
    assert not [p for p in folder.rglob("*.tmp")]
    # Its lock file is still there, but no process holds it: status and explain say it was interrupted.
    assert (folder / ".lock").exists()
    shown = subprocess.run(
        [sys.executable, "-m", "orchestrator", "status", "k"], cwd=feature.root, capture_output=True, text=True
    )
    assert shown.returncode == 0 and "feature: k: interrupted" in shown.stdout, shown.stdout
    assert re.search(r"\n  backend +interrupted", shown.stdout) and "Continue with `orchestrate run" in shown.stdout
    why = subprocess.run(
        [sys.executable, "-m", "orchestrator", "explain", "k", "backend"],
        cwd=feature.root,
        capture_output=True,
        text=True,
    )
    assert why.returncode == 0 and "running" not in why.stdout.split("\n", 1)[0], why.stdout


def test_a_malformed_chunk_in_the_stream_is_an_attempt_counted_and_retried(
    api: FakeAnthropic, feature: TempProject, cli: CliRunner
) -> None:
    api.reply("half a plan", when=at("plan"), garble=3, times=1)  # a content delta whose data is not JSON
    api.reply("PLAN", when=at("plan"))
    verdict_reply(api, VERDICT_PASS)
    result = cli("run", "workflows/feature.yaml", "--task", "add-login", "--param", "goal=x", cwd=feature.root)
    assert result.code == 0, result.out
    attempts = state(feature)["stages"]["plan"]["attempts"]
    assert len(attempts) == 2 and attempts[0]["error"].startswith("malformed reply: JSONDecodeError")
    assert attempts[0]["tokens"]["input"] > 0  # message_start had come: what it cost is counted
    assert (feature.root / "docs/ai/add-login/stages/plan.md").read_text() == "PLAN\n"


def test_the_sdk_is_loaded_before_the_first_stage_starts_so_its_duration_is_its_own(
    api: FakeAnthropic, feature: TempProject
) -> None:
    verdict_reply(api, VERDICT_PASS)
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from orchestrator.project import Project\n"
        "from orchestrator.run.prepare import RunRequest, prepare_run, run_prepared\n"
        "seen = []\n"
        "class Spy:\n"
        "    def on_event(self, event):\n"
        "        if type(event).__name__ == 'StageStarted':\n"
        "            seen.append('anthropic' in sys.modules)\n"
        "prepared = prepare_run(Path('workflows/feature.yaml').absolute(), Project(Path('.').absolute()),\n"
        "                       RunRequest(task='t', param_args=['goal=x']))\n"
        "print(run_prepared(prepared, listeners=[Spy()]).status, seen)\n"
    )
    env = {**os.environ, "ANTHROPIC_BASE_URL": api.url, "ANTHROPIC_API_KEY": "test-key-not-a-secret"}
    done = subprocess.run([sys.executable, "-c", code], cwd=feature.root, env=env, capture_output=True, text=True)
    assert done.stdout.strip() == "succeeded [True, True, True, True, True]", done.stdout + done.stderr
