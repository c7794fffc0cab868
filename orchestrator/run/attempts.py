"""One stage of a run, from its request to its outcome: kept, tried (and retried), or gated.

``StageJob`` is the body of a stage's task on the engine's loop: it builds the
request, asks the memo whether the earlier output may be kept, checks the
budgets, runs its tries through the run's ``Executor`` with a ``Meter`` that
prices and reserves each request, checks each reply (blocked reports,
structured output, the workspace guard), retries within ``retries`` (one more
for a malformed structured reply), and hands a gated stage's output to the
scheduler's gate. It never decides what runs next.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from ..audit import VerdictError, parse_verdict
from ..contracts import check_reply
from ..errors import OrchestrateError
from ..events import (
    AttemptFinished,
    BatchSubmitted,
    Event,
    Listener,
    StageFailed,
    StageRetrying,
    StageReused,
    StageSkipped,
    StageStarted,
    StageSucceeded,
    ToolFinished,
)
from ..fingerprint import Recalled, digest
from ..graph import Plan
from ..runners import AttemptRecord, BudgetExhausted, Meter, StageFailure, StageRequest, Usage
from ..runners.batches import BATCH_TIMEOUT
from .executor import Executor
from .outcomes import EngineOptions, Guard, Home, Pricer, Progress, StageInput, StageOutcome
from .scheduler import Scheduler
from .spend import Purse

__all__ = ["BLOCKED", "RequestBuilder", "RunContext", "StageJob", "add_cost", "output_digest"]

RequestBuilder = Callable[[str, Progress], StageInput]
BLOCKED = "the agent reported itself blocked: "


def add_cost(total: float | None, part: float | None) -> float | None:
    """Costs add up, but one unknown price makes the total unknown rather than too low."""
    return None if total is None or part is None else round(total + part, 6)


def _normal(text: str) -> str:
    """Outputs end in one newline (as their files do), so a kept output reads back identical."""
    return text if not text or text.endswith("\n") else text + "\n"


@dataclass
class _Ledger:
    """What a stage has spent so far, every attempt counted (failed and cancelled ones too)."""

    usage: Usage = field(default_factory=Usage)
    cost_usd: float | None = 0.0


class RunContext:
    """What the stages of one run share: the plan, the scheduler, the seams and the run's bookkeeping."""

    def __init__(
        self,
        plan: Plan,
        scheduler: Scheduler,
        home: Home,
        executor: Executor,
        listeners: Sequence[Listener],
        options: EngineOptions,
        price: Pricer,
        clock: Callable[[], float],
        timer: Callable[[], float] | None,
        guard: Guard,
        batches: Mapping[str, tuple[str, str, str]],
    ) -> None:
        self.plan = plan
        self.scheduler = scheduler
        self.home = home
        self.executor = executor
        self.listeners = listeners
        self.options = options
        self.price = price
        self.clock = clock
        self.timer = timer
        self.guard = guard
        self.batches = dict(batches)
        self.progress = scheduler.progress
        self.models = {sid: plan.model_for(sid) for sid in plan.order}
        self.purse = Purse(options.budget_usd, options.spent_usd)
        self.deadlines: dict[str, float] = {}
        self.timed_out: set[str] = set()
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.ran: set[str] = set()
        self.stopping = False
        self.waiting_gates: dict[str, StageInput] = {}
        self.finished: asyncio.Queue[tuple[str, StageOutcome]] = asyncio.Queue()

    def now(self) -> float:
        """The loop's clock (or the injected one), for deadlines and durations."""
        return self.timer() if self.timer is not None else asyncio.get_running_loop().time()

    def emit(self, event: Event) -> None:
        for listener in self.listeners:
            listener.on_event(event)

    def flush(self) -> None:
        """Pass on what the scheduler decided."""
        if self.scheduler.events:
            for event in self.scheduler.drain():
                self.emit(event)

    def hold(self, note: str) -> None:
        """Start no more stages: the run's budget would be passed."""
        self.scheduler.halt("budget", note)

    def model(self, sid: str) -> str:
        return self.models.get(sid) or self.models[self.scheduler.spec_id(sid)]

    def timeout_of(self, sid: str) -> float | None:
        stage = self.plan.stages[self.scheduler.spec_id(sid)]
        if stage.timeout:
            return stage.timeout
        return max(self.options.stage_timeout or 0, BATCH_TIMEOUT) if stage.batch else self.options.stage_timeout

    async def gate(self, sid: str, outcome: StageOutcome, stage_input: StageInput) -> StageOutcome:
        """A gated stage's outcome, decided now (a decision on record, ``--approve-all``) or waiting."""
        output_sha = output_digest(outcome, stage_input)
        decision = await self.home.decision(sid, stage_input.fingerprint, output_sha)
        output_file = f"stages/{sid}.md" if stage_input.request is not None else None
        outcome = self.scheduler.gate(
            sid, outcome, stage_input.fingerprint, output_sha, decision, self.clock(), output_file
        )
        self.flush()
        if outcome.status == "waiting_approval":
            self.waiting_gates[sid] = stage_input
        return outcome


