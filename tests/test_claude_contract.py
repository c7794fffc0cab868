"""Claude as it is today: the starter and the examples run against a fake that holds every request to the
published contract of their real default models; the ledger is genai-prices' figure for each request;
the prompt cache is warm; budgets hold with stages in parallel; batches; effort and thinking."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from .conftest import REPO, CliRunner, TempProject, started_until
from .fake_anthropic import DEFAULT_VERDICT, FakeAnthropic, Request
from .test_examples import _copy_example, readme_commands

GOAL = "Add a login page"


def at(stage: str) -> str:
    return f": stage `{stage}` of workflow"


def stage_of(request: Request) -> str:
    text = request.text()
    return text.split("# Task `", 1)[1].split("stage `", 1)[1].split("`", 1)[0] if "# Task `" in text else "?"


def answered(api: FakeAnthropic) -> list[Request]:
    """Every request the model answered: streamed, plain or batched."""
    return [r for r in api.requests if r.usage is not None]


def refused(api: FakeAnthropic) -> list[str]:
    return [f"{r.path} {r.status}" for r in api.requests if r.status is not None and r.status >= 400]


def state(root: Path, task: str) -> dict[str, Any]:
    return json.loads((root / "docs/ai" / task / "state.json").read_text())


def listed_price(usage: dict[str, int], model: str, when: str, batch: bool = False) -> float:
    """genai-prices' own figure for one request's usage, computed here without orchestrate's code."""
    from genai_prices import Usage, calc_price

    read, written = usage.get("cache_read_input_tokens") or 0, usage.get("cache_creation_input_tokens") or 0
    price = calc_price(
        Usage(
            input_tokens=usage["input_tokens"] + read + written,
            cache_read_tokens=read,
            cache_write_tokens=written,
            output_tokens=usage["output_tokens"],
        ),
        model_ref=model,
        provider_id="anthropic",
        genai_request_timestamp=datetime.fromisoformat(when).astimezone(UTC),
        price_context={"processing": "batch"} if batch else None,
    )
    return float(price.total_price)


def assert_ledger_is_the_listed_price(api: FakeAnthropic, saved: dict[str, Any]) -> None:
    """Every attempt's tokens are what the API reported for its request, and its cost genai-prices' price of
    that request. A stage's requests are sequential, so its attempts and requests pair up in order."""
    reported: dict[str, list[Request]] = {}
    for request in answered(api):
        reported.setdefault(stage_of(request), []).append(request)
    for sid, stage in saved["stages"].items():
        attempts, sent = stage["attempts"], reported.get(sid, [])
        assert len(attempts) == len(sent), sid
        for attempt, request in zip(attempts, sent, strict=True):
            usage = request.usage
            assert attempt["tokens"] == {
                "input": usage["input_tokens"],
                "output": usage["output_tokens"],
                "cache_read": usage.get("cache_read_input_tokens") or 0,
                "cache_write": usage.get("cache_creation_input_tokens") or 0,
            }, sid
            listed = listed_price(usage, stage["model"], attempt["started"], request.batch)
            assert attempt["cost_usd"] == pytest.approx(listed, abs=1e-6) and listed > 0, sid
        assert stage["cost_usd"] == pytest.approx(sum(a["cost_usd"] for a in attempts), abs=1e-6), sid


# -- the starter and the examples, with their real default models ------------------------------------------


def test_the_init_starter_runs_to_success_on_claude_opus_and_sonnet_5_5(
    cli: CliRunner, api: FakeAnthropic, tmp_path: Path
) -> None:
    root = tmp_path / "shop"
    root.mkdir()
    assert cli("init", cwd=root).code == 0
    result = cli("run", "workflows/feature.yaml", "--task", "add-login", "--param", f"goal={GOAL}", cwd=root)
    assert result.code == 0, result.out + result.err
    assert refused(api) == []
    models = {stage_of(r): r.body["model"] for r in api.messages()}
    assert models == {
        "plan": "claude-opus-5-5",
        "backend": "claude-sonnet-5-5",
        "frontend": "claude-sonnet-5-5",
        "integrate": "claude-sonnet-5-5",
        "audit": "claude-opus-5-5",
    }
    (audit,) = [r for r in api.messages() if stage_of(r) == "audit"]
    assert "tool_choice" not in audit.body and audit.body["output_config"]["format"]["type"] == "json_schema"
    saved = state(root, "add-login")
    assert saved["status"] == "succeeded" and saved["audit"]["verdict"] == "pass"
    assert_ledger_is_the_listed_price(api, saved)
    assert saved["cost_usd"] == pytest.approx(sum(s["cost_usd"] for s in saved["stages"].values()), abs=1e-6)


