"""What a run spends on Claude, and how much of its prompt it reads from the cache.

A 10-stage workflow (4 agents with about 5k tokens of instructions each; one agent
runs 4 stages, two of them side by side; one stage is a 5-turn tool loop) runs
through the real SDK against the test suite's fake of the Messages API, which
applies the documented prompt-caching rules (breakpoints, minimum prefix length,
20-block lookback, an entry readable only once the reply that wrote it has begun)
and reports usage the way the API does. The same workflow also runs, in the same
process against a fresh fake, with the request shapes orchestrate sent before
(one system block per agent, no caching of tool-loop conversations, no warm-up).

    python benchmarks/bench_spend.py [--detail]

It prints: the share of instruction and tool tokens read from the cache (target
>= 80%), the share of tool-loop conversation tokens read from the cache (target
>= 60%), the run's cost next to the old shapes' (target >= 20% lower), what the
warm-up costs in makespan, ``plan``'s estimate / the actual cost, whether the
ledger matches the fake's reported usage priced by genai-prices (exactly), and a
budget check: 8 stages started together under a cap end at or under it.

Where a target is out of reach it says so: three of the 14 requests can read no
instructions from the cache whatever orchestrate does (the run's first request;
the tool-using agent's first, whose tool definitions come before its system
prompt; the audit's, whose output format changes the whole prefix), which caps
the first share near 79%; and output tokens, which caching can't touch, are about
half of what the run costs.
"""

from __future__ import annotations

import json
import os
import random
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from genai_prices import Usage as PriceUsage  # noqa: E402
from genai_prices import calc_price  # noqa: E402

from orchestrator.project import Project  # noqa: E402
from orchestrator.run.forecast import forecast_run  # noqa: E402
from orchestrator.run.options import RunRequest  # noqa: E402
from orchestrator.run.prepare import prepare_run, run_prepared  # noqa: E402
from orchestrator.runners.anthropic import AnthropicRunner, WorkspaceSetup, token_counter  # noqa: E402
from orchestrator.runners.warmup import CacheWarmer  # noqa: E402
from tests.fake_anthropic import DEFAULT_VERDICT, FakeAnthropic, Request  # noqa: E402

TTFT = 0.3  # seconds before a reply's first event (the warm-up waits for it)
GENERATION = 0.6  # seconds from the first event to the last
RNG = random.Random(20261202)

WORKFLOW = """
name: spend
description: Build a small billing service, with research, an estimate, a retro and an audit.
defaults: {model: claude-sonnet-5-5, max_parallel: 4, max_tokens: 4000}
context: [AGENTS.md]
agents:
  plan: {template: plan.md}
  build: {template: build.md}
  explorer: {template: explorer.md, tools: [read], max_turns: 8}
  auditor: {template: auditor.md}
stages:
  - {id: plan, agent: plan, prompt: "Plan a billing service: invoices, payments, refunds."}
  - {id: research, agent: explorer, needs: [plan], prompt: "Read the four design notes, then summarise them."}
  - {id: api, agent: build, needs: [plan], prompt: Build the HTTP API.}
  - {id: ui, agent: build, needs: [plan], prompt: Build the billing pages.}
  - {id: db, agent: build, needs: [api], prompt: Add the tables and migrations.}
  - {id: survey, agent: explorer, needs: [research], prompt: "List the open questions."}
  - {id: estimate, agent: plan, needs: [db, ui], prompt: Estimate what is left.}
  - {id: integrate, agent: build, needs: [estimate, survey], prompt: Join the parts and run every check.}
  - {id: retro, agent: plan, needs: [integrate], prompt: Write the retro.}
  - {id: audit, agent: auditor, needs: [retro]}
"""
NOTES = ("notes/invoices.md", "notes/payments.md", "notes/refunds.md", "notes/taxes.md")


def _words(count: int) -> str:
    vocabulary = ("invoice", "payment", "refund", "ledger", "tax", "customer", "currency", "webhook", "audit")
    return " ".join(RNG.choice(vocabulary) for _ in range(count))


