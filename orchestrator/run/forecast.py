"""``orchestrate plan``: what a run would do and cost, without calling any model.

For each stage in plan order: will it run, keep its earlier output, or wait at
a gate, and why; how big its prompt is; its tokens; and what it should cost,
as a point estimate with a range of half to twice it.

The estimate follows the run as it will happen: each request's input is
counted by the token-counting endpoint when a counter is given (free, with an
API key) and guessed from its length otherwise; the prompt cache is followed
stage by stage (the workflow brief written once and read by every agent after,
an agent's instructions written by its first stage and read by the rest, a
tool loop reading its conversation turn to turn, parallel stages warming the
cache first unless ``cache_warmup`` is off); outputs not yet made are taken
at a typical size. Replies are taken at typical lengths (``TYPICAL``), the part
no one can know before the run: that is what the range is for.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from ..api_request import request_body
from ..cost import estimate
from ..events import StageSkipped
from ..fingerprint import Recalled
from ..models import facts_for
from ..runners import StageRequest, Usage
from ..runners.registry import kind_of
from .options import PreparedRun
from .outcomes import Decision, Progress, StageOutcome
from .request import decide_condition, request_builder
from .scheduler import Scheduler
from .session import load_previous, start_session

__all__ = ["TYPICAL", "Forecast", "StageForecast", "TokenCounter", "forecast_run"]

Action = Literal["run", "keep", "wait", "skip"]
# Counts the input tokens of request bodies (None where it could not): the token-counting endpoint.
TokenCounter = Callable[[Sequence[dict[str, Any]]], list[int | None]]


@dataclass(frozen=True)
class Typical:
    """What a reply is taken to be before it exists (tokens)."""

    reply: int = 1_000  # a stage's final reply: a plan, a report, a verdict
    tool_turn: int = 150  # a turn that calls tools
    tool_results: int = 400  # what a turn's tool results add to the conversation
    turns: int = 6  # turns of a tool loop (at most its max_turns)
    instances: int = 3  # instances of a foreach stage, until its items are known
    chars_per_token: float = 4.0  # for a prompt that is not counted


TYPICAL = Typical()
RANGE = (0.5, 2.0)  # the range around a point estimate


@dataclass(frozen=True)
class StageForecast:
    stage: str
    wave: int  # from 1
    action: Action  # run: calls the model; keep: earlier output kept; wait: a gate that needs a person; skip: if
    reason: str
    prompt_chars: int | None  # system prompt + user message, as far as known now
    tokens: tuple[int, int] | None  # input (all requests, cached or not) and output, expected
    cost_usd: float | None  # expected
    cached_tokens: int = 0  # of the input, expected to be read from the prompt cache
    counted: bool = False  # input counted by the API rather than guessed

    @property
    def cost_range(self) -> tuple[float, float] | None:
        if self.cost_usd is None:
            return None
        return (round(self.cost_usd * RANGE[0], 6), round(self.cost_usd * RANGE[1], 6))


@dataclass(frozen=True)
class Forecast:
    stages: list[StageForecast]
    cost_usd: float | None
    budget_usd: float | None
    spent_usd: float
    resume: bool
    changes: list[str] = field(default_factory=list)
    counted: bool = False

    @property
    def cost_range(self) -> tuple[float, float] | None:
        if self.cost_usd is None:
            return None
        return (round(self.cost_usd * RANGE[0], 6), round(self.cost_usd * RANGE[1], 6))

    @property
    def unknown_cost(self) -> str:
        """Why the total is unknown, in words ("" when it is known)."""
        if self.cost_usd is not None:
            return ""
        if any(f.action == "run" and f.cost_usd is None and f.prompt_chars is None for f in self.stages):
            return "unknown until the run (fan-out or conditions decided by upstream outputs)"
        return "unknown (a model has no price; add pricing: to the workflow)"

    @property
    def budget_check(self) -> str:
        if self.budget_usd is None:
            return ""
        if self.cost_range is None:
            return self.unknown_cost
        left = self.budget_usd - self.spent_usd
        low, high = self.cost_range
        if low > left:
            return f"will exceed it: at least ${low:.4f} more, ${left:.4f} left"
        if high > left:
            return f"may exceed it: up to ${high:.4f} more, ${left:.4f} left"
        return f"fits: up to ${high:.4f} more, ${left:.4f} left"


@dataclass
class _Request:
    """One stage's request as the estimate sees it: tokens of each part of the prompt."""

    sid: str
    request: StageRequest
    body: dict[str, Any]
    tools: int
    brief: int
    system: int
    message: int
    counted: bool = False
    copies: int = 1  # a fan-out's instances, each one such request