@pytest.mark.parametrize("example", ["feature", "decompose", "pipeline"])
def test_the_readme_real_run_of_an_example_succeeds_against_the_contract(
    example: str, cli: CliRunner, api: FakeAnthropic, tmp_path: Path
) -> None:
    """The examples without tools run as their README says, on their own default models. (bugfix and
    docs-review act through tools: test_examples drives them with scripted tool calls against this fake.)"""
    _copy_example(example, tmp_path)
    [command] = [c for c in readme_commands(REPO / "examples" / example / "README.md") if c.real and c.args[0] == "run"]
    result = cli(*command.args, cwd=tmp_path / command.folder)
    assert result.code == 0, result.out + result.err
    assert refused(api) == []
    task = command.args[command.args.index("--task") + 1]
    saved = state(tmp_path / command.folder, task)
    assert saved["status"] == "succeeded"
    assert_ledger_is_the_listed_price(api, saved)


def test_every_model_id_in_the_templates_examples_and_docs_is_current_and_priced() -> None:
    import re

    from orchestrator.cost import has_price
    from orchestrator.models import facts_for

    places = [REPO / "README.md", REPO / "orchestrator/scaffold.py", *(REPO / "orchestrator/workflow").glob("*.py")]
    for folder in ("docs", "examples", "workflows", "orchestrator/defaults"):
        places += [p for p in (REPO / folder).rglob("*") if p.suffix in (".md", ".yaml", ".py") and p.is_file()]
    seen: dict[str, str] = {}
    for path in places:
        for model in re.findall(r"claude-(?:opus|sonnet|haiku|fable|mythos)-[0-9][0-9a-z-]*[0-9]", path.read_text()):
            seen.setdefault(model, str(path.relative_to(REPO)))
    assert "claude-sonnet-5-5" in seen and "claude-opus-5-5" in seen
    for model, where in seen.items():
        facts = facts_for(model)
        # A retired id may be named where the docs say it is retired; no other id the API doesn't know may be.
        assert facts.known or facts.retired, f"{where}: {model} is not a model the API serves"
        assert has_price(model), f"{where}: {model} has no price"


# -- a warm cache ----------------------------------------------------------------------------------------

TWINS = """
name: twins
description: Two parts built side by side by one agent, then audited.
defaults: {model: claude-sonnet-5-5, max_parallel: 2}
stages:
  - {id: left, agent: build, prompt: Build the left part.}
  - {id: right, agent: build, prompt: Build the right part.}
  - {id: audit, agent: auditor, needs: [left, right]}
"""


@pytest.mark.parametrize("warmup", [True, False])
def test_stages_that_start_together_read_their_agents_prompt_from_the_cache_once_one_has_written_it(
    warmup: bool, cli: CliRunner, api: FakeAnthropic, project: TempProject
) -> None:
    project.workflow(TWINS if warmup else TWINS.replace("max_parallel: 2}", "max_parallel: 2, cache_warmup: false}"))
    api.reply("left done", when=at("left"), delay=0.3)
    api.reply("right done", when=at("right"), delay=0.3)
    result = cli("run", "workflows/feature.yaml", "--task", "t", cwd=project.root)
    assert result.code == 0, result.out
    left, right = (next(r for r in api.messages() if stage_of(r) == sid) for sid in ("left", "right"))
    prefix = left.prefix_tokens
    assert prefix >= 512 and right.prefix_tokens == prefix  # one agent: one prompt prefix
    if warmup:  # one wrote it; the other waited for that reply to begin, then read all of it
        assert sorted([left.cache_read, right.cache_read]) == [0, prefix]
        assert sorted([left.cache_write, right.cache_write]) == [0, prefix]
    else:  # both sent at once: both paid to write the same prefix
        assert left.cache_read == right.cache_read == 0
        assert left.cache_write == right.cache_write == prefix