def make_project(root: Path) -> None:
    (root / "workflows").mkdir(parents=True)
    (root / "workflows/spend.yaml").write_text(WORKFLOW)
    (root / "content/instructions").mkdir(parents=True)
    guidance = {name: _words(250) for name in ("plan", "build", "explorer", "auditor")}
    for name, base in (("plan", "plan"), ("build", "build"), ("explorer", "build"), ("auditor", "auditor")):
        block = "method" if name != "auditor" else "checklist"
        (root / f"content/instructions/{name}.md").write_text(
            f"{{% extends 'builtin/{base}.md' %}}{{% block {block} %}}{{{{ super() }}}}\n\n"
            f"## House rules for {name}\n\n{guidance[name]}\n{{% endblock %}}\n"
        )
    (root / "AGENTS.md").write_text("# Working on the billing service\n\n" + _words(900) + "\n")
    for note in NOTES:
        (root / note).parent.mkdir(exist_ok=True)
        (root / note).write_text(_words(350) + "\n")


def replies() -> dict[str, Any]:
    """Each stage's reply, drawn once: every run gets the same ones."""
    out: dict[str, Any] = {s: _words(RNG.randint(300, 900)) for s in ("plan", "api", "ui", "db", "survey")}
    out |= {s: _words(RNG.randint(300, 900)) for s in ("estimate", "integrate", "retro", "research")}
    out["audit"] = json.dumps({**DEFAULT_VERDICT, "summary": _words(400)})
    return out


def script(api: FakeAnthropic, texts: dict[str, Any]) -> None:
    def at(stage: str) -> str:
        return f": stage `{stage}` of workflow"

    for stage, text in texts.items():
        if stage != "research":
            api.reply(text, when=at(stage), delay=TTFT, stall=GENERATION)
    reads = [{"name": "read", "input": {"path": note}} for note in NOTES]
    api.script(at("research"), [*reads, texts["research"]])


class OldShapes(AnthropicRunner):
    """The request shapes of before: the agent's whole prompt in one system block with one breakpoint, no
    caching of a tool loop's conversation, no warm-up."""

    async def _exchange(self, stage: str, body: dict[str, Any], meter: Any) -> Any:
        old = dict(body)
        old["system"] = [
            {
                "type": "text",
                "text": "\n".join(b["text"] for b in body["system"]),
                "cache_control": {"type": "ephemeral"},
            }
        ]
        old.pop("cache_control", None)
        message = await super()._exchange(stage, old, meter)
        return message


@dataclass
class Result:
    cost: float
    makespan: float
    requests: list[Request]
    state: dict[str, Any]
    estimate: float | None = None


def run_once(
    root: Path, task: str, texts: dict[str, Any], *, old: bool = False, warmup: bool = True, forecast: bool = False
) -> Result:
    with FakeAnthropic() as api:
        script(api, texts)
        os.environ["ANTHROPIC_BASE_URL"] = api.url
        os.environ["ANTHROPIC_API_KEY"] = "bench-key-not-a-secret"
        prepared = prepare_run(root / "workflows/spend.yaml", Project(root), RunRequest(task=task))
        estimate = forecast_run(prepared, token_counter()).cost_usd if forecast else None
        runner = (OldShapes if old else AnthropicRunner)(
            workspace=WorkspaceSetup(root, {}, prepared.folder / "stages"), warmer=CacheWarmer(warmup and not old)
        )
        started = time.monotonic()
        run_prepared(prepared, runner=runner)
        makespan = time.monotonic() - started
        state = json.loads((prepared.folder / "state.json").read_text())
        answered = [r for r in api.requests if r.usage is not None]
    return Result(state["cost_usd"], makespan, answered, state, estimate)


def shares(result: Result) -> tuple[float, float]:
    prefix = sum(r.prefix_tokens for r in result.requests)
    from_cache = sum(min(r.cache_read, r.prefix_tokens) for r in result.requests)
    loop = [r for r in result.requests if ": stage `research` of workflow" in r.text()]
    conversation = sum(r.conversation_tokens for r in loop)
    conversation_cached = sum(max(0, r.cache_read - r.prefix_tokens) for r in loop)
    return from_cache / prefix, conversation_cached / conversation


def ledger_matches(result: Result) -> tuple[bool, str]:
    """Tokens as the fake reported them, and their cost as genai-prices prices each request on its own."""
    reported = [r.usage for r in result.requests]
    tokens = {
        "input": sum(u["input_tokens"] for u in reported),
        "output": sum(u["output_tokens"] for u in reported),
        "cache_read": sum(u.get("cache_read_input_tokens") or 0 for u in reported),
        "cache_write": sum(u.get("cache_creation_input_tokens") or 0 for u in reported),
    }
    when = datetime.fromisoformat(result.state["started"]).astimezone(UTC)
    priced = 0.0
    for request in result.requests:
        u = request.usage
        read, written = u.get("cache_read_input_tokens") or 0, u.get("cache_creation_input_tokens") or 0
        priced += float(
            calc_price(
                PriceUsage(
                    input_tokens=u["input_tokens"] + read + written,
                    cache_read_tokens=read,
                    cache_write_tokens=written,
                    output_tokens=u["output_tokens"],
                ),
                model_ref=request.body["model"],
                provider_id="anthropic",
                genai_request_timestamp=when,
            ).total_price
        )
    same = tokens == result.state["tokens"] and abs(priced - result.cost) < 1e-5
    return same, f"tokens {tokens} vs {result.state['tokens']}; ${priced:.6f} vs ${result.cost:.6f}"