class _CacheModel:
    """Which prompt prefixes the run will have written, stage by stage."""

    def __init__(self, warmup: bool) -> None:
        self.warmup = warmup
        self.written: set[str] = set()
        self.this_wave: set[str] = set()

    def next_wave(self) -> None:
        self.written |= self.this_wave
        self.this_wave = set()

    def _has(self, key: str) -> bool:
        return key in self.written or (self.warmup and key in self.this_wave)

    def first_request(self, part: _Request) -> tuple[int, int]:
        """Tokens of the prefix read from and written to the cache by the stage's first request."""
        minimum = facts_for(part.request.model).cache_min_tokens
        fmt = json.dumps((part.body.get("output_config") or {}).get("format"), sort_keys=True)
        base = json.dumps([part.request.model, part.body.get("tools")], sort_keys=True)
        brief_key = base + "\0" + part.request.brief + "\0" + fmt
        agent_key = brief_key + "\0" + part.request.system
        to_brief = part.tools + part.brief
        to_system = to_brief + part.system
        read = write = 0
        if self._has(agent_key) and to_system >= minimum:
            read = to_system
        elif part.request.brief and self._has(brief_key) and to_brief >= minimum:
            read = to_brief
            write = to_system - to_brief if to_system >= minimum else 0
        elif to_system >= minimum:
            write = to_system
        if part.request.brief and to_brief >= minimum:
            self.this_wave.add(brief_key)
        if to_system >= minimum:
            self.this_wave.add(agent_key)
        return read, write


def forecast_run(prepared: PreparedRun, counter: TokenCounter | None = None) -> Forecast:
    """What ``orchestrate run`` would do now for this task (reads the state folder, writes nothing).

    The run's own ``Scheduler`` orders the stages, decides each ``if`` it can decide now, and applies the
    gates' recorded decisions; each stage it starts is looked at without running it (``_Dry``)."""
    plan = prepared.compiled.plan
    workflow = plan.workflow
    previous = load_previous(prepared)
    session = start_session(prepared, previous, "forecast", dry=True)
    dry = _Dry(prepared, session)
    scheduler = Scheduler(
        plan,
        round=session.round,
        feedback=session.feedback,
        approve_all=prepared.approve_all,
        condition=dry.condition,
        expand=lambda sid, progress: None,  # items are known only once the run has made them
    )
    dry.progress = scheduler.progress
    out: list[StageForecast | _Request] = []
    while True:
        sid = scheduler.next(0.0)
        for event in scheduler.drain():
            if isinstance(event, StageSkipped) and event.conditional:
                wave = plan.wave_of(event.stage) + 1
                out.append(StageForecast(event.stage, wave, "skip", event.reason, None, None, 0.0))
        if sid is None:
            break
        item, outcome, decision = dry.look(sid)
        out.append(item)
        if decision is not None:
            outcome = scheduler.gate(sid, outcome, outcome.fingerprint, "", decision, 0.0)
        scheduler.settle(sid, outcome, 0.0)
        if sid in dry.unknown:  # released for what follows, but its output is not known before the run
            scheduler.outcomes[sid] = StageOutcome("pending")
    waiting = dry.waiting
    parts = [item for item in out if isinstance(item, _Request)]
    counted = _count(parts, counter) if counter is not None and parts else False
    cache = _CacheModel(workflow.defaults.cache_warmup)
    stages: list[StageForecast] = []
    wave_now = 0
    for item in out:
        if isinstance(item, StageForecast):
            stages.append(item)
            continue
        wave, reason, action = waiting[item.sid]
        if wave != wave_now:
            cache.next_wave()
            wave_now = wave
        stages.append(_estimate(prepared, item, wave, action, reason, cache))
    total: float | None = 0.0
    for f in stages:
        if f.action == "run":
            total = None if f.cost_usd is None or total is None else round(total + f.cost_usd, 6)
    return Forecast(
        stages=stages,
        cost_usd=total,
        budget_usd=prepared.budget_usd,
        spent_usd=session.spent_usd,
        resume=session.resume,
        changes=session.changes,
        counted=counted,
    )