def test_a_tool_loop_reads_its_conversation_from_the_cache_turn_to_turn(
    cli: CliRunner, api: FakeAnthropic, project: TempProject
) -> None:
    project.workflow(
        """
name: look
agents: {reader: {template: build.md, tools: [read]}}
stages:
  - {id: look, agent: reader, prompt: "Read README.md four times, then say done."}
  - {id: audit, agent: auditor, needs: [look]}
"""
    )
    project.write("README.md", "# Project\n\n" + "A line of the readme.\n" * 200)
    read = {"name": "read", "input": {"path": "README.md"}}
    api.script(at("look"), [read, read, read, read, "done"])
    assert cli("run", "workflows/feature.yaml", "--task", "t", cwd=project.root).code == 0
    turns = [r for r in api.messages() if stage_of(r) == "look"]
    assert len(turns) == 5
    assert all(t.body["cache_control"] == {"type": "ephemeral"} for t in turns)
    conversation = sum(t.conversation_tokens for t in turns)
    from_cache = sum(max(0, t.cache_read - t.prefix_tokens) for t in turns)
    assert from_cache / conversation > 0.6  # every turn but the first reads what the turns before it wrote


def test_editing_one_stages_description_changes_only_the_prompts_that_show_it(project: TempProject) -> None:
    from orchestrator.compiler import compile_workflow
    from orchestrator.project import Project

    from .conftest import FEATURE

    def prompts() -> dict[str, str]:
        compiled = compile_workflow(project.root / "workflows/feature.yaml", Project(project.root))
        return {a.agent: a.instructions for a in compiled.rendered if not a.coordinator}

    project.workflow(FEATURE)
    before = prompts()
    project.workflow(FEATURE.replace("  - id: frontend\n", "  - id: frontend\n    description: The login form.\n"))
    after = prompts()
    changed = sorted(agent for agent in before if before[agent] != after[agent])
    assert changed == ["frontend", "plan"]  # the stage's own agent, and the plan that assigns it work


# -- spend that can't overshoot, and half price for work that can wait --------------------------------------

EIGHT = """
name: eight
defaults: {model: claude-sonnet-5-5, max_parallel: 8, max_tokens: 2000}
stages:
"""


def test_eight_parallel_stages_under_a_budget_end_at_or_under_it(
    cli: CliRunner, api: FakeAnthropic, project: TempProject
) -> None:
    stages = "".join(f"  - {{id: part{n}, agent: build, prompt: Part {n}.}}\n" for n in range(8))
    project.workflow(
        EIGHT + stages + "  - {id: audit, agent: auditor, needs: [" + ", ".join(f"part{n}" for n in range(8)) + "]}\n"
    )
    api.reply("done", when=lambda body: "Part " in json.dumps(body), usage={"output_tokens": 2000}, delay=0.2)
    result = cli("run", "workflows/feature.yaml", "--task", "t", "--budget", "0.08", cwd=project.root)
    assert result.code == 4, result.out
    saved = state(project.root, "t")
    assert saved["status"] == "budget_exceeded"
    assert 0.06 < saved["cost_usd"] <= 0.08  # each part costs about $0.02 of its 2,000 output tokens
    done = [sid for sid, stage in saved["stages"].items() if stage["status"] == "succeeded"]
    assert 3 <= len(done) <= 4 and saved["stages"]["audit"]["status"] == "pending"
    assert saved["cost_usd"] == pytest.approx(sum(s["cost_usd"] or 0 for s in saved["stages"].values()), abs=1e-6)


