"""The scheduler: runs a plan's stages on asyncio, each as soon as its last need succeeds.

There are no lock-step waves: a finished stage releases its dependents at
once, up to ``max_parallel`` stages run together, and the ready stage earliest
in the plan's order goes first (so ``max_parallel=1`` is one deterministic
topological order). A failed stage skips everything downstream of it, with the
reason; independent branches finish. All bookkeeping happens on the event
loop's thread; the engine emits events and never prints or writes files.
"""

from __future__ import annotations

import asyncio
import heapq
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from .audit import Verdict, VerdictError, parse_verdict
from .errors import OrchestrateError
from .events import (
    AttemptFinished,
    Event,
    Listener,
    RunFinished,
    RunStarted,
    StageFailed,
    StageSkipped,
    StageStarted,
    StageSucceeded,
)
from .graph import Plan
from .runners import AttemptRecord, Runner, StageRequest, Usage

__all__ = ["EngineOptions", "RunOutcome", "StageOutcome", "execute"]

StageStatus = Literal["pending", "running", "succeeded", "failed", "skipped"]
RunStatus = Literal["succeeded", "failed", "interrupted"]


@dataclass(frozen=True)
class EngineOptions:
    max_parallel: int
    stage_timeout: float | None = None
    run_id: str = "run"
    task: str = "task"


@dataclass
class StageOutcome:
    status: StageStatus
    output: str = ""
    data: dict[str, Any] | None = None
    error: str | None = None
    usage: Usage = field(default_factory=Usage)
    cost_usd: float | None = 0.0
    duration: float = 0.0


@dataclass
class RunOutcome:
    status: RunStatus
    stages: dict[str, StageOutcome]
    verdict: Verdict | None
    usage: Usage
    cost_usd: float | None
    duration: float


# Shared: a running stage has nothing of its own to hold yet, an interrupted one nothing left.
_RUNNING = StageOutcome("running")
_INTERRUPTED = StageOutcome("failed", error="interrupted")

RequestBuilder = Callable[[str, Mapping[str, StageOutcome]], StageRequest]
Pricer = Callable[[Usage, str], "float | None"]


def _add_cost(total: float | None, part: float | None) -> float | None:
    """Costs add up, but one unknown price makes the total unknown rather than too low."""
    return None if total is None or part is None else round(total + part, 6)


@dataclass
class _Ledger:
    """What a stage has spent so far, every attempt counted (failed and cancelled ones too)."""

    usage: Usage = field(default_factory=Usage)
    cost_usd: float | None = 0.0