class StageJob:
    """One stage's work in a run (see the module docstring)."""

    def __init__(self, run: RunContext, sid: str) -> None:
        self.run_ = run
        self.sid = sid
        self.stage = run.plan.stages[run.scheduler.spec_id(sid)]
        self.model = run.model(sid)
        self.started = run.now()
        self.spent = _Ledger()

    async def run(self) -> None:
        outcome = StageOutcome("interrupted", error="interrupted")
        try:
            outcome = await self._execute()
        finally:
            self.run_.deadlines.pop(self.sid, None)
            self.run_.finished.put_nowait((self.sid, outcome))

    async def _execute(self) -> StageOutcome:
        run, sid, stage = self.run_, self.sid, self.stage
        try:
            stage_input, recalled = await run.home.prepare(sid, run.progress, run.ran)
        except OrchestrateError as exc:
            return self._fail(exc.message)
        except Exception as exc:  # a bug building one request must fail its stage, not the run
            return self._fail(f"could not build the request: {type(exc).__name__}: {exc}")
        if not isinstance(recalled, Recalled) and sid in run.ran:  # again in this run: an audit round's rework
            findings = len(run.progress.feedback.get(sid, ()))
            recalled = (
                f"the audit sent it back with {findings} finding{'s' if findings != 1 else ''} "
                f"(round {run.progress.round})"
                if findings
                else f"what it needs was redone in audit round {run.progress.round}"
            )
        if isinstance(recalled, Recalled):
            outcome = StageOutcome(
                "succeeded",
                output=recalled.output,
                data=recalled.data,
                fingerprint=stage_input.fingerprint,
                reused=True,
            )
            run.emit(
                StageReused(
                    run.clock(),
                    sid,
                    recalled.reason,
                    stage_input.fingerprint,
                    dict(stage_input.inputs),
                    recalled.output_sha256,
                    recalled.run_id,
                    recalled.output,
                    recalled.data,
                )
            )
            return await run.gate(sid, outcome, stage_input) if stage.gated else outcome
        if run.options.only is not None and sid not in run.options.only:
            asked = ", ".join(sorted(run.options.only))
            reason = f"not run: only {asked} was asked for, and this stage can't be kept ({recalled})"
            run.emit(StageSkipped(run.clock(), sid, reason))
            return StageOutcome("skipped", error=reason)
        if stage_input.request is None:  # a pure gate: nothing to run
            run.ran.add(sid)
            return await run.gate(sid, StageOutcome("succeeded", fingerprint=stage_input.fingerprint), stage_input)
        held = self._over_budget(stage_input)
        if held:
            run.hold(held)
            return StageOutcome("pending", error=held)
        run.ran.add(sid)
        outcome = await self._tries(stage_input, recalled)
        if outcome.status == "succeeded" and stage.gated:
            # A person approves the output as recorded: its fingerprint over the workspace the stage left.
            return await run.gate(sid, outcome, replace(stage_input, fingerprint=outcome.fingerprint))
        return outcome

    # -- budgets -------------------------------------------------------------------------------------

    def _over_budget(self, stage_input: StageInput) -> str:
        """Why the stage can't start within the run's budget even at its cheapest ("" when it may)."""
        purse = self.run_.purse
        if purse.cap is None:
            return ""
        least = self._least(stage_input)
        if purse.spent + least > purse.cap:
            return (
                f"the run's budget of ${purse.cap:.2f} would be exceeded: ${purse.spent:.4f} spent, and the next "
                f"stage costs at least ${least:.4f}"
            )
        return ""

    def _least(self, stage_input: StageInput) -> float:
        if not stage_input.min_tokens:
            return 0.0
        return self.run_.price.least(self.model, stage_input.min_tokens) or 0.0

    # -- tries ---------------------------------------------------------------------------------------

    async def _tries(self, stage_input: StageInput, reason: str) -> StageOutcome:
        run, sid, stage = self.run_, self.sid, self.stage
        request = stage_input.request
        assert request is not None
        stage_budget = stage.budget.usd if stage.budget else None
        run.emit(StageStarted(run.clock(), sid, stage.agent or "", self.model, reason, run.progress.round))
        timeout = run.timeout_of(sid)
        tries = stage.retries + 1
        sent_back = False  # a malformed structured reply gets one more try beyond the stage's retries
        number = 0
        error: str | None = None
        while number < tries:
            number += 1
            if timeout:
                run.deadlines[sid] = run.now() + timeout
            error, output, data = None, "", None
            reply_problem = False
            meter, release = stage_meter(run, sid, self.model, self.spent, stage_budget, stage_input.fingerprint)
            try:
                token = await run.guard.before(sid)
                result = await run.executor.run_try(sid, request, meter)
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if sid in run.timed_out:  # the watchdog's cancel, not the user's: this try fails
                    run.timed_out.discard(sid)
                    if task is not None:
                        task.uncancel()
                    error = f"timed out after {timeout:g} s (retries included)"
                elif run.stopping:
                    if task is not None:
                        task.uncancel()
                    return self._fail("interrupted", interrupted=True)
                else:
                    self._fail("interrupted", interrupted=True)
                    raise
            except BudgetExhausted as exc:
                run.hold(exc.message)
                return self._fail(f"stopped: {exc.message}", interrupted=True)
            except OrchestrateError as exc:
                error = exc.message
            except Exception as exc:  # a runner bug must fail its stage, not the whole run
                error = f"runner error: {type(exc).__name__}: {exc}"
            else:
                output = result.output
                error, data = _check_result(request, output, result.data)
                reply_problem = error is not None and not error.startswith(BLOCKED)
                if error is None:
                    others = frozenset(run.scheduler.overlapped.get(sid, ()))
                    checked, error = await run.guard.after(sid, token, output, data, others)
                    data = checked if error is None else data
                if error is not None and not error.startswith(BLOCKED):
                    run.progress.contract[sid] = error
            finally:
                run.deadlines.pop(sid, None)
                release()
            if error is None:
                return await self._succeeded(stage_input, output, data)
            if number == tries and reply_problem and not sent_back:
                sent_back = True
                tries += 1
            if number == tries or run.stopping:
                break
            if stage_budget is not None and (self.spent.cost_usd or 0.0) + self._least(stage_input) > stage_budget:
                error += f"; no retry: the stage's budget of ${stage_budget:.2f} is spent"
                break
            held = self._over_budget(stage_input)
            if held:
                run.hold(held)
                error += "; no retry: " + held
                break
            run.emit(StageRetrying(run.clock(), sid, number, error))
            if sid in run.progress.contract:  # the next try is told what was wrong with this one
                try:
                    stage_input, _ = await run.home.prepare(sid, run.progress, run.ran)
                except OrchestrateError as exc:
                    error = exc.message
                    break
                request = stage_input.request
                assert request is not None
        assert error is not None
        return self._fail(error + (f" (after {number} tries)" if number > 1 else ""))

    async def _succeeded(self, stage_input: StageInput, output: str, data: dict[str, Any] | None) -> StageOutcome:
        run = self.run_
        stage_input = await run.home.settled(self.sid, stage_input)  # as it left the workspace (StageInput.settle)
        output = _normal(output)
        duration = run.now() - self.started
        outcome = StageOutcome(
            "succeeded",
            output=output,
            data=data,
            usage=self.spent.usage,
            cost_usd=self.spent.cost_usd,
            duration=duration,
            fingerprint=stage_input.fingerprint,
        )
        run.emit(
            StageSucceeded(
                run.clock(),
                self.sid,
                round(duration, 3),
                outcome.usage,
                outcome.cost_usd,
                output,
                data,
                stage_input.fingerprint,
                dict(stage_input.inputs),
                digest(output, 64),
            )
        )
        return outcome

    def _fail(self, error: str, *, interrupted: bool = False) -> StageOutcome:
        run = self.run_
        outcome = StageOutcome(
            "interrupted" if interrupted else "failed",
            error=error,
            usage=self.spent.usage,
            cost_usd=self.spent.cost_usd,
            duration=run.now() - self.started,
        )
        run.emit(StageFailed(run.clock(), self.sid, round(outcome.duration, 3), error, interrupted))
        return outcome