BATCHED = """
name: batched
defaults: {model: claude-sonnet-5-5}
stages:
  - {id: summary, agent: build, batch: true, prompt: Summarise the project in a paragraph.}
  - {id: audit, agent: auditor, needs: [summary]}
"""


def interrupted_while_batched(api: FakeAnthropic, project: TempProject) -> tuple[list[str], dict[str, str]]:
    """Run BATCHED as a user would and press Ctrl-C once its batch is submitted (and still in progress);
    the command and environment to run it again."""
    project.workflow(BATCHED)
    api.batch_delay = 30.0  # the batch stays in progress until the test lets it end
    env = {**os.environ, "ANTHROPIC_BASE_URL": api.url, "ANTHROPIC_API_KEY": "test-key-not-a-secret"}
    command = [sys.executable, "-m", "orchestrator", "run", "workflows/feature.yaml", "--task", "t"]
    first = started_until(command, project.root, env, "batch_submitted")
    first.send_signal(signal.SIGINT)
    assert first.wait(30) == 130
    return command, env


def test_a_batch_stage_costs_half_and_an_interrupted_run_collects_its_batch_instead_of_paying_again(
    api: FakeAnthropic, project: TempProject
) -> None:
    api.reply("A paragraph.", when=at("summary"), usage={"input_tokens": 100_000, "output_tokens": 1000})
    command, env = interrupted_while_batched(api, project)
    saved = state(project.root, "t")
    assert saved["stages"]["summary"]["status"] == "interrupted"
    batch = saved["stages"]["summary"]["batch"]
    assert batch["id"] in api.batches and len(api.batches) == 1

    api.batch_delay = 0.0
    second = subprocess.run(command, cwd=project.root, env=env, capture_output=True, text=True, timeout=60)
    assert second.returncode == 0, second.stdout + second.stderr
    assert len(api.batches) == 1  # collected the batch it had paid for, sent no second one
    saved = state(project.root, "t")
    summary = saved["stages"]["summary"]
    assert summary["status"] == "succeeded" and summary["attempts"][-1]["batch"] is True
    # The batch price: half of Sonnet 5.5's $2 / $10 (100,000 in and 1,000 out: $0.105, on 2026-12-01).
    (batched,) = [r for r in answered(api) if r.batch]
    when = summary["attempts"][-1]["started"]
    assert summary["cost_usd"] == pytest.approx(listed_price(batched.usage, "claude-sonnet-5-5", when, True), abs=1e-6)
    full = listed_price(batched.usage, "claude-sonnet-5-5", when)
    assert summary["cost_usd"] == pytest.approx(full / 2, abs=1e-6)


def test_a_batch_an_earlier_run_left_that_ended_without_a_reply_is_sent_again(
    api: FakeAnthropic, project: TempProject
) -> None:
    command, env = interrupted_while_batched(api, project)
    # The batch then ends with its request errored (an overloaded API): not billed, and no reply.
    api.reply("overloaded", status=529, error="overloaded_error", when=at("summary"), times=1)
    api.batch_delay = 0.0
    second = subprocess.run(command, cwd=project.root, env=env, capture_output=True, text=True, timeout=60)
    assert second.returncode == 0, second.stdout + second.stderr
    assert len(api.batches) == 2  # the failed batch was not the stage's answer: a new one was sent
    summary = state(project.root, "t")["stages"]["summary"]
    assert summary["status"] == "succeeded"
    assert [a["error"] is None for a in summary["attempts"]][-2:] == [False, True]
    assert summary["batch"]["id"] != next(iter(api.batches))


# -- effort, thinking, and what a model refuses -----------------------------------------------------------


