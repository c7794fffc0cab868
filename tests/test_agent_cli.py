"""The agent-CLI runners, driving the real pinned Claude Code and OpenCode against the localhost fake API.

A stage runs as the example project's compiled ``feature-build`` agent in an empty temp workspace,
with HOME and the config folders in tmp_path. The tests check what a user would notice: the reply,
the tokens, what reached the API, one attempt per CLI run, a readable failure, a prompt stop on
cancellation with no process left behind, and nothing written into the workspace.
"""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from orchestrator.audit import verdict_schema
from orchestrator.errors import UsageError
from orchestrator.runners import AttemptRecord, StageFailure, StageRequest, StageResult, Usage
from orchestrator.runners.agent_cli import CLI_PACKAGES, ClaudeCodeRunner, CliAgent, OpenCodeRunner, find_cli

from .conftest import REPO, CliRunner
from .fake_anthropic import FakeAnthropic, Request
from .test_real_clients import Clients, clients, isolated_env  # noqa: F401  (imported: pytest sees the fixture)

slow = pytest.mark.slow
KINDS = ["claude-code", "opencode"]
RUNNERS: dict[str, type[ClaudeCodeRunner | OpenCodeRunner]] = {
    "claude-code": ClaudeCodeRunner,
    "opencode": OpenCodeRunner,
}
KEY = "test-key-not-a-secret-5c1e"
MARKER = "stage-marker-5c1e"
PROMPT = f'Integrate the backend and the frontend.\n{MARKER}: keep "quotes", `ticks` and $HOME as they are.'
REPLY = "INTEGRATED: both parts joined and all 42 tests pass."
MODEL = "claude-opus-5-5"  # not the compiled agent's model (claude-sonnet-5-5): the stage's model must win
USAGE = {"input_tokens": 1234, "output_tokens": 56, "cache_read_input_tokens": 7, "cache_creation_input_tokens": 8}


@pytest.fixture
def installed(request: pytest.FixtureRequest) -> Clients:
    """The pinned CLIs, installed once into the cache by test_real_clients' ``clients`` fixture."""
    found = request.getfixturevalue("clients")
    assert isinstance(found, Clients)
    return found


@pytest.fixture
def agent(cli: CliRunner, tmp_path: Path) -> CliAgent:
    out = tmp_path / "compiled"
    result = cli("compile", "examples/feature/workflows/feature.yaml", "--out", str(out), cwd=REPO)
    assert result.code == 0, result.err
    return CliAgent(
        "feature-build",
        (out / "claude/agents/feature-build.md").read_text(encoding="utf-8"),
        (out / "opencode/agents/feature-build.md").read_text(encoding="utf-8"),
    )


@pytest.fixture
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty project folder; the runners' temp folders go to tmp_path/tmp, so their removal is seen."""
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    project = tmp_path / "project"
    project.mkdir()
    (project / "README.md").write_text("# A project\n", encoding="utf-8")
    return project


def make_runner(
    kind: str, installed: Clients, agent: CliAgent, workspace: Path, api: FakeAnthropic, timeout: float = 60
) -> ClaudeCodeRunner | OpenCodeRunner:
    """The runner with the CLI found on PATH, as a user's would be; no DISABLE_* variables: the runner sets those."""
    home = workspace.parent / "home"
    path = os.pathsep.join([str(installed.claude.parent), str(installed.opencode.parent), os.environ.get("PATH", "")])
    env = isolated_env(
        home, PATH=path, ANTHROPIC_BASE_URL=api.url, ANTHROPIC_API_KEY=KEY, CLAUDE_CONFIG_DIR=str(home / "claude")
    )
    return RUNNERS[kind]({"build": agent}, workspace, env, timeout=timeout)


def request(structured: dict[str, Any] | None = None, output_schema: dict[str, Any] | None = None) -> StageRequest:
    """The stage's request; ``structured`` is the audit's verdict schema, ``output_schema`` a stage's own."""
    return StageRequest(
        "integrate",
        "build",
        MODEL,
        "(the compiled body)",
        PROMPT,
        4096,
        "default",
        output_schema=structured if structured is not None else output_schema,
        verdict=structured is not None,
    )


def run(runner: ClaudeCodeRunner | OpenCodeRunner, stage: StageRequest) -> tuple[StageResult, list[AttemptRecord]]:
    attempts: list[AttemptRecord] = []
    return asyncio.run(runner.run(stage, attempts.append)), attempts


