"""orchestrate run --offline, status, params, and the state folder a run leaves."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from orchestrator.cost import Pricing, estimate, has_price, worst_case
from orchestrator.errors import StateError, UsageError
from orchestrator.loader import parse_workflow
from orchestrator.params import check_task, parse_param_args, resolve_params
from orchestrator.runners import AttemptRecord, Usage
from orchestrator.state.repository import load_state
from orchestrator.workflow import Price

from .conftest import FEATURE, CliRunner, TempProject, event_lines


@pytest.fixture
def feature(project: TempProject) -> TempProject:
    project.workflow(FEATURE)
    return project


def lines(result: Any) -> list[str]:
    return event_lines(result.out)


def run_offline(project: TempProject, cli: CliRunner, *extra: str, task: str = "add-login") -> Any:
    return cli(
        "run",
        "workflows/feature.yaml",
        "--task",
        task,
        "--param",
        "goal=Add a login page",
        "--offline",
        *extra,
        cwd=project.root,
    )


def test_offline_run_leaves_a_complete_state_folder(feature: TempProject, cli: CliRunner) -> None:
    result = run_offline(feature, cli)
    assert result.code == 0, result.err
    folder = feature.root / "docs/ai/add-login"
    assert sorted(p.name for p in folder.iterdir()) == ["events.jsonl", "stages", "state.json", "workflow-state.md"]
    assert sorted(p.name for p in (folder / "stages").iterdir()) == [
        "audit.json",
        "audit.md",
        "backend.md",
        "frontend.md",
        "integrate.md",
        "plan.md",
    ]
    state = json.loads((folder / "state.json").read_text())
    assert state["schema_version"] == 2
    assert state["status"] == "succeeded" and state["offline"] is True
    assert state["params"] == {"goal": "Add a login page"}
    assert state["command"] == (
        "orchestrate run workflows/feature.yaml --task add-login --param 'goal=Add a login page' --offline"
    )
    assert list(state["stages"]) == ["plan", "backend", "frontend", "integrate", "audit"]
    plan = state["stages"]["plan"]
    assert plan["status"] == "succeeded" and plan["output"] == "stages/plan.md" and len(plan["attempts"]) == 1
    assert plan["model"] == "claude-opus-5-5"
    events = [json.loads(line) for line in (folder / "events.jsonl").read_text().splitlines()]
    assert [e["event"] for e in events][:2] == ["run_started", "stage_started"]
    assert events[-1]["event"] == "run_finished" and events[-1]["status"] == "succeeded"
    markdown = (folder / "workflow-state.md").read_text()
    assert markdown.startswith(
        "# feature: add-login\n\n**Status: succeeded: every stage succeeded and the audit passed**"
    )
    assert "| `plan` | plan | claude-opus-5-5 | succeeded | 1 |" in markdown
    assert "```mermaid\nflowchart TD\n" in markdown and "class s0,s1,s2,s3,s4 succeeded" in markdown
    assert "Offline run: no model was called" in markdown


def test_offline_outputs_flow_downstream_and_canned_replies_are_used(
    feature: TempProject, cli: CliRunner, tmp_path: Path
) -> None:
    responses = tmp_path / "responses.yaml"
    responses.write_text("plan: 'PLAN: two steps'\nbackend: {fail: 'compile error in api.py'}\n")
    result = run_offline(feature, cli, "--responses", str(responses))
    assert result.code == 1
    folder = feature.root / "docs/ai/add-login"
    assert (folder / "stages/plan.md").read_text() == "PLAN: two steps\n"
    state = load_state(folder)
    assert state.stages["backend"].error == "compile error in api.py"
    assert state.stages["integrate"].error == "needs backend, which failed"
    assert state.stages["audit"].status == "skipped"
    assert "backend    failed" in result.out
    assert "Stage `backend` failed: compile error in api.py. Fix the cause." in result.out


def test_json_output_is_one_event_per_line_and_nothing_else(feature: TempProject, cli: CliRunner) -> None:
    result = run_offline(feature, cli, "--json")
    assert result.code == 0
    events = [json.loads(line) for line in result.out.splitlines()]
    assert events[0]["event"] == "run_started" and events[-1]["event"] == "run_finished"
    assert {e["event"] for e in events} >= {"stage_started", "stage_succeeded", "attempt_finished"}
    assert all("output" not in e for e in events)  # outputs live in stages/<id>.md


def test_a_changed_stage_reruns_and_its_old_output_never_passes_for_the_new_one(
    feature: TempProject, cli: CliRunner, tmp_path: Path
) -> None:
    assert run_offline(feature, cli).code == 0
    stages = feature.root / "docs/ai/add-login/stages"
    first = {p.name: p.read_text() for p in stages.iterdir()}
    responses = tmp_path / "r.yaml"
    responses.write_text("plan: {fail: nope}\n")
    second = run_offline(feature, cli, "--responses", str(responses))
    assert second.code == 1
    assert any(line.startswith("plan: started") and line.endswith("— canned replies changed") for line in lines(second))
    assert not (stages / "plan.md").exists()  # the old plan is not this run's plan
    state = json.loads((feature.root / "docs/ai/add-login/state.json").read_text())
    assert state["stages"]["plan"]["status"] == "failed" and state["stages"]["plan"]["output"] is None
    assert state["stages"]["backend"]["status"] == "skipped"
    # Back to the first replies: plan runs again, gives the same output, and everything after it is kept.
    third = run_offline(feature, cli)
    assert third.code == 0
    assert "plan: started" in third.out
    for sid in ("backend", "frontend", "integrate", "audit"):
        assert f"{sid}: kept (unchanged since run " in third.out
    assert {p.name: p.read_text() for p in stages.iterdir()} == first


def test_status_shows_the_saved_run(feature: TempProject, cli: CliRunner) -> None:
    run_offline(feature, cli)
    result = cli("status", "add-login", cwd=feature.root)
    assert result.code == 0
    assert result.out.startswith("feature: add-login: succeeded: every stage succeeded and the audit passed\n")
    assert "State: docs/ai/add-login/workflow-state.md" in result.out
    as_json = json.loads(cli("status", "add-login", "--json", cwd=feature.root).out)
    assert as_json["status"] == "succeeded" and as_json["task"] == "add-login"
    missing = cli("status", "nope", cwd=feature.root)
    assert missing.code == 2 and missing.err.startswith("Error: no run state in docs/ai/nope/")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--param", "gaol=x"], "Error: unknown param 'gaol' (from --param)"),
        ([], "Error: missing required param: goal (What to build)"),
        (["--param", "goal"], "Error: --param 'goal' is not name=value"),
        (["--task", "Add Login", "--param", "goal=x"], "Error: task name 'Add Login' can't be used"),
        (["--param", "goal=x", "--latency", "1"], "Error: --responses and --latency only apply to offline runs"),
    ],
)
def test_bad_run_inputs_are_clear_errors_before_any_request(
    args: list[str], message: str, feature: TempProject, cli: CliRunner
) -> None:
    if "--task" not in args:
        args = ["--task", "t", *args]
    result = cli("run", "workflows/feature.yaml", *args, cwd=feature.root)
    assert result.code == 2
    assert result.err.splitlines()[0].startswith(message), result.err
    assert not (feature.root / "docs").exists()


def test_unknown_stage_in_responses_is_an_error(feature: TempProject, cli: CliRunner, tmp_path: Path) -> None:
    responses = tmp_path / "r.yaml"
    responses.write_text("plann: x\n")
    result = run_offline(feature, cli, "--responses", str(responses))
    assert result.code == 2 and "no stage 'plann' in this workflow" in result.err


# -- params ----------------------------------------------------------------------------------------

PARAMS = parse_workflow(
    """
