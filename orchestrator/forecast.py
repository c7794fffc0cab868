"""``orchestrate plan``: what a run would do, without calling any API.

For each stage in plan order: will it run, keep its earlier output, or wait at
a gate, and why; how big its prompt is; and a token and cost range. A stage
whose needs will run can't be fingerprinted yet (their outputs don't exist):
it is expected to run, and its prompt size leaves room for those outputs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from .cost import estimate_range, token_range
from .engine import Decision, Progress, StageOutcome
from .fingerprint import Recalled
from .run import PreparedRun, load_previous, request_builder, start_session

__all__ = ["Forecast", "StageForecast", "forecast_run"]

Action = Literal["run", "keep", "wait"]


@dataclass(frozen=True)
class StageForecast:
    stage: str
    wave: int  # from 1
    action: Action  # run: calls the model; keep: earlier output kept; wait: a gate that needs a person
    reason: str
    prompt_chars: int | None  # system prompt + user message, as far as known now
    tokens: tuple[int, int] | None  # input + output, low and high
    cost_usd: tuple[float, float] | None


@dataclass(frozen=True)
class Forecast:
    stages: list[StageForecast]
    cost_usd: tuple[float, float] | None
    budget_usd: float | None
    spent_usd: float
    resume: bool
    changes: list[str] = field(default_factory=list)

    @property
    def unknown_cost(self) -> str:
        """Why the total is unknown, in words ("" when it is known)."""
        if self.cost_usd is not None:
            return ""
        if any(f.action == "run" and f.cost_usd is None and f.prompt_chars is None for f in self.stages):
            return "unknown until the run (fan-out, conditions or prompts that need upstream outputs)"
        return "unknown (a model has no price; add pricing: to the workflow)"

    @property
    def budget_check(self) -> str:
        if self.budget_usd is None:
            return ""
        if self.cost_usd is None:
            return self.unknown_cost
        left = self.budget_usd - self.spent_usd
        low, high = self.cost_usd
        if low > left:
            return f"will exceed it: at least ${low:.4f} more, ${left:.4f} left"
        if high > left:
            return f"may exceed it: up to ${high:.4f} more, ${left:.4f} left"
        return f"fits: up to ${high:.4f} more, ${left:.4f} left"


def forecast_run(prepared: PreparedRun) -> Forecast:
    """What ``orchestrate run`` would do now for this task (reads the state folder, writes nothing)."""
    plan = prepared.compiled.plan
    workflow = plan.workflow
    previous = load_previous(prepared)
    session = start_session(prepared, previous, "forecast")
    build = request_builder(prepared, session.rejected)
    outcomes = {sid: StageOutcome("pending") for sid in plan.order}
    progress = Progress(outcomes, session.feedback, {}, session.round)
    unknown: set[str] = set()  # stages whose output this run will produce anew (or not at all)
    out: list[StageForecast] = []
    for sid in plan.order:
        stage = plan.stages[sid]
        wave = plan.wave_of(sid) + 1
        reads = set(plan.order) - {sid} if sid == plan.audit_stage else set(stage.needs)
        reads |= prepared.compiled.renderer.checker.stages_read(sid) if stage.runs_agent else set()
        waiting_on = [n for n in plan.order if n in reads and n in unknown]
        if stage.foreach is not None or stage.condition is not None:
            unknown.add(sid)
            what = (
                "fans out: one instance per item of its foreach, known once its needs are done"
                if stage.foreach is not None
                else "runs if its condition holds when its needs are done"
            )
            out.append(StageForecast(sid, wave, "run", what, None, None, None))
            continue
        try:
            stage_input = build(sid, progress)
        except Exception as exc:  # a prompt that needs outputs this run has not made yet
            unknown.add(sid)
            message = getattr(exc, "message", str(exc))
            out.append(StageForecast(sid, wave, "run", f"prompt can't be rendered yet: {message}", None, None, None))
            continue
        request = stage_input.request
        if request is not None and request.command is not None:
            recalled_run = session.memo.recall(sid, stage_input.fingerprint, stage_input.inputs, unknown)
            if isinstance(recalled_run, Recalled) and not waiting_on:
                outcomes[sid] = StageOutcome("succeeded", output=recalled_run.output)
                out.append(StageForecast(sid, wave, "keep", recalled_run.reason, None, None, (0.0, 0.0)))
            else:
                unknown.add(sid)
                why = f"runs `{request.command.command}` (no model, no cost)"
                out.append(StageForecast(sid, wave, "run", why, None, None, (0.0, 0.0)))
            continue
        chars = len(request.system) + len(request.prompt) if request is not None else None
        if waiting_on:
            obstacle = session.memo.obstacle(sid)
            reason = obstacle or f"upstream {', '.join(waiting_on)} will run (kept if its output comes out the same)"
            unknown.add(sid)
            action: Action = "wait" if not stage.runs_agent else "run"
            extra = len(waiting_on) * workflow.defaults.max_tokens * 4  # their outputs, at most
            out.append(_estimate(prepared, sid, wave, action, reason, chars, extra))
            continue
        recalled = session.memo.recall(sid, stage_input.fingerprint, stage_input.inputs, unknown)
        if isinstance(recalled, Recalled):
            outcomes[sid] = StageOutcome("succeeded", output=recalled.output, data=recalled.data)
            if stage.gated:
                decision = session.approvals.decision(sid, stage_input.fingerprint, recalled.output_sha256)
                if decision is None and not prepared.approve_all:
                    unknown.add(sid)
                    out.append(StageForecast(sid, wave, "wait", "waits for approval", None, None, None))
                    continue
                if decision is not None and not decision.approved:
                    unknown.add(sid)
                    out.append(StageForecast(sid, wave, "wait", "was rejected", None, None, None))
                    continue
                progress.decisions[sid] = decision or Decision(True, "", "--approve-all")
            out.append(StageForecast(sid, wave, "keep", recalled.reason, None, None, (0.0, 0.0)))
            continue
        unknown.add(sid)
        if request is None:
            out.append(StageForecast(sid, wave, "wait", "a gate: waits for approval", None, None, None))
            continue
        out.append(_estimate(prepared, sid, wave, "run", recalled, chars, 0))
    total: tuple[float, float] | None = (0.0, 0.0)
    for item in out:
        if item.action == "run":
            if item.cost_usd is None or total is None:
                total = None
            else:
                total = (round(total[0] + item.cost_usd[0], 6), round(total[1] + item.cost_usd[1], 6))
    return Forecast(
        stages=out,
        cost_usd=total,
        budget_usd=prepared.budget_usd,
        spent_usd=session.spent_usd,
        resume=session.resume,
        changes=session.changes,
    )


def _estimate(
    prepared: PreparedRun, sid: str, wave: int, action: Action, reason: str, chars: int | None, extra: int
) -> StageForecast:
    plan = prepared.compiled.plan
    if chars is None:
        return StageForecast(sid, wave, action, reason, None, None, None)
    max_out = plan.workflow.defaults.max_tokens
    low_in, _ = token_range(chars)
    _, high_in = token_range(chars + extra)
    cost = estimate_range(chars, max_out, plan.model_for(sid), plan.workflow.pricing)
    if cost is not None and extra:
        wider = estimate_range(chars + extra, max_out, plan.model_for(sid), plan.workflow.pricing)
        cost = (cost[0], wider[1]) if wider else cost
    high = high_in + max_out
    if plan.tools_for(sid) and plan.runner_for(sid) == "anthropic":  # a tool loop: up to max_turns requests
        turns = plan.max_turns_for(sid)
        high *= turns
        cost = (cost[0], round(cost[1] * turns, 6)) if cost is not None else None
        reason += f" (tools: up to {turns} turns)"
    return StageForecast(sid, wave, action, reason, chars, (low_in, high), cost)
