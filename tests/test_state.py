"""The state store: coalesced writes, and state that reads back the same."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.cost import Pricing
from orchestrator.graph import build_plan
from orchestrator.loader import parse_workflow
from orchestrator.project import Project
from orchestrator.run.engine import EngineOptions, execute
from orchestrator.run.options import RunRequest
from orchestrator.run.prepare import prepare_run
from orchestrator.run.request import request_builder
from orchestrator.run.session import initial_state
from orchestrator.runners.offline import OfflineRunner
from orchestrator.state.model import RunState, StageState
from orchestrator.state.report import render_markdown
from orchestrator.state.repository import load_state
from orchestrator.state.store import StateStore

from .conftest import FEATURE, CliRunner, TempProject


def wide_project(project: TempProject, n: int) -> TempProject:
    stages = [{"id": "s0", "agent": "plan"}] + [{"id": f"s{i}", "agent": "build", "needs": ["s0"]} for i in range(1, n)]
    project.workflow(json.dumps({"name": "wide", "stages": stages}), name="wide")
    return project


def test_a_big_run_rewrites_the_markdown_a_few_times_not_once_per_event(project: TempProject) -> None:
    wide_project(project, 600)
    prepared = prepare_run(project.root / "workflows/wide.yaml", Project(project.root), RunRequest(task="big"))
    renders: list[int] = []

    def counting(state: RunState) -> str:
        renders.append(1)
        return render_markdown(state)

    async def main() -> None:
        store = StateStore(prepared.folder, initial_state(prepared, "r", 0.0), counting, flush_interval=0.25)
        await execute(
            prepared.compiled.plan,
            build_request=request_builder(prepared),
            runner_for=lambda sid: OfflineRunner(),
            listeners=[store],
            options=EngineOptions(max_parallel=64),
            price=Pricing(),
        )
        store.close()

    asyncio.run(main())
    events = (prepared.folder / "events.jsonl").read_text().splitlines()
    assert len(events) > 1800  # started, attempt and finished per stage
    assert len(renders) < 40
    state = load_state(prepared.folder)
    assert state.status == "succeeded" and state.counts() == {"succeeded": 601}
    assert not list(prepared.folder.rglob("*.tmp"))


def test_markdown_escapes_table_breaking_text(tmp_path: Path) -> None:
    plan = build_plan(parse_workflow("name: w\nstages: [{agent: plan}]\n", source="w.yaml"))
    state = RunState(
        run_id="r",
        workflow="w",
        workflow_file="w.yaml",
        task="t",
        status="failed",
        started="2026-01-01T00:00:00.000Z",
        audit_stage=plan.audit_stage,
        stages={},
    )
    state.stages["plan"] = StageState(id="plan", agent="plan", model="m", status="failed", error="a | b\nc")
    state.stages["audit"] = StageState(id="audit", agent="auditor", model="m", needs=["plan"], status="skipped")
    text = render_markdown(state)
    assert "| a \\| b c |" in text
    assert "- Stage `plan` failed: a | b c. Fix the cause." in text


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_files_orchestrate_writes_honour_the_umask(umask: int, tmp_path: Path) -> None:
    """Not the 0600 of a temp file: a teammate's tools (and git) read the state folder too."""
    code = (
        f"import os; os.umask({umask})\n"
        "from pathlib import Path\n"
        "from orchestrator.fileio import atomic_write\n"
        f"atomic_write(Path({str(tmp_path / 'state.json')!r}), b'{{}}')\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    assert (tmp_path / "state.json").stat().st_mode & 0o777 == 0o666 & ~umask


def test_a_torn_last_line_is_cut_off_and_kept_aside_when_the_next_run_opens_the_log(
    project: TempProject, cli: CliRunner
) -> None:
    project.workflow(FEATURE)
    run = ("run", "workflows/feature.yaml", "--task", "t", "--param", "goal=x", "--offline")
    assert cli(*run, cwd=project.root).code == 0
    log = project.root / "docs/ai/t/events.jsonl"
    torn = b'{"event":"stage_started","time":1.0,"stage":"pl'
    with log.open("ab") as handle:  # a power cut in the middle of a write
        handle.write(torn)
    # A reader stops before the torn line; it does not fail on it, and does not skip past it either.
    assert cli("status", "t", cwd=project.root).code == 0
    assert cli(*run, "--force", cwd=project.root).code == 0
    raw = log.read_bytes()
    assert torn not in raw and raw.endswith(b"\n")
    assert all(json.loads(line) for line in raw.splitlines())  # every line whole again
    assert (project.root / "docs/ai/t/events.jsonl.torn").read_bytes() == torn + b"\n"
    assert json.loads((project.root / "docs/ai/t/state.json").read_text())["status"] == "succeeded"