def budget_check(root: Path) -> tuple[float, float, str]:
    """8 stages that start together under a cap: what the run spent."""
    folder = root / "budget"
    (folder / "workflows").mkdir(parents=True)
    stages = "".join(f"  - {{id: part{n}, agent: build, prompt: Part {n}.}}\n" for n in range(8))
    audit = "  - {id: audit, agent: auditor, needs: [" + ", ".join(f"part{n}" for n in range(8)) + "]}\n"
    (folder / "workflows/eight.yaml").write_text(
        "name: eight\ndefaults: {model: claude-sonnet-5-5, max_parallel: 8, max_tokens: 2000}\nstages:\n"
        + stages
        + audit
    )
    cap = 0.08
    with FakeAnthropic() as api:
        api.reply("done", when=lambda body: "Part " in json.dumps(body), usage={"output_tokens": 2000}, delay=0.2)
        os.environ["ANTHROPIC_BASE_URL"] = api.url
        prepared = prepare_run(folder / "workflows/eight.yaml", Project(folder), RunRequest(task="t", budget_usd=cap))
        outcome = run_prepared(prepared)
    return cap, outcome.cost_usd or 0.0, outcome.status


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "project"
        make_project(root)
        texts = replies()
        new = run_once(root, "new", texts, forecast=True)
        cold = run_once(root, "nowarm", texts, warmup=False)
        old = run_once(root, "old", texts, old=True)
        if "--detail" in sys.argv:  # each request: its stage, its prompt prefix and what the cache did with it
            for label, result in (("new", new), ("old", old)):
                for r in result.requests:
                    stage = r.text().split("stage `", 1)[1].split("`", 1)[0]
                    print(
                        f"  {label} {stage:10} prefix {r.prefix_tokens:6} read {r.cache_read:6} write {r.cache_write:6}"
                    )
        instructions, conversation = shares(new)
        old_instructions, old_conversation = shares(old)
        saving = 1 - new.cost / old.cost
        print(f"{len(new.requests)} requests, 10 stages, 4 agents; the fake's replies take {TTFT + GENERATION:.1f} s")
        print(
            f"instruction and tool tokens read from the cache: {instructions:.0%} "
            f"(old shapes {old_instructions:.0%}; target >= 80%: {'ok' if instructions >= 0.8 else 'MISSED'})"
        )
        print(
            f"tool-loop conversation tokens read from the cache: {conversation:.0%} "
            f"(old shapes {old_conversation:.0%}; target >= 60%: {'ok' if conversation >= 0.6 else 'MISSED'})"
        )
        print(
            f"cost of the run: ${new.cost:.4f}, old shapes ${old.cost:.4f}: {saving:.0%} lower "
            f"(target >= 20%: {'ok' if saving >= 0.2 else 'MISSED'})"
        )
        print(
            f"makespan: {new.makespan:.2f} s with the warm-up, {cold.makespan:.2f} s without "
            f"({new.makespan - cold.makespan:+.2f} s); cost without it ${cold.cost:.4f}"
        )
        if new.estimate is not None:
            ratio = new.estimate / new.cost
            print(
                f"plan's estimate ${new.estimate:.4f} / actual ${new.cost:.4f} = {ratio:.2f} "
                f"(target within 2x: {'ok' if 0.5 <= ratio <= 2 else 'MISSED'})"
            )
        same, detail = ledger_matches(new)
        print(f"ledger = the fake's usage priced by genai-prices: {'exact' if same else 'DIFFERS'} ({detail})")
        cap, spent, status = budget_check(Path(tmp))
        print(
            f"budget: 8 stages started together under ${cap:.2f} spent ${spent:.4f} and ended {status} "
            f"({'ok' if spent <= cap else 'OVERSHOT'})"
        )


if __name__ == "__main__":
    main()
