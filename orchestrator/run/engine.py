"""The engine: the asyncio mechanics of a run, with every rule left to the ``Scheduler``.

The loop asks the scheduler for the next stage while a slot is free
(``max_parallel``), starts it as a task, and tells the scheduler each outcome
as it comes in; a finished stage releases its dependents at once, no lock-step
waves. All bookkeeping happens on the event loop's thread; the engine emits
events and never prints or writes files.

Per stage (``attempts.StageJob``): build the request; keep the earlier output
if the memo says nothing changed; else check the budgets and run its tries
through the ``Executor`` (with its ``retries`` and ``timeout``); then, for a
gated stage, look for a person's decision. The engine also handles:

- timeouts, with one watchdog on the loop's clock (``timer``, injectable);
- ``RunControl.stop()`` (a signal): the stages in flight are cancelled and
  record what they spent, and the run ends ``interrupted``;
- ``RunControl.fail()`` (its state can't be written): nothing new starts.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence

from ..audit import Finding
from ..events import Listener, RunFinished, RunStarted
from ..graph import Plan
from ..runners import Runner, Usage
from .attempts import RequestBuilder, RunContext, StageJob, add_cost, output_digest
from .executor import Executor, LocalExecutor
from .outcomes import (
    Decision,
    EngineOptions,
    Gates,
    Guard,
    Memory,
    NoGates,
    NoGuard,
    NoMemory,
    Pricer,
    Progress,
    RunOutcome,
    RunStatus,
    StageInput,
    StageOutcome,
)
from .scheduler import Condition, Expander, Scheduler

__all__ = [
    "Decision",
    "EngineOptions",
    "Gates",
    "Memory",
    "Progress",
    "RunControl",
    "RunOutcome",
    "StageInput",
    "StageOutcome",
    "execute",
]


class Run(RunContext):
    """One run's loop (see the module docstring)."""

    def fail(self, reason: str) -> None:
        """Start no more stages (their work could not be kept); the run ends failed with ``reason``."""
        self.scheduler.halt("failure", reason)

    def stop(self) -> None:
        """Start no more stages; cancel those in flight (they record what they spent)."""
        if self.stopping:
            return
        self.stopping = True
        self.scheduler.halt("stop")
        for task in self.tasks.values():
            task.cancel()

    # -- the loop ------------------------------------------------------------------------------------

    async def run(self) -> RunOutcome:
        started = self.now()
        options = self.options
        self.emit(
            RunStarted(
                self.clock(),
                options.run_id,
                self.plan.workflow.name,
                options.task,
                self.plan.order,
                options.max_parallel,
                options.resumed,
                self.progress.round,
            )
        )
        scheduler = self.scheduler
        running = self.tasks
        status: RunStatus = "failed"
        shortest = self._shortest_timeout()
        watchdog = asyncio.create_task(self._watchdog(shortest)) if shortest else None
        try:
            while True:
                while len(running) < options.max_parallel:
                    sid = scheduler.next(self.clock())
                    self.flush()
                    if sid is None:
                        break
                    running[sid] = asyncio.create_task(StageJob(self, sid).run(), name=f"stage {sid}")
                if not running:
                    break
                for sid, outcome in await self._next_batch():
                    del running[sid]
                    scheduler.settle(sid, outcome, self.clock())
                    self.flush()
                self._poll_gates()
            final = scheduler.status()
            status = "failed" if final == "running" else final
        except asyncio.CancelledError:
            status = "interrupted"
            await self._cancel(running)
            raise
        finally:
            if watchdog is not None:
                watchdog.cancel()
            duration = self.now() - started
            result = self._outcome(status, duration)
            self.emit(
                RunFinished(
                    self.clock(),
                    status,
                    round(duration, 3),
                    result.usage,
                    result.cost_usd,
                    result.verdict.verdict if result.verdict else None,
                    scheduler.with_status("failed"),
                    scheduler.with_status("skipped"),
                    result.waiting,
                    result.note,
                )
            )
        return result

    def _outcome(self, status: RunStatus, duration: float) -> RunOutcome:
        usage = Usage()
        cost: float | None = 0.0
        outcomes = self.scheduler.outcomes
        for outcome in outcomes.values():
            usage = usage + outcome.usage
            cost = add_cost(cost, outcome.cost_usd)
        waiting = self.scheduler.with_status("waiting_approval")
        note = self.scheduler.note
        return RunOutcome(status, outcomes, self.scheduler.verdict, usage, cost, duration, note, waiting)

    async def _next_batch(self) -> list[tuple[str, StageOutcome]]:
        """The stages that finished, in plan order; waits for at least one (polling gates meanwhile)."""
        while True:
            timeout = self.options.poll_interval if self.waiting_gates else None
            try:
                first = await asyncio.wait_for(self.finished.get(), timeout)
            except TimeoutError:
                if self._poll_gates() and len(self.tasks) < self.options.max_parallel:
                    return []  # a decision may have released stages: let the loop start them
                continue
            batch = [first]
            while not self.finished.empty():
                batch.append(self.finished.get_nowait())
            index = self.scheduler.index
            return sorted(batch, key=lambda item: index[item[0]])

    # -- gates ---------------------------------------------------------------------------------------

    def _poll_gates(self) -> bool:
        """Apply decisions people made while the run went on; whether any was."""
        decided = False
        for sid, stage_input in list(self.waiting_gates.items()):
            outcome = self.scheduler.outcomes[sid]
            decision = self.gates.decision(sid, stage_input.fingerprint, output_digest(outcome, stage_input))
            if decision is None:
                continue
            del self.waiting_gates[sid]
            self.scheduler.decide(sid, decision, self.clock())
            self.flush()
            decided = True
        return decided

    # -- timeouts and cancellation -------------------------------------------------------------------

    async def _cancel(self, running: dict[str, asyncio.Task[None]]) -> None:
        for task in running.values():
            task.cancel()
        await asyncio.gather(*running.values(), return_exceptions=True)
        while not self.finished.empty():
            sid, outcome = self.finished.get_nowait()
            self.scheduler.outcomes[sid] = outcome

    def _shortest_timeout(self) -> float | None:
        values = [t for t in (self.timeout_of(sid) for sid in self.plan.order) if t]
        return min(values) if values else None

    async def _watchdog(self, shortest: float) -> None:
        """Cancel stages past their deadline. One task for all stages: cheaper than a timer per stage."""
        period = min(1.0, shortest / 10)
        while True:
            await asyncio.sleep(period)
            now = self.now()
            for sid, deadline in list(self.deadlines.items()):
                if now >= deadline and sid in self.tasks:
                    del self.deadlines[sid]
                    self.timed_out.add(sid)
                    self.tasks[sid].cancel()