def stage_meter(
    run: RunContext, sid: str, model: str, spent: _Ledger, stage_budget: float | None, fingerprint: str
) -> tuple[Meter, Callable[[], None]]:
    """What the stage's runner reports to and reserves from (see ``runners.Meter``), and how to release
    a reservation a try left unsettled (one that ended before its request was reported)."""
    purse = run.purse
    held = [0.0]  # the reservation of the request in flight, settled by its attempt's report

    def report(attempt: AttemptRecord) -> None:
        cost = run.price.cost(attempt, model) if attempt.usage.total else 0.0  # a command costs nothing
        spent.usage = spent.usage + attempt.usage
        spent.cost_usd = add_cost(spent.cost_usd, cost)
        purse.settle(held[0], cost or 0.0)
        held[0] = 0.0
        run.emit(AttemptFinished(run.clock(), sid, attempt, cost))

    async def reserve(input_tokens: int, max_output: int, batch: bool) -> None:
        worst = run.price.worst(model, input_tokens, max_output, batch) or 0.0
        if stage_budget is not None and (spent.cost_usd or 0.0) + worst > stage_budget:
            raise StageFailure(
                f"the stage's budget of ${stage_budget:.2f} would be exceeded: ${spent.cost_usd or 0.0:.4f} "
                f"spent, and its next request may cost up to ${worst:.4f}"
            )
        await purse.reserve(worst)
        held[0] = worst

    def batched(batch_id: str, custom_id: str) -> None:
        run.emit(BatchSubmitted(run.clock(), sid, batch_id, custom_id, fingerprint))

    def tool(name: str, started: float, duration: float, error: str | None) -> None:
        run.emit(ToolFinished(run.clock(), sid, name, started, round(duration, 3), error))

    async def hold() -> float:
        allowance = await purse.hold_rest()
        held[0] = 0.0 if allowance == float("inf") else allowance
        if stage_budget is not None:
            allowance = min(allowance, stage_budget - (spent.cost_usd or 0.0))
        return allowance

    def release() -> None:
        purse.settle(held[0], 0.0)
        held[0] = 0.0

    pending = run.batches.pop(sid, None)
    meter = Meter(
        report,
        reserve if purse.limited or stage_budget is not None else None,
        batched,
        (pending[1], pending[2]) if pending is not None and pending[0] == fingerprint else None,
        hold if purse.limited or stage_budget is not None else None,
        tool,
    )
    return meter, release


