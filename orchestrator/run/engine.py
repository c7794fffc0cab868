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

A run with only gates left waiting ends ``waiting_approval`` (run it again once
they are decided), unless ``wait_at_gates``: a run that outlives its command
(on Temporal) waits for the decisions, woken by ``RunControl.nudge()``.
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
    Home,
    LocalHome,
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
    "Home",
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

    nudged: asyncio.Event | None = None

    def nudge(self) -> None:
        """Look for decisions on waiting gates now (one was just made), not at the next poll."""
        if self.nudged is not None:
            self.nudged.set()

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
        self.nudge()  # a run waiting at its gates stops waiting

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
        self.nudged = asyncio.Event()
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
                    if not (options.wait_at_gates and self.waiting_gates and not scheduler.halted):
                        break
                    await self._finished_or_nudged()  # nothing runs: a durable run waits for a person
                    await self._poll_gates()
                    continue
                for sid, outcome in await self._next_batch():
                    del running[sid]
                    scheduler.settle(sid, outcome, self.clock())
                    self.flush()
                await self._poll_gates()
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
            if self.waiting_gates:
                first = await self._finished_or_nudged()
                if first is None:
                    if await self._poll_gates() and len(self.tasks) < self.options.max_parallel:
                        return []  # a decision may have released stages: let the loop start them
                    continue
            else:
                first = await self.finished.get()
            batch = [first]
            while not self.finished.empty():
                batch.append(self.finished.get_nowait())
            index = self.scheduler.index
            return sorted(batch, key=lambda item: index[item[0]])

    async def _finished_or_nudged(self) -> tuple[str, StageOutcome] | None:
        """The next finished stage, or None once the poll interval passed or a decision was announced."""
        nudged = self.nudged
        assert nudged is not None
        if nudged.is_set():
            nudged.clear()
            return None
        getter = asyncio.ensure_future(self.finished.get())
        waker = asyncio.ensure_future(nudged.wait())
        try:
            await asyncio.wait((getter, waker), timeout=self.options.poll_interval, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waker.cancel()
            if not getter.done():
                getter.cancel()
        nudged.clear()
        if getter.done() and not getter.cancelled():
            return getter.result()
        return None

    # -- gates ---------------------------------------------------------------------------------------

    async def _poll_gates(self) -> bool:
        """Apply decisions people made while the run went on; whether any was."""
        decided = False
        for sid, stage_input in list(self.waiting_gates.items()):
            outcome = self.scheduler.outcomes[sid]
            decision = await self.home.decision(sid, stage_input.fingerprint, output_digest(outcome, stage_input))
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
        period = min(self.options.tick, shortest / 10)
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
        self._call(lambda run: run.stop())

    def fail(self, reason: str) -> None:
        """End the run failed with ``reason``: no new stages (the ones in flight finish)."""
        self._call(lambda run: run.fail(reason))

    def nudge(self) -> None:
        """A decision on a gate was just recorded: let a waiting run look for it now."""
        self._call(lambda run: run.nudge())

    def _call(self, action: Callable[[Run], None]) -> None:
        run, loop = self._run, self._loop
        if run is None or loop is None:
            return
        try:
            here = asyncio.get_running_loop() is loop
        except RuntimeError:
            here = False
        if here:  # on the run's own loop (a signal handler of a Temporal workflow): at once
            action(run)
        else:
            loop.call_soon_threadsafe(action, run)


async def execute(
    plan: Plan,
    *,
    build_request: RequestBuilder | None = None,
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
    home: Home | None = None,
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
    ``home`` replaces ``build_request``, ``memory`` and ``gates`` when they are answered elsewhere (a Temporal
    worker that holds the checkout).
    """
    if home is None:
        if build_request is None:
            raise TypeError("execute() needs build_request or home")
        home = LocalHome(build_request, memory or NoMemory(), gates or NoGates())
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
        home,
        executor,
        listeners,
        options,
        price,
        clock,
        timer,
        checked,
        batches or {},
    )
    if control is not None:
        control._attach(run)
    return await run.run()