class _Dry:
    """Each stage the scheduler starts, looked at without running it: kept, run (and its request's parts),
    waiting at a gate, or unknown until upstream outputs exist."""

    def __init__(self, prepared: PreparedRun, session: Any) -> None:
        self.prepared = prepared
        self.plan = prepared.compiled.plan
        self.session = session
        self.build = request_builder(prepared, session.rejected, session.workspace)
        self.decide = decide_condition(prepared)
        self.progress: Progress | None = None
        self.unknown: set[str] = set()  # stages whose output this run will produce anew (or not at all)
        self.undecided: set[str] = set()  # an ``if`` that reads outputs this run has not made yet
        self.waiting: dict[str, tuple[int, str, Action]] = {}  # stage -> (wave, reason, action)

    def _reads(self, sid: str) -> set[str]:
        plan, stage = self.plan, self.plan.stages[sid]
        reads = set(plan.order) - {sid} if sid == plan.audit_stage else set(stage.needs)
        return reads | (self.prepared.compiled.renderer.checker.stages_read(sid) if stage.kind == "agent" else set())

    def condition(self, sid: str, progress: Progress) -> str | None:
        """A stage's ``if``, decided now when it reads only params or outputs at hand (as the run will)."""
        stage = self.plan.stages[sid]
        waiting_on = [n for n in self.plan.order if n in self._reads(sid) and n in self.unknown]
        if waiting_on and "stages" in (stage.condition or ""):
            self.undecided.add(sid)
            return None
        try:
            return self.decide(sid, progress)
        except Exception:  # it will be decided (and reported) by the run
            return None

    def look(self, sid: str) -> tuple[StageForecast | _Request, StageOutcome, Decision | None]:
        """The stage's forecast, the outcome the scheduler is told, and a gate decision to apply."""
        plan, session, prepared = self.plan, self.session, self.prepared
        assert self.progress is not None
        stage = plan.stages[sid]
        wave = plan.wave_of(sid) + 1
        reads = self._reads(sid)
        waiting_on = [n for n in plan.order if n in reads and n in self.unknown]
        released = StageOutcome("succeeded")
        self.unknown.add(sid)  # unless kept, below
        if stage.foreach is not None or sid in self.undecided:
            if stage.foreach is not None:
                what = f"fans out over items known once its needs are done (taken as {TYPICAL.instances})"
            else:
                what = "runs if its condition holds when its needs are done (counted as running)"
            if stage.kind != "agent":
                return StageForecast(sid, wave, "run", what, None, None, 0.0 if stage.run else None), released, None
            self.waiting[sid] = (wave, what, "run")
            return _stand_in(prepared, sid, len(reads) * TYPICAL.reply), released, None
        try:
            stage_input = self.build(sid, self.progress)
        except Exception as exc:  # a prompt that needs outputs this run has not made yet
            message = getattr(exc, "message", str(exc))
            if stage.kind != "agent":
                why = f"can't be built yet: {message}"
                return StageForecast(sid, wave, "run", why, None, None, None), released, None
            self.waiting[sid] = (wave, "its prompt needs outputs this run will make", "run")
            return _stand_in(prepared, sid, len(reads) * TYPICAL.reply), released, None
        request = stage_input.request
        if request is not None and request.command is not None:
            recalled_run = session.memo.recall(sid, stage_input.fingerprint, stage_input.inputs, self.unknown - {sid})
            if isinstance(recalled_run, Recalled) and not waiting_on:
                self.unknown.discard(sid)
                kept = StageOutcome("succeeded", output=recalled_run.output)
                return StageForecast(sid, wave, "keep", recalled_run.reason, None, None, 0.0), kept, None
            why = f"runs `{request.command.command}` (no model, no cost)"
            return StageForecast(sid, wave, "run", why, None, None, 0.0), released, None
        if waiting_on:
            obstacle = session.memo.obstacle(sid)
            reason = obstacle or f"upstream {', '.join(waiting_on)} will run (kept if its output comes out the same)"
            if request is None or stage.kind != "agent":
                return StageForecast(sid, wave, "wait", reason, None, None, None), released, None
            self.waiting[sid] = (wave, reason, "run")
            return _parts(sid, request, len(waiting_on) * TYPICAL.reply), released, None
        recalled = session.memo.recall(sid, stage_input.fingerprint, stage_input.inputs, self.unknown - {sid})
        if isinstance(recalled, Recalled):
            kept = StageOutcome("succeeded", output=recalled.output, data=recalled.data)
            kept.fingerprint = stage_input.fingerprint
            decision = None
            if stage.gated:
                decision = session.approvals.decision(sid, stage_input.fingerprint, recalled.output_sha256)
                if decision is None and not prepared.approve_all:
                    return StageForecast(sid, wave, "wait", "waits for approval", None, None, None), released, None
                if decision is not None and not decision.approved:
                    return StageForecast(sid, wave, "wait", "was rejected", None, None, None), released, None
                decision = decision or Decision(True, "", "--approve-all")
            self.unknown.discard(sid)
            return StageForecast(sid, wave, "keep", recalled.reason, None, None, 0.0), kept, decision
        if request is None:
            return StageForecast(sid, wave, "wait", "a gate: waits for approval", None, None, None), released, None
        self.waiting[sid] = (wave, recalled, "run")
        return _parts(sid, request, 0), released, None


def _tokens(text: str) -> int:
    return round(len(text) / TYPICAL.chars_per_token)