name: p
params:
  goal: {required: true}
  count: {type: integer, default: 3}
  ratio: {type: number}
  dry_run: {type: boolean, default: false}
stages: [{agent: plan}]
""",
    source="p.yaml",
)


def test_params_are_typed_with_defaults_and_file_values() -> None:
    values = resolve_params(
        PARAMS, parse_param_args(["goal=ship it", "count=7", "dry_run=yes"]), {"ratio": 0.5, "count": 2}
    )
    assert values == {"goal": "ship it", "count": 7, "ratio": 0.5, "dry_run": True}
    assert resolve_params(PARAMS, {"goal": "g"}) == {"goal": "g", "count": 3, "dry_run": False}


@pytest.mark.parametrize(
    ("given", "from_file", "message"),
    [
        ({"goal": "g", "count": "many"}, None, "param 'count' must be an integer, not 'many'"),
        ({"goal": "g", "dry_run": "perhaps"}, None, "param 'dry_run' must be a boolean"),
        ({"goal": "g"}, {"count": True}, "param 'count' must be an integer, not True"),
        ({"goal": "g"}, {"goal": ["a"]}, "param 'goal' must be a string"),
        ({"gol": "g"}, None, "unknown param 'gol'"),
    ],
)
def test_bad_params(given: dict[str, str], from_file: dict[str, Any] | None, message: str) -> None:
    with pytest.raises(UsageError) as info:
        resolve_params(PARAMS, given, from_file)
    assert info.value.message.startswith(message)


def test_task_names_must_be_safe_folder_names() -> None:
    assert check_task("add-login") == "add-login"
    for bad in ("../etc", "Add", "a/b", "", ".hidden"):
        with pytest.raises(UsageError):
            check_task(bad)


# -- cost ------------------------------------------------------------------------------------------


def test_prices_come_from_genai_prices_and_the_workflow_overrides_them() -> None:
    from genai_prices import Usage as PriceUsage
    from genai_prices import calc_price

    when = 1_796_083_200.0  # 2026-12-01: list prices change over time; these are that day's

    def price(usage: Usage, model: str, overrides: Any = None, batch: bool = False) -> float | None:
        return estimate(usage, model, overrides, batch=batch, when=when)

    usage = Usage(input_tokens=1_000_000, output_tokens=100_000, cache_read_tokens=1_000_000, cache_write_tokens=0)
    # Sonnet 5.5: $2 in, $10 out, $0.10 a cache read (genai-prices, late 2026): not last year's $3/$15.
    assert price(usage, "claude-sonnet-5-5") == pytest.approx(2.0 + 1.0 + 0.1)
    listed = calc_price(
        PriceUsage(input_tokens=2_000_000, cache_read_tokens=1_000_000, output_tokens=100_000),
        model_ref="claude-sonnet-5-5",
        provider_id="anthropic",
    )
    assert estimate(usage, "claude-sonnet-5-5") == pytest.approx(float(listed.total_price))  # today, whatever it is
    assert price(Usage(cache_write_tokens=1_000_000), "claude-opus-5-5") == pytest.approx(5.0)
    # Haiku 5.5 bills a whole request at its long-prompt rate once the prompt passes 100k tokens.
    assert price(Usage(input_tokens=50_000), "claude-haiku-5-5") == pytest.approx(0.005)
    assert price(Usage(input_tokens=150_000), "claude-haiku-5-5") == pytest.approx(0.075)
    assert price(Usage(input_tokens=1_000_000), "claude-opus-5-5", batch=True) == pytest.approx(2.0)
    assert price(usage, "some-other-model") is None
    assert not has_price("some-other-model") and has_price("claude-opus-5-5")
    overrides = {"claude-sonnet-5-5": Price(input=1, output=2), "haiku": Price(input=0.5, output=1, cache_read=0)}
    assert price(usage, "claude-sonnet-5-5", overrides) == pytest.approx(1 + 0.2 + 0.1)
    assert price(usage, "claude-haiku-9", overrides) == pytest.approx(0.5 + 0.1)
    assert price(usage, "claude-sonnet-5-5", overrides, batch=True) == pytest.approx((1 + 0.2 + 0.1) / 2)
    assert has_price("claude-haiku-9", overrides)
    # The worst case of a request: its input all written to the cache (dearer than plain input), every output token.
    assert worst_case("claude-sonnet-5-5", 1_000_000, 1_000_000) == pytest.approx(
        float(
            calc_price(
                PriceUsage(input_tokens=1_000_000, cache_write_tokens=1_000_000, output_tokens=1_000_000),
                model_ref="claude-sonnet-5-5",
                provider_id="anthropic",
            ).total_price
        )
    )
    record = AttemptRecord(1, when, 0.0, Usage(input_tokens=1_000_000), batch=True)
    assert Pricing().cost(record, "claude-sonnet-5-5") == pytest.approx(1.0)


def test_the_workflow_can_set_prices(feature: TempProject, cli: CliRunner) -> None:
    feature.workflow(FEATURE + "pricing:\n  opus: {input: 1, output: 1}\n  mystery: {input: 1, output: 1}\n")
    assert cli("validate", "workflows/feature.yaml", cwd=feature.root).code == 0
    feature.workflow(FEATURE + "pricing:\n  opus: {input: -1, output: 1}\n")
    assert cli("validate", "workflows/feature.yaml", cwd=feature.root).code == 2


# -- state files -----------------------------------------------------------------------------------


def test_load_state_refuses_other_versions_and_garbage(tmp_path: Path) -> None:
    with pytest.raises(StateError, match="no run state"):
        load_state(tmp_path)
    (tmp_path / "state.json").write_text("{not json")
    with pytest.raises(StateError, match="not valid JSON"):
        load_state(tmp_path)
    (tmp_path / "state.json").write_text('{"schema_version": 99}')
    with pytest.raises(StateError, match="schema version 99"):
        load_state(tmp_path)


def test_ctrl_c_marks_the_run_interrupted_and_exits_130(feature: TempProject) -> None:
    import signal
    import subprocess
    import sys
    import time

    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "orchestrator",
            "run",
            "workflows/feature.yaml",
            "--task",
            "intr",
            "--param",
            "goal=x",
            "--offline",
            "--latency",
            "1",
        ],
        cwd=feature.root,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    folder = feature.root / "docs/ai/intr"
    deadline = time.monotonic() + 30
    while not (folder / "stages/plan.md").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130
    assert "SIGINT: stopping" in err and "Traceback" not in err
    assert "Continue with `orchestrate run workflows/feature.yaml --task intr --param goal=x --offline`" in out
    state = load_state(folder)
    assert state.status == "interrupted"
    assert state.stages["plan"].status == "succeeded"
    assert {state.stages[s].status for s in ("backend", "frontend")} == {"interrupted"}
    assert (folder / "stages/plan.md").exists()


def test_errors_in_files_given_by_path_are_named_as_typed(feature: TempProject, cli: CliRunner) -> None:
    feature.write("responses.yaml", "plan: [unclosed\n")
    result = run_offline(feature, cli, "--responses", "responses.yaml")
    assert result.code == 2
    assert result.err.startswith("Error: responses.yaml:2:1: invalid YAML")


def test_run_without_a_task_uses_the_workflows_name_and_says_so(feature: TempProject, cli: CliRunner) -> None:
    """`orchestrate run workflows/feature.yaml`, as the product describes it, runs (and resumes) a task."""
    result = cli("run", "workflows/feature.yaml", "--param", "goal=x", "--offline", cwd=feature.root)
    assert result.code == 0, result.err
    assert "note: task feature (the workflow's name); name another with --task NAME" in result.err
    assert (feature.root / "docs/ai/feature/state.json").is_file()
    again = cli("run", "workflows/feature.yaml", "--param", "goal=x", "--offline", cwd=feature.root)
    assert again.code == 0 and "unchanged since run" in again.out
    planned = cli("plan", "workflows/feature.yaml", "--param", "goal=x", cwd=feature.root)
    assert planned.code == 0 and planned.out.startswith("workflows/feature.yaml, task feature (")


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda folder: (folder / "state.json").write_bytes(b"\xff\xfe broken"), "is not UTF-8 text"),
        (lambda folder: (folder / "state.json").write_text("[" * 100_000 + "]" * 100_000), "nests too deeply"),
        (
            lambda folder: (folder / "state.json").write_text(
                (folder / "state.json").read_text().replace('"tries": 1', '"tries": "many"', 1)
            ),
            "does not hold a valid run state: stages.plan.tries",
        ),
        (
            lambda folder: (
                (folder / "events.jsonl")
                .open("a")
                .write('{"event": "stage_noted", "time": 1.0, "stage": "ghost", "text": "x", "by": ""}\n')
            ),
            "records stage 'ghost', which its state.json does not have",
        ),
        (
            lambda folder: (folder / "events.jsonl").open("a").write('{"event": "stage_noted", "time": \n'),
            "events.jsonl line ",
        ),
    ],
)
def test_a_damaged_state_folder_is_a_clear_error_with_a_way_out(
    damage: Any, message: str, feature: TempProject, cli: CliRunner
) -> None:
    run = ("run", "workflows/feature.yaml", "--task", "t", "--param", "goal=x", "--offline")
    assert cli(*run, cwd=feature.root).code == 0
    damage(feature.root / "docs/ai/t")
    for command in (("status", "t"), ("explain", "t", "plan"), run):
        result = cli(*command, cwd=feature.root)
        assert result.code == 2, (command, result.err)
        assert message in result.err and "Internal error" not in result.err
        assert "--force" in result.err  # the way out
    assert cli(*run, "--force", cwd=feature.root).code == 0


def test_workflow_state_md_shows_params_as_given(feature: TempProject, cli: CliRunner) -> None:
    goal = 'word_count("two  words") returns 3\nexpected 2'
    run = ("run", "workflows/feature.yaml", "--task", "t", "--param", f"goal={goal}", "--offline")
    assert cli(*run, cwd=feature.root).code == 0
    markdown = (feature.root / "docs/ai/t/workflow-state.md").read_text()
    assert '    word_count("two  words") returns 3\n    expected 2\n' in markdown  # spaces and the line break kept