def test_effort_and_thinking_reach_the_api_in_the_shape_each_model_takes(
    cli: CliRunner, api: FakeAnthropic, project: TempProject
) -> None:
    project.workflow(
        """
name: shaped
defaults: {model: claude-sonnet-5-5}
agents:
  quick: {template: build.md, effort: low, thinking: "off"}
  deep: {template: plan.md, model: claude-opus-5-5, effort: max}
stages:
  - {id: fast, agent: quick, prompt: Rename a variable.}
  - {id: hard, agent: deep, prompt: Design the schema.}
  - {id: audit, agent: auditor, needs: [fast, hard]}
"""
    )
    result = cli("run", "workflows/feature.yaml", "--task", "t", cwd=project.root)
    assert result.code == 0, result.out
    sent = {stage_of(r): r.body for r in api.messages()}
    assert sent["fast"]["output_config"] == {"effort": "low"}
    assert sent["fast"]["thinking"] == {"type": "between_tools"}  # how Sonnet 5.5 turns thinking off
    assert sent["hard"]["output_config"] == {"effort": "max"} and "thinking" not in sent["hard"]
    assert "effort" not in sent["audit"]["output_config"]  # unset: the model's own default
    claude = (project.root / "output/claude/agents/shaped-quick.md").exists()
    assert not claude  # run compiles nothing; the compiled files carry effort (test_compile)


@pytest.mark.parametrize(
    ("agent", "message"),
    [
        (
            "{model: claude-opus-5-5, thinking: 'off'}",
            "Claude Opus 5.5 always thinks; its thinking can't be turned off",
        ),
        ("{model: claude-sonnet-4-6, effort: xhigh}", "Claude Sonnet 4.6 takes effort low, medium, high, max, not"),
        ("{model: claude-sonnet-4-5}", "model 'claude-sonnet-4-5' was retired on 2026-11-30: requests to it fail"),
        ("{model: claude-opus-5-5, opencode: {temperature: 0.2}}", "Claude Opus 5.5 refuses temperature"),
    ],
)
def test_a_setting_the_model_refuses_is_a_clear_error_at_its_line_before_any_request(
    agent: str, message: str, cli: CliRunner, api: FakeAnthropic, project: TempProject
) -> None:
    project.workflow(f"name: w\nstages:\n  - {{id: a, agent: worker}}\nagents:\n  worker: {agent}\n", name="w")
    for command in (("validate", "workflows/w.yaml"), ("run", "workflows/w.yaml", "--task", "t")):
        result = cli(*command, cwd=project.root)
        assert result.code == 2, result.out + result.err
        assert "Traceback" not in result.err
        first = result.err.splitlines()[0]
        assert first.startswith("Error: workflows/w.yaml:5:") and message in first, first
    assert api.requests == []


COUNTED = """
name: w
stages:
  - id: a
    agent: build
    prompt: Count them.
    output_schema:
      type: object
      properties: {count: {type: integer, minimum: 1}}
      required: [count]
      additionalProperties: false
  - {id: audit, agent: auditor, needs: [a]}
"""


def test_a_structured_reply_that_breaks_what_the_api_cant_enforce_is_sent_back_once(
    cli: CliRunner, api: FakeAnthropic, project: TempProject
) -> None:
    """Structured outputs compile the schema without `minimum`; the stage's own schema still holds it."""
    project.workflow(COUNTED, name="w")
    api.reply(json.dumps({"count": 0}), when=at("a"), times=1)
    api.reply(json.dumps({"count": 3}), when=at("a"))
    result = cli("run", "workflows/w.yaml", "--task", "t", cwd=project.root)
    assert result.code == 0, result.out
    tries = [r for r in api.messages() if stage_of(r) == "a"]
    assert len(tries) == 2  # retries: 0, yet one more try, told what was wrong
    sent = tries[0].body["output_config"]["format"]["schema"]["properties"]["count"]
    assert "minimum" not in sent and "{minimum: 1}" in sent["description"]
    assert "Your previous try broke the stage's contract" in tries[1].text()
    assert "count: 0 is less than the minimum of 1" in tries[1].text()
    assert json.loads((project.root / "docs/ai/t/stages/a.json").read_text()) == {"count": 3}