def _parts(sid: str, request: StageRequest, pending_outputs: int) -> _Request:
    """The request's parts, in guessed tokens; ``pending_outputs`` tokens of upstream outputs to come."""
    body = request_body(request, _tool_stand_ins(request))
    tools = _tokens(json.dumps(body.get("tools") or [])) if request.tools else 0
    return _Request(
        sid,
        request,
        body,
        tools,
        _tokens(request.brief),
        _tokens(request.system),
        _tokens(request.prompt) + pending_outputs,
    )


def _stand_in(prepared: PreparedRun, sid: str, pending_outputs: int) -> _Request:
    """A stage whose request can't be built before the run (a fan-out, a prompt reading outputs to come):
    its agent's instructions as they are, its prompt template, and upstream outputs at a typical size."""
    plan = prepared.compiled.plan
    stage = plan.stages[sid]
    agent = next(a for a in prepared.compiled.rendered if a.agent == stage.agent and not a.coordinator)
    tools = plan.tools_for(sid) if kind_of(plan.runner_for(sid)).tools else ()
    permissions = plan.permissions_for(sid)
    request = StageRequest(
        stage_id=sid,
        agent=agent.agent,
        model=plan.model_for(sid),
        system=agent.text,
        prompt=stage.prompt or "",
        max_tokens=plan.workflow.defaults.max_tokens,
        task=prepared.task,
        output_schema=prepared.compiled.schemas.get(sid),
        brief=agent.brief,
        batch=stage.batch,
        tools=tools,
        max_turns=plan.max_turns_for(sid),
        bash=permissions.bash,
        shell=permissions.shell,
    )
    part = _parts(sid, request, pending_outputs)
    part.copies = TYPICAL.instances if stage.foreach is not None else 1
    return part


def _tool_stand_ins(request: StageRequest) -> list[dict[str, Any]]:
    if not request.tools:
        return []
    from ..tools import tool_definitions
    from ..workspace import BashPolicy

    policy = BashPolicy(allow=request.bash, shell=request.shell, timeout=request.bash_timeout)
    return tool_definitions(request.tools, bash=policy)


def _count(parts: list[_Request], counter: TokenCounter) -> bool:
    """Replace the guessed tokens of each request by the API's count, shared out over its parts by length."""
    counts = counter([part.body for part in parts])
    any_counted = False
    for part, count in zip(parts, counts, strict=True):
        if count is None:
            continue
        guessed = part.tools + part.brief + part.system + part.message
        pending = part.message - _tokens(part.request.prompt)  # upstream outputs to come: not in the count
        scale = (count / (guessed - pending)) if guessed - pending > 0 else 1.0
        part.tools, part.brief, part.system = (round(x * scale) for x in (part.tools, part.brief, part.system))
        part.message = count - part.tools - part.brief - part.system + pending
        part.counted = any_counted = True
    return any_counted


def _estimate(
    prepared: PreparedRun, part: _Request, wave: int, action: Action, reason: str, cache: _CacheModel
) -> StageForecast:
    plan = prepared.compiled.plan
    request = part.request
    model = request.model
    read, write = cache.first_request(part)
    prefix = part.tools + part.brief + part.system
    conversation = part.message
    turns = min(plan.max_turns_for(part.sid), TYPICAL.turns) if request.tools else 1
    usage = Usage()
    for turn in range(1, turns + 1):
        last = turn == turns
        output = TYPICAL.reply if last else TYPICAL.tool_turn
        if turn == 1:
            # A tool loop caches its conversation from the first turn on (top-level cache_control).
            written = write + (conversation if request.tools else 0)
            usage = usage + Usage(prefix + conversation - read - written, output, read, written)
        else:
            added = TYPICAL.tool_turn + TYPICAL.tool_results
            usage = usage + Usage(0, output, prefix + conversation, added)
            conversation += added
    if request.tools and turns > 1:
        reason += f" (tools: about {turns} turns, at most {plan.max_turns_for(part.sid)})"
    cost = estimate(usage, model, plan.workflow.pricing, batch=request.batch)
    if part.copies > 1:
        # The first instance writes the prefix; the others read it (it is the same for each).
        rest = Usage(0, usage.output_tokens, usage.cache_read_tokens + usage.cache_write_tokens, 0)
        rest = rest + Usage(usage.input_tokens)
        more = estimate(rest, model, plan.workflow.pricing, batch=request.batch)
        cost = None if cost is None or more is None else round(cost + more * (part.copies - 1), 6)
        usage = usage + Usage(
            rest.input_tokens * (part.copies - 1),
            rest.output_tokens * (part.copies - 1),
            rest.cache_read_tokens * (part.copies - 1),
        )
    total_in = usage.input_tokens + usage.cache_read_tokens + usage.cache_write_tokens
    chars = len(request.brief) + len(request.system) + len(request.prompt)
    return StageForecast(
        part.sid,
        wave,
        action,
        reason,
        chars,
        (total_in, usage.output_tokens),
        cost,
        cached_tokens=usage.cache_read_tokens,
        counted=part.counted,
    )