class _Run:
    def __init__(
        self,
        plan: Plan,
        build_request: RequestBuilder,
        runner_for: Callable[[str], Runner],
        listeners: Sequence[Listener],
        options: EngineOptions,
        price: Pricer,
        clock: Callable[[], float],
    ) -> None:
        self.plan = plan
        self.build_request = build_request
        self.runner_for = runner_for
        self.listeners = listeners
        self.options = options
        self.price = price
        self.clock = clock
        self.index = {sid: i for i, sid in enumerate(plan.order)}
        self.models = {sid: plan.model_for(sid) for sid in plan.order}
        self.outcomes: dict[str, StageOutcome] = {sid: StageOutcome("pending") for sid in plan.order}
        self.verdict: Verdict | None = None
        self.deadlines: dict[str, float] = {}
        self.timed_out: set[str] = set()
        self.tasks: dict[str, asyncio.Task[None]] = {}

    def emit(self, event: Event) -> None:
        for listener in self.listeners:
            listener.on_event(event)

    async def run(self) -> RunOutcome:
        started = time.monotonic()
        self.emit(
            RunStarted(
                self.clock(),
                self.options.run_id,
                self.plan.workflow.name,
                self.options.task,
                self.plan.order,
                self.options.max_parallel,
            )
        )
        waiting = {sid: len(self.plan.stages[sid].needs) for sid in self.plan.order}
        ready = [(self.index[sid], sid) for sid, count in waiting.items() if count == 0]
        heapq.heapify(ready)
        finished: asyncio.Queue[tuple[str, StageOutcome]] = asyncio.Queue()
        running = self.tasks
        status: RunStatus = "failed"
        watchdog = asyncio.create_task(self._watchdog()) if self.options.stage_timeout else None
        try:
            while ready or running:
                while ready and len(running) < self.options.max_parallel:
                    _, sid = heapq.heappop(ready)
                    running[sid] = asyncio.create_task(self._stage(sid, finished), name=f"stage {sid}")
                sid, outcome = await finished.get()
                batch = [(sid, outcome)]
                while not finished.empty():
                    batch.append(finished.get_nowait())
                for sid, outcome in sorted(batch, key=lambda item: self.index[item[0]]):
                    del running[sid]
                    self.outcomes[sid] = outcome
                    if outcome.status == "succeeded":
                        for dependent in self.plan.dependents[sid]:
                            waiting[dependent] -= 1
                            if waiting[dependent] == 0 and self.outcomes[dependent].status == "pending":
                                heapq.heappush(ready, (self.index[dependent], dependent))
                    else:
                        self._skip_downstream(sid)
            status = self._final_status()
        except asyncio.CancelledError:
            status = "interrupted"
            await self._cancel(running, finished)
            raise
        finally:
            if watchdog is not None:
                watchdog.cancel()
            usage = Usage()
            cost: float | None = 0.0
            for outcome in self.outcomes.values():
                usage = usage + outcome.usage
                cost = _add_cost(cost, outcome.cost_usd)
            duration = time.monotonic() - started
            self.emit(
                RunFinished(
                    self.clock(),
                    status,
                    round(duration, 3),
                    usage,
                    cost,
                    self.verdict.verdict if self.verdict else None,
                    tuple(s for s in self.plan.order if self.outcomes[s].status == "failed"),
                    tuple(s for s in self.plan.order if self.outcomes[s].status == "skipped"),
                )
            )
        return RunOutcome(status, self.outcomes, self.verdict, usage, cost, duration)

    def _final_status(self) -> RunStatus:
        if any(o.status != "succeeded" for o in self.outcomes.values()):
            return "failed"
        return "succeeded" if self.verdict is not None and self.verdict.verdict == "pass" else "failed"

    def _skip_downstream(self, failed: str) -> None:
        reason_of = self.outcomes[failed].status
        todo = [(d, failed, reason_of) for d in self.plan.dependents[failed]]
        while todo:
            sid, cause, how = todo.pop(0)
            if self.outcomes[sid].status != "pending":
                continue
            reason = f"needs {cause}, which {'failed' if how == 'failed' else 'was skipped'}"
            self.outcomes[sid] = StageOutcome("skipped", error=reason)
            self.emit(StageSkipped(self.clock(), sid, reason))
            todo.extend((d, sid, "skipped") for d in self.plan.dependents[sid])

    async def _cancel(self, running: dict[str, asyncio.Task[None]], finished: asyncio.Queue[Any]) -> None:
        for task in running.values():
            task.cancel()
        await asyncio.gather(*running.values(), return_exceptions=True)
        while not finished.empty():
            sid, outcome = finished.get_nowait()
            self.outcomes[sid] = outcome

    async def _watchdog(self) -> None:
        """Cancel stages past their deadline. One task for all stages: cheaper than a timer per stage."""
        timeout = self.options.stage_timeout or 0.0
        period = min(1.0, timeout / 10)
        while True:
            await asyncio.sleep(period)
            now = time.monotonic()
            for sid, deadline in list(self.deadlines.items()):
                if now >= deadline and sid in self.tasks:
                    del self.deadlines[sid]
                    self.timed_out.add(sid)
                    self.tasks[sid].cancel()

    async def _stage(self, sid: str, finished: asyncio.Queue[tuple[str, StageOutcome]]) -> None:
        outcome = _INTERRUPTED
        try:
            outcome = await self._execute_stage(sid)
        finally:
            self.deadlines.pop(sid, None)
            finished.put_nowait((sid, outcome))

    async def _execute_stage(self, sid: str) -> StageOutcome:
        stage = self.plan.stages[sid]
        model = self.models[sid]
        started = time.monotonic()
        spent = _Ledger()

        def report(attempt: AttemptRecord) -> None:
            cost = self.price(attempt.usage, model)
            spent.usage = spent.usage + attempt.usage
            spent.cost_usd = _add_cost(spent.cost_usd, cost)
            self.emit(AttemptFinished(self.clock(), sid, attempt, cost))

        def failed(error: str) -> StageOutcome:
            outcome = StageOutcome(
                "failed", error=error, usage=spent.usage, cost_usd=spent.cost_usd, duration=time.monotonic() - started
            )
            self.emit(StageFailed(self.clock(), sid, round(outcome.duration, 3), error))
            return outcome

        self.outcomes[sid] = _RUNNING
        self.emit(StageStarted(self.clock(), sid, stage.agent, model))
        if self.options.stage_timeout:
            self.deadlines[sid] = started + self.options.stage_timeout
        try:
            request = self.build_request(sid, self.outcomes)
            result = await self.runner_for(sid).run(request, report)
        except asyncio.CancelledError:
            if sid in self.timed_out:  # the watchdog's cancel, not the user's: the stage fails, the run goes on
                task = asyncio.current_task()
                if task is not None:
                    task.uncancel()
                return failed(f"timed out after {self.options.stage_timeout:g} s (retries included)")
            failed("interrupted")
            raise
        except OrchestrateError as exc:
            return failed(exc.message)
        except Exception as exc:  # a runner bug must fail its stage, not the whole run
            return failed(f"runner error: {type(exc).__name__}: {exc}")
        blocked = _blocked_reason(result.output)
        if blocked is not None:
            return failed(f"the agent reported itself blocked: {blocked}")
        if sid == self.plan.audit_stage:
            try:
                self.verdict = parse_verdict(result.data, result.output)
            except VerdictError as exc:
                return failed(str(exc))
        duration = time.monotonic() - started
        outcome = StageOutcome(
            "succeeded",
            output=result.output,
            data=self.verdict.model_dump() if sid == self.plan.audit_stage and self.verdict else result.data,
            usage=spent.usage,
            cost_usd=spent.cost_usd,
            duration=duration,
        )
        self.emit(
            StageSucceeded(
                self.clock(), sid, round(duration, 3), outcome.usage, outcome.cost_usd, outcome.output, outcome.data
            )
        )
        return outcome


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


async def execute(
    plan: Plan,
    *,
    build_request: RequestBuilder,
    runner_for: Callable[[str], Runner],
    listeners: Sequence[Listener],
    options: EngineOptions,
    price: Pricer,
    clock: Callable[[], float] = time.time,
) -> RunOutcome:
    """Run every stage of ``plan``; return when all have succeeded, failed or been skipped.

    ``build_request`` turns a stage and the outcomes so far into its request;
    ``runner_for`` picks the runner of a stage; ``price`` turns usage into USD.
    """
    return await _Run(plan, build_request, runner_for, listeners, options, price, clock).run()