def output_digest(outcome: StageOutcome, stage_input: StageInput) -> str:
    """What a decision on a gate is bound to besides its fingerprint: the output a person saw (none for a pure
    approval stage, which has no output)."""
    return digest(outcome.output, 64) if stage_input.request is not None else ""


def _check_result(request: StageRequest, output: str, data: dict[str, Any] | None) -> tuple[str | None, Any]:
    """What is wrong with a reply itself: a blocked report, or a structured reply that doesn't parse or
    doesn't match its schema (the verdict's, for the audit)."""
    blocked = _blocked_reason(output)
    if blocked is not None:
        return f"{BLOCKED}{blocked}", None
    if request.verdict:
        try:
            return None, parse_verdict(data, output).model_dump()
        except VerdictError as exc:
            return str(exc), None
    if request.output_schema is not None:
        checked, problem = check_reply(output, data, request.output_schema)
        return problem, checked
    return None, data


def _blocked_reason(output: str) -> str | None:
    """The reason of a reply whose first line is ``Status: blocked: <reason>``, as the shipped
    instructions ask agents to report a stage they could not finish; None for any other reply."""
    first = output.lstrip().split("\n", 1)[0].strip()
    head, _, rest = first.partition(":")
    if head.strip().lower() != "status":
        return None
    state, _, reason = rest.strip().partition(":")
    if state.strip().lower() != "blocked":
        return None
    return reason.strip() or "no reason given"