class RunControl:
    """A handle to stop a run from outside it (a signal handler), safely from any thread."""

    def __init__(self) -> None:
        self._run: Run | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.requested = False

    def _attach(self, run: Run) -> None:
        self._run = run
        self._loop = asyncio.get_running_loop()
        if self.requested:
            run.stop()

    def stop(self) -> None:
        """Ask the run to stop: no new stages, in-flight ones cancelled and recorded."""
        self.requested = True
        if self._run is not None and self._loop is not None:
            self._loop.call_soon_threadsafe(self._run.stop)

    def fail(self, reason: str) -> None:
        """End the run failed with ``reason``: no new stages (the ones in flight finish)."""
        if self._run is not None and self._loop is not None:
            self._loop.call_soon_threadsafe(self._run.fail, reason)


async def execute(
    plan: Plan,
    *,
    build_request: RequestBuilder,
    runner_for: Callable[[str], Runner] | None = None,
    executor: Executor | None = None,
    listeners: Sequence[Listener],
    options: EngineOptions,
    price: Pricer,
    clock: Callable[[], float] = time.time,
    timer: Callable[[], float] | None = None,
    memory: Memory | None = None,
    gates: Gates | None = None,
    feedback: Mapping[str, list[Finding]] | None = None,
    control: RunControl | None = None,
    guard: Guard | None = None,
    condition: Condition | None = None,
    expand: Expander | None = None,
    batches: Mapping[str, tuple[str, str, str]] | None = None,
) -> RunOutcome:
    """Run the stages of ``plan``; return when each has succeeded, failed, been skipped or is waiting.

    ``build_request`` turns a stage and the progress so far into its input;
    tries run through ``executor`` (default: ``LocalExecutor(runner_for)``, each stage's runner here);
    ``price`` turns attempts into USD (and a request's worst case, for the budget's reservations);
    ``clock`` stamps events (wall time) and ``timer`` measures timeouts and durations (the loop's clock);
    ``batches`` are batches an earlier run submitted (stage -> fingerprint, batch id, custom id),
    collected instead of sent again; ``memory`` keeps unchanged outputs; ``gates`` hold people's decisions;
    ``feedback`` are findings a resumed run's stages were sent back with; ``guard`` holds write scopes and
    output contracts; ``condition`` decides a stage's ``if`` and ``expand`` gives a ``foreach`` its items.
    """
    if executor is None:
        if runner_for is None:
            raise TypeError("execute() needs an executor or runner_for")
        executor = LocalExecutor(runner_for)
    checked = guard or NoGuard()
    scheduler = Scheduler(
        plan,
        max_rounds=options.max_rounds,
        round=options.round,
        feedback=feedback,
        only=options.only,
        approve_all=options.approve_all,
        scope=checked.scope,
        condition=condition,
        expand=expand,
    )
    run = Run(
        plan,
        scheduler,
        build_request,
        executor,
        listeners,
        options,
        price,
        clock,
        timer,
        memory or NoMemory(),
        gates or NoGates(),
        checked,
        batches or {},
    )
    if control is not None:
        control._attach(run)
    return await run.run()
