"""Seeing runs from the command line: history, JSON from compile, the schema line of init, completion, and the
task commands finding the project from a subfolder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jsonschema
import yaml

from .conftest import FEATURE, CliRunner, TempProject
from .fake_anthropic import FakeAnthropic

RUN = ("run", "workflows/feature.yaml", "--task", "t", "--param", "goal=x")


def _sums(events_file: Path) -> list[dict[str, float]]:
    """Per run, straight from the log: requests, tokens in and out, cost."""
    runs: list[dict[str, float]] = []
    for line in events_file.read_text().splitlines():
        event = json.loads(line)
        if event["event"] == "run_started":
            runs.append({"requests": 0, "input": 0, "output": 0, "cost": 0.0})
        elif event["event"] == "attempt_finished":
            attempt = event["attempt"]
            runs[-1]["requests"] += 1
            runs[-1]["input"] += attempt["usage"]["input_tokens"]
            runs[-1]["output"] += attempt["usage"]["output_tokens"]
            runs[-1]["cost"] += event["cost_usd"] or 0.0
    return runs


def test_history_lists_every_run_and_its_figures_are_the_events_sums(
    project: TempProject, cli: CliRunner, api: FakeAnthropic
) -> None:
    project.workflow(FEATURE)
    assert cli(*RUN, cwd=project.root).code == 0
    assert cli(*RUN, cwd=project.root).code == 0  # nothing changed: every stage kept
    assert cli(*RUN, "--from", "integrate", cwd=project.root).code == 0
    # A run killed before its end: its log stops without run_finished.
    log = project.root / "docs/ai/t/events.jsonl"
    log.write_text(
        log.read_text()
        + json.dumps(
            {
                "event": "run_started",
                "time": 1.0,
                "run_id": "dead",
                "workflow": "feature",
                "task": "t",
                "stages": [],
                "max_parallel": 1,
            }
        )
        + "\n"
    )
    result = cli("history", "t", "--json", cwd=project.root)
    assert result.code == 0, result.err
    history = json.loads(result.out)
    sums = _sums(log)
    assert [r["requests"] for r in history["runs"]] == [int(s["requests"]) for s in sums] == [5, 0, 2, 0]
    for run, expected in zip(history["runs"], sums, strict=True):
        assert run["tokens"]["input"] == expected["input"] and run["tokens"]["output"] == expected["output"]
        assert abs(run["cost_usd"] - expected["cost"]) < 1e-6
    assert [r["status"] for r in history["runs"]] == ["succeeded", "succeeded", "succeeded", "killed"]
    assert history["runs"][1]["kept"] == ["plan", "backend", "frontend", "integrate", "audit"]
    assert history["runs"][2]["ran"] == ["integrate", "audit"]
    totals = history["totals"]
    assert totals["runs"] == 4 and totals["requests"] == 7 == len(api.messages())
    assert abs(totals["cost_usd"] - sum(s["cost"] for s in sums)) < 1e-6
    # The same, for people: one line per run, and the totals across runs.
    text = cli("history", cwd=project.root).out
    assert text.startswith("t: 4 runs,") and "7 requests" in text.splitlines()[0]
    assert "killed" in text and "ran: integrate, audit" in text


def test_history_of_a_task_without_runs_is_a_clear_error(project: TempProject, cli: CliRunner) -> None:
    project.workflow(FEATURE)
    result = cli("history", "nothing-here", cwd=project.root)
    assert result.code == 2 and "task nothing-here has no runs" in result.err
    assert cli("history", cwd=project.root).out.startswith("No runs yet")


def test_compile_check_prints_json(project: TempProject, cli: CliRunner) -> None:
    project.workflow(FEATURE)
    written = json.loads(cli("compile", "--json", cwd=project.root).out)
    assert written["ok"] and written["workflows"][0]["written"]
    checked = cli("compile", "--check", "--json", cwd=project.root)
    assert checked.code == 0 and json.loads(checked.out)["workflows"][0]["stale"] == []
    (project.root / "output/opencode/agents/feature-plan.md").write_text("edited\n")
    stale = cli("compile", "--check", "--json", cwd=project.root)
    report = json.loads(stale.out)
    assert stale.code == 1 and not report["ok"]
    assert report["workflows"][0]["stale"] == ["opencode/agents/feature-plan.md"]


def test_init_points_editors_at_a_schema_the_starter_workflow_satisfies(tmp_path: Path, cli: CliRunner) -> None:
    assert cli("init", "--root", str(tmp_path), cwd=tmp_path).code == 0
    starter = (tmp_path / "workflows/feature.yaml").read_text()
    assert starter.splitlines()[0] == "# yaml-language-server: $schema=workflow.schema.json"
    schema = json.loads((tmp_path / "workflows/workflow.schema.json").read_text())
    jsonschema.validate(yaml.safe_load(starter), schema)  # the editor would show no error
    broken = yaml.safe_load(starter) | {"stages": [{"id": "x", "needz": []}]}
    errors = list(jsonschema.Draft202012Validator(schema).iter_errors(broken))
    assert errors  # and would flag a typo


def test_task_commands_find_the_project_from_a_subfolder(project: TempProject, cli: CliRunner) -> None:
    project.workflow(FEATURE)
    assert cli(*RUN, "--offline", cwd=project.root).code == 0
    status = cli("status", "t", cwd=project.root / "workflows")
    assert status.code == 0 and "succeeded" in status.out
    assert cli("history", "t", cwd=project.root / "docs/ai").code == 0


def test_shell_completion_offers_task_and_stage_names(project: TempProject, cli: CliRunner) -> None:
    project.workflow(FEATURE)
    assert cli(*RUN, "--offline", cwd=project.root).code == 0
    env = {**os.environ, "_ORCHESTRATE_COMPLETE": "bash_complete", "COMP_CWORD": "2"}

    def complete(words: str) -> list[str]:
        done = subprocess.run(
            [sys.executable, "-c", "from orchestrator.cli import cli; cli(prog_name='orchestrate')"],
            env={**env, "COMP_WORDS": words, "COMP_CWORD": str(len(words.split(" ")) - 1)},
            cwd=project.root,
            capture_output=True,
            text=True,
            timeout=60,
        )
        return [line.split(",", 1)[1] for line in done.stdout.splitlines() if line.startswith("plain,")]

    assert complete("orchestrate status ") == ["t"]
    assert complete("orchestrate explain t ba") == ["backend"]
    assert complete("orchestrate approve t ") == ["plan", "backend", "frontend", "integrate", "audit"]