def system_text(sent: Request) -> str:
    system = sent.body.get("system")
    return system if isinstance(system, str) else "\n".join(block.get("text", "") for block in system or [])


def for_stage(api: FakeAnthropic) -> list[Request]:
    return [r for r in api.messages() if MARKER in r.text()]


def processes_in(folder: Path) -> dict[int, str]:
    """pid -> command line of every process whose working folder is ``folder``."""
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.readlink(entry / "cwd") == str(folder):
                    found[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:  # gone meanwhile, or not ours to see
                continue
    return found


def settle(check: Callable[[], bool], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while not check() and time.monotonic() < deadline:
        time.sleep(0.05)
    return check()


@slow
@pytest.mark.parametrize("kind", KINDS)
def test_a_stage_runs_in_the_cli_as_the_compiled_agent(
    kind: str, installed: Clients, agent: CliAgent, workspace: Path, tmp_path: Path
) -> None:
    body = agent.claude_file.split("\n---\n", 1)[1].strip()
    with FakeAnthropic() as api:
        api.reply(REPLY, when=MARKER, usage=USAGE)
        result, attempts = run(make_runner(kind, installed, agent, workspace, api), request())

    assert result.output == REPLY
    assert [(a.number, a.error) for a in attempts] == [(1, None)]
    assert attempts[0].usage == Usage(1234, 56, 7, 8)
    [sent] = for_stage(api)
    # Reached through the fake's URL (for OpenCode via the provider baseURL the runner wrote, /v1 added).
    assert sent.path.split("?")[0] == "/v1/messages"
    assert sent.body["model"] == MODEL
    assert body.splitlines()[0] in system_text(sent) and body in system_text(sent)
    assert PROMPT in sent.text()
    assert sent.headers.get("x-api-key") == KEY
    assert [p.name for p in workspace.iterdir()] == ["README.md"], "the runner wrote into the workspace"
    assert list((tmp_path / "tmp").iterdir()) == [], "the runner left its temp folder behind"


FILES_SCHEMA = {"type": "object", "properties": {"files": {"type": "array"}}, "required": ["files"]}


@slow
@pytest.mark.parametrize(
    ("kind", "field", "data"),
    [
        ("claude-code", "output_schema", {"files": ["orchestrator/runners/agent_cli.py"]}),
        ("claude-code", "structured", {"verdict": "fail", "summary": "No tests.", "findings": [], "checklist": []}),
        ("opencode", "output_schema", {"files": ["orchestrator/runners/agent_cli.py"]}),
    ],
)
def test_a_stage_that_asks_for_json_gets_it_back_as_data(
    kind: str, field: str, data: dict[str, Any], installed: Clients, agent: CliAgent, workspace: Path
) -> None:
    schema = FILES_SCHEMA if field == "output_schema" else verdict_schema()
    with FakeAnthropic() as api:
        if kind == "claude-code":  # it takes the schema (--json-schema) and answers through a tool of its own
            api.script(MARKER, [{"name": "StructuredOutput", "input": data}, "Done."])
        else:  # OpenCode has no such option: the prompt asks for the JSON, which comes back as the reply
            api.reply(f"```json\n{json.dumps(data)}\n```", when=MARKER)
        result, attempts = run(make_runner(kind, installed, agent, workspace, api), request(**{field: schema}))
    assert result.data == data
    assert [a.error for a in attempts] == [None]


@slow
def test_opencode_stages_started_together_on_a_fresh_install_all_succeed(
    installed: Clients, agent: CliAgent, workspace: Path
) -> None:
    """Fresh OpenCode processes setting up their database at once fail; the runner sets it up first."""
    with FakeAnthropic() as api:
        for n in range(3):
            api.reply(f"reply {n}", when=f"{MARKER}-{n}")
        runner = make_runner("opencode", installed, agent, workspace, api)
        stages = [replace(request(), stage_id=f"part{n}", prompt=f"{MARKER}-{n}: {PROMPT}") for n in range(3)]

        async def together() -> list[StageResult]:
            return list(await asyncio.gather(*(runner.run(stage, lambda attempt: None) for stage in stages)))

        results = asyncio.run(together())
    assert [r.output for r in results] == ["reply 0", "reply 1", "reply 2"]


@slow
@pytest.mark.parametrize("kind", KINDS)
def test_a_failing_cli_run_is_one_attempt_and_a_readable_failure(
    kind: str, installed: Clients, agent: CliAgent, workspace: Path
) -> None:
    with FakeAnthropic() as api:
        api.reply("model claude-opus-5-5 is not served here", when=MARKER, status=400, error="invalid_request_error")
        runner = make_runner(kind, installed, agent, workspace, api)
        attempts: list[AttemptRecord] = []
        with pytest.raises(StageFailure) as failure:
            asyncio.run(runner.run(request(), attempts.append))

    message = str(failure.value)
    assert message.startswith(f"{kind} failed: ") and "400" in message
    assert "model claude-opus-5-5 is not served here" in message
    assert KEY not in message
    [attempt] = attempts
    assert attempt.error is not None and "not served here" in attempt.error
    assert attempt.status_code == 400


@slow
@pytest.mark.parametrize("kind", KINDS)
def test_cancelling_a_stage_stops_the_cli_and_counts_the_attempt(
    kind: str, installed: Clients, agent: CliAgent, workspace: Path
) -> None:
    attempts: list[AttemptRecord] = []
    seen: dict[int, str] = {}

    async def cancel_midway(runner: ClaudeCodeRunner | OpenCodeRunner, api: FakeAnthropic) -> float:
        task = asyncio.create_task(runner.run(request(), attempts.append))
        deadline = time.monotonic() + 30
        while not for_stage(api) and time.monotonic() < deadline and not task.done():
            await asyncio.sleep(0.05)
        assert for_stage(api), "the CLI never sent the stage's request"
        seen.update(processes_in(workspace))
        cancelled = time.monotonic()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return time.monotonic() - cancelled

    with FakeAnthropic() as api:
        api.reply("too late", when=MARKER, delay=30)
        took = asyncio.run(cancel_midway(make_runner(kind, installed, agent, workspace, api), api))

    assert took < 5, f"cancelling took {took:.1f}s"
    assert [(a.number, a.error) for a in attempts] == [(1, "cancelled")]
    assert seen, "no CLI process was seen running in the workspace"
    assert not any(KEY in argv for argv in seen.values()), "the API key was on a command line"
    assert settle(lambda: not processes_in(workspace), 3), f"left running: {processes_in(workspace)}"


@slow
def test_a_cli_run_past_its_timeout_is_stopped_and_fails(installed: Clients, agent: CliAgent, workspace: Path) -> None:
    with FakeAnthropic() as api:
        api.reply("too late", when=MARKER, delay=30)
        runner = make_runner("claude-code", installed, agent, workspace, api, timeout=3)
        attempts: list[AttemptRecord] = []
        started = time.monotonic()
        with pytest.raises(StageFailure, match="timed out after 3s"):
            asyncio.run(runner.run(request(), attempts.append))
    assert time.monotonic() - started < 8
    assert [a.error for a in attempts] == ["timed out after 3s and was stopped"]
    assert settle(lambda: not processes_in(workspace), 3), f"left running: {processes_in(workspace)}"


@pytest.mark.parametrize("kind", KINDS)
def test_a_missing_cli_is_a_usage_error_naming_its_npm_package(kind: str, tmp_path: Path) -> None:
    environ = {"PATH": str(tmp_path)}
    with pytest.raises(UsageError) as error:
        find_cli(kind, environ)
    text = "\n".join(error.value.lines())
    command = "claude" if kind == "claude-code" else "opencode"
    assert f"`{command}` command, which is not on PATH" in text
    assert f"npm install -g {CLI_PACKAGES[kind]}" in text
    # A runner can't even be made without it, so a run fails before any stage starts.
    with pytest.raises(UsageError):
        RUNNERS[kind]({}, tmp_path, environ)


def test_find_cli_uses_path_or_the_override_variable(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    claude = bin_dir / "claude"
    claude.write_text("#!/bin/sh\n", encoding="utf-8")
    claude.chmod(0o755)
    assert find_cli("claude-code", {"PATH": str(bin_dir)}) == str(claude)
    assert find_cli("opencode", {"PATH": "", "ORCHESTRATE_OPENCODE_BIN": str(claude)}) == str(claude)
    not_executable = tmp_path / "opencode"
    not_executable.write_text("", encoding="utf-8")
    for bad in (str(not_executable), "bin/claude", str(tmp_path / "missing")):
        with pytest.raises(UsageError, match="ORCHESTRATE_OPENCODE_BIN") as error:
            find_cli("opencode", {"PATH": str(bin_dir), "ORCHESTRATE_OPENCODE_BIN": bad})
        assert error.value.hint is not None and "opencode-ai" in error.value.hint


@slow
def test_orchestrate_run_drives_both_clis_from_a_workflow(
    installed: Clients, cli: CliRunner, api: FakeAnthropic, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The whole path a user takes: `runner:` in the workflow, `orchestrate run`, the state folder."""
    project = tmp_path / "project"
    (project / "workflows").mkdir(parents=True)
    (project / "workflows/cli.yaml").write_text(
        """
name: cli
agents:
  build: {runner: claude-code}
  frontend: {runner: opencode}
stages:
  - {id: backend, agent: build, prompt: "Build the backend. backend-marker"}
  - {id: ui, agent: frontend, prompt: "Build the UI. ui-marker"}
  - {id: audit, agent: auditor, needs: [backend, ui]}
""",
        encoding="utf-8",
    )
    home = tmp_path / "home"
    for key, value in isolated_env(home, CLAUDE_CONFIG_DIR=str(tmp_path / "claude-config")).items():
        if key in ("HOME", "CLAUDE_CONFIG_DIR") or key.startswith("XDG_"):
            monkeypatch.setenv(key, value)
    path = os.pathsep.join([str(installed.claude.parent), os.environ.get("PATH", "")])
    monkeypatch.setenv("PATH", path)
    api.reply("BACKEND DONE by the claude-code runner", when="backend-marker")
    api.reply("UI DONE by the opencode runner", when="ui-marker")
    result = cli("run", "workflows/cli.yaml", "--task", "t", cwd=project)
    assert result.code == 0, result.out + result.err
    stages = project / "docs/ai/t/stages"
    assert (stages / "backend.md").read_text().strip() == "BACKEND DONE by the claude-code runner"
    assert (stages / "ui.md").read_text().strip() == "UI DONE by the opencode runner"
    state = json.loads((project / "docs/ai/t/state.json").read_text())
    for sid in ("backend", "ui"):  # the clients cache their prompts: input may all be cache reads and writes
        tokens = state["stages"][sid]["tokens"]
        assert tokens["input"] + tokens["cache_read"] + tokens["cache_write"] > 0, sid
    audit = [r for r in api.messages() if "stage `audit` of workflow" in r.text()]
    assert audit and "BACKEND DONE" in audit[0].text() and "UI DONE" in audit[0].text()
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    missing = cli("run", "workflows/cli.yaml", "--task", "t2", cwd=project)
    assert missing.code == 2 and "@anthropic-ai/claude-code" in missing.err


@slow
@pytest.mark.parametrize("kind", KINDS)
def test_the_agents_effort_reaches_the_api_through_the_cli(
    kind: str, installed: Clients, cli: CliRunner, workspace: Path, tmp_path: Path
) -> None:
    """effort: in the workflow becomes Claude Code's effort and OpenCode's variant in the compiled files,
    and each client sends it to the API as output_config.effort."""
    project = tmp_path / "effort"
    (project / "workflows").mkdir(parents=True)
    (project / "workflows/feature.yaml").write_text(
        "name: feature\nagents: {build: {model: claude-opus-5-5, effort: low}}\n"
        "stages: [{id: integrate, agent: build}]\n",
        encoding="utf-8",
    )
    out = tmp_path / "compiled"
    assert cli("compile", "workflows/feature.yaml", "--out", str(out), cwd=project).code == 0
    agent = CliAgent(
        "feature-build",
        (out / "claude/agents/feature-build.md").read_text(encoding="utf-8"),
        (out / "opencode/agents/feature-build.md").read_text(encoding="utf-8"),
    )
    with FakeAnthropic() as api:
        api.reply(REPLY, when=MARKER)
        result, _ = run(make_runner(kind, installed, agent, workspace, api), replace(request(), effort="low"))
    assert result.output == REPLY
    [sent] = for_stage(api)
    assert sent.body.get("output_config", {}).get("effort") == "low", sent.body.get("output_config")