def test_a_schema_structured_outputs_cant_express_is_asked_for_in_the_text_and_a_bad_reply_sent_back_once(
    cli: CliRunner, api: FakeAnthropic, project: TempProject
) -> None:
    closed = (
        "properties: {count: {type: integer, minimum: 1}}\n      required: [count]\n      additionalProperties: false"
    )
    project.workflow(COUNTED.replace(closed, "additionalProperties: {type: integer}"), name="w")
    api.reply("There are three of them.", when=at("a"), times=1)
    api.reply('{"apples": 3}', when=at("a"))
    result = cli("run", "workflows/w.yaml", "--task", "t", cwd=project.root)
    assert result.code == 0, result.out
    tries = [r for r in api.messages() if stage_of(r) == "a"]
    assert len(tries) == 2 and "output_config" not in tries[0].body  # an open map: no format, the prompt asks
    assert "## Output format" in tries[0].text()
    assert "its structured output is not JSON" in tries[1].text()


SMALL = "name: w\nstages:\n  - {id: a, agent: build, prompt: Do it.}\n  - {id: audit, agent: auditor, needs: [a]}\n"


def test_x_should_retry_is_obeyed_both_ways(cli: CliRunner, api: FakeAnthropic, project: TempProject) -> None:
    project.workflow(SMALL, name="w")
    api.reply("busy", status=529, error="overloaded_error", headers={"x-should-retry": "false"}, when=at("a"), times=1)
    result = cli("run", "workflows/w.yaml", "--task", "t", cwd=project.root)
    assert result.code == 1 and len([r for r in api.messages() if stage_of(r) == "a"]) == 1  # not retried
    api.reply(
        "conflict", status=400, error="invalid_request_error", headers={"x-should-retry": "true"}, times=1, when=at("a")
    )
    result = cli("run", "workflows/w.yaml", "--task", "t", cwd=project.root)
    assert result.code == 0, result.out  # retried on the API's word, though a 400 is not retried otherwise


# -- plan estimates you can act on ---------------------------------------------------------------------------


def _prose(seed: int, chars: int) -> str:
    words = ("the", "login", "form", "checks", "input", "and", "stores", "a", "session", "token", "tests", "cover")
    out: list[str] = []
    while sum(len(w) + 1 for w in out) < chars:
        seed = (seed * 1103515245 + 12345) % 2**31
        out.append(words[seed % len(words)])
    return " ".join(out)


@pytest.mark.parametrize("example", ["feature", "decompose", "pipeline"])
def test_plans_estimate_is_within_twice_the_actual_cost_of_the_run(
    example: str, cli: CliRunner, api: FakeAnthropic, tmp_path: Path
) -> None:
    _copy_example(example, tmp_path)
    [command] = [c for c in readme_commands(REPO / "examples" / example / "README.md") if c.real and c.args[0] == "run"]
    folder = tmp_path / command.folder
    # Replies of the lengths real stages write: reports of 500 to 1,800 tokens, a verdict with its evidence.
    for n, stage in enumerate(("plan", "backend", "frontend", "integrate", "build", "docs")):
        api.reply(
            _prose(n, 2000 + 1300 * (n % 5)),
            when=lambda body, s=stage: f"stage `{s}" in json.dumps(body) and "output_config" not in body,
        )
    api.reply(json.dumps({**DEFAULT_VERDICT, "summary": _prose(7, 3000)}), when=at("audit"))
    tasks = [{"id": t, "title": _prose(i, 1500), "files": [f"{t}.py"]} for i, t in enumerate(("api", "form", "tests"))]
    api.reply(json.dumps({"tasks": tasks}), when=at("plan"))
    plan = cli("plan", *command.args[1:], "--json", cwd=folder)
    assert plan.code == 0, plan.err
    forecast = json.loads(plan.out)
    assert forecast["counted"] is True and api.messages() == []
    low, high = forecast["cost_range"]
    assert high / low <= 4.0001
    assert cli(*command.args, cwd=folder).code == 0
    task = command.args[command.args.index("--task") + 1]
    actual = state(folder, task)["cost_usd"]
    ratio = forecast["cost_usd"] / actual
    assert 0.5 <= ratio <= 2.0, f"estimate ${forecast['cost_usd']:.4f}, actual ${actual:.4f}"
