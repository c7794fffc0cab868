"""A run as a Temporal workflow: orchestrate's own engine and scheduler, with tries as activities.

``RunWorkflow`` runs ``engine.execute`` (the same loop and the same
``Scheduler`` as a local run) on the workflow's deterministic event loop. Its
seams are what change:

- ``TemporalExecutor`` sends each try to an activity: a stage that only calls
  the model goes to the shared queue (any worker), one that acts on the
  workspace (tools, commands, agent CLIs, offline replies) to the home queue;
- the home seam and the guard ask the home worker, through activities on its
  queue, for stage inputs, kept outputs, settled inputs, decisions and
  workspace checks: everything that reads the checkout is recorded in the
  workflow's history, so a replay asks nothing again;
- the ``if``, ``foreach`` and write scopes are pure functions of the compiled
  workflow, which the home rebuilds from its checkout and checks against the
  ticket's pin;
- events go to the home's state folder in order through ``orchestrate.record``,
  and to followers through the ``events`` query.

Signals: ``decided`` (a decision on a gate was recorded: look now) and ``stop``
(as Ctrl-C on a local run: stages in flight are cancelled and recorded).
The workflow runs only on the home worker (its task queue is the home queue),
with the SDK's sandbox off: determinism is this module's and the scheduler's.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Mapping, Set
from dataclasses import replace
from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError

from ..cost import Pricing
from ..errors import RunnerError
from ..events import Event, to_json
from ..fingerprint import Recalled
from ..run.engine import RunControl, execute
from ..run.guard import WorkspaceGuard
from ..run.opened import engine_options, workspace_guard
from ..run.outcomes import Decision, Instance, Progress, StageInput
from ..run.request import decide_condition, foreach_items, outcomes_read
from ..runners import AttemptRecord, BudgetExhausted, Meter, StageRequest, StageResult
from ..runners.batches import BATCH_TIMEOUT
from ..runners.registry import kind_of
from .home import HomeRun, HomeRuns
from .ticket import Ticket
from .tries import BUDGET, FAILURE
from .wire import (
    Wire,
    attempt_from_wire,
    decision_from_wire,
    event_to_wire,
    feedback_from_wire,
    input_from_wire,
    progress_to_wire,
    recalled_from_wire,
    request_to_wire,
)

__all__ = ["HOMES", "RunWorkflow"]

# The homes this process hosts, by checkout (set by the worker): the workflow runs on its home worker only.
HOMES: dict[str, HomeRuns] = {}

# The stage's own timeout is the engine's watchdog's to enforce (it cancels the try); this only bounds a try
# Temporal would otherwise wait on for ever, beyond the longest a batch may take.
_TRY_LIMIT = timedelta(seconds=BATCH_TIMEOUT + 3600)
_HOME_TIMEOUT = timedelta(minutes=2)  # a home that died mid-call is asked again after this
_HOME_RETRY = RetryPolicy(maximum_attempts=3, non_retryable_error_types=["PinError", "StateError", "UsageError"])


async def _on_home(ticket: Ticket, name: str, *args: Any) -> Any:
    """An activity on the run's home queue: the worker that holds the checkout answers it.

    Regular activities, not local ones: each is scheduled and completed in the workflow's history, so a
    replay meets them in the order they were asked even while several stages ask at once (local activities'
    markers follow completion order, which a replay can't reproduce)."""
    return await workflow.execute_activity(
        name,
        args=list(args),
        task_queue=ticket.home_queue,
        start_to_close_timeout=_HOME_TIMEOUT,
        retry_policy=_HOME_RETRY,
    )


POLL = 30.0  # seconds between looks for decisions nobody signalled (the ``decided`` signal comes at once)
TICK = 5.0  # the timeout watchdog's longest sleep: every sleep is a timer in the workflow's history


def _message(exc: BaseException) -> str:
    cause = exc.cause if isinstance(exc, ActivityError) and exc.cause is not None else exc
    return cause.message if isinstance(cause, ApplicationError) else str(cause)


class _Home:
    """Asks the home worker through activities on its queue (the seam ``outcomes.Home``); each call first hands
    the home the events not yet recorded, so most events reach the state folder without a call of their own."""

    def __init__(self, ticket: Ticket, run_id: str, reads: Mapping[str, Set[str]]) -> None:
        self.home_ticket = ticket
        self.ticket = ticket.to_wire()
        self.run_id = run_id
        self.reads = reads  # the stages whose outcomes each stage's request reads
        self.settles: set[str] = set()
        self.turn = asyncio.Lock()
        self.log: list[Wire] = []  # every event as logged (no outputs), for the ``events`` query
        self.pending: list[Wire] = []  # events (with outputs) the home has not been handed yet
        self.sent = 0
        self.sender: asyncio.Task[None] | None = None

    def on_event(self, event: Event) -> None:
        self.log.append(to_json(event))
        self.pending.append(event_to_wire(event))
        if self.sender is None or self.sender.done():
            self.sender = asyncio.create_task(self._send())

    async def _send(self) -> None:
        # A few turns of the loop first: a stage that just finished usually releases the next one, whose call
        # takes these events along (sleep(0) yields without a timer, so replays take the same turns).
        for _ in range(4):
            await asyncio.sleep(0)
        while self.pending:
            await self.call("orchestrate.record")

    async def drained(self) -> None:
        await workflow.wait_condition(lambda: not self.pending and (self.sender is None or self.sender.done()))

    async def call(self, name: str, *args: Any) -> Any:
        # One at a time, in the order asked: the home writes the events each call carries in order.
        async with self.turn:
            first, events = self.sent, self.pending
            self.pending = []
            result = await _on_home(self.home_ticket, name, self.ticket, self.run_id, first, events, *args)
            self.sent += len(events)
            return result

    async def prepare(self, sid: str, progress: Progress, ran: Set[str]) -> tuple[StageInput, Recalled | str]:
        spec_id = sid.split("[", 1)[0]
        try:
            data = await self.call(
                "orchestrate.prepare", sid, progress_to_wire(progress, self.reads[spec_id]), sorted(ran)
            )
        except ActivityError as exc:
            raise RunnerError(_message(exc)) from None
        stage_input, settles = input_from_wire(data["input"])
        if settles:
            self.settles.add(sid)
        else:
            self.settles.discard(sid)
        return stage_input, recalled_from_wire(data["recalled"])

    async def settled(self, sid: str, stage_input: StageInput) -> StageInput:
        if sid not in self.settles:
            return stage_input
        settled, _ = input_from_wire(await self.call("orchestrate.settled", sid))
        return settled

    async def decision(self, sid: str, fingerprint: str, output_sha256: str) -> Decision | None:
        return decision_from_wire(await self.call("orchestrate.decision", sid, fingerprint, output_sha256))


class _Guard:
    """Write scopes from the compiled workflow; the workspace checks around a try on the home."""

    def __init__(self, home: _Home, scopes: WorkspaceGuard) -> None:
        self.home = home
        self.scopes = scopes
        self.instances: dict[str, Instance | None] = {}

    def scope(self, stage: str, instance: Instance | None) -> tuple[str, ...]:
        self.instances[stage] = instance
        return self.scopes.scope(stage, instance)

    async def before(self, stage: str) -> object:
        if not self.scopes.checks(stage):
            return None  # nothing declared to check: no round trip to the home
        instance = self.instances.get(stage)
        wire = None if instance is None else vars(instance).copy()
        return await self.home.call("orchestrate.before", stage, wire)

    async def after(
        self, stage: str, token: object, output: str, data: dict[str, Any] | None, others: Set[str]
    ) -> tuple[dict[str, Any] | None, str | None]:
        if token is None:
            return data, None
        checked = await self.home.call("orchestrate.after", stage, token, output, data, sorted(others))
        return checked["data"], checked["problem"]


class _Executor:
    """Each try as an ``orchestrate.try`` activity, on the shared queue or the home's (see the module docstring)."""

    def __init__(self, ticket: Ticket, run_id: str, home: HomeRun) -> None:
        self.ticket = ticket
        self.wire = ticket.to_wire()
        self.run_id = run_id
        self.plan = home.prepared.compiled.plan
        self.pricing = dict(self.plan.workflow.pricing)

    def _remote(self, request: StageRequest) -> bool:
        """Whether any worker can run it: it only calls the model (no tools, no command, no batch)."""
        runner = self.plan.runner_for(request.stage_id.split("[", 1)[0])
        return (
            bool(runner)
            and kind_of(runner).calls_api
            and not request.tools
            and request.command is None
            and not request.batch
            and not self.ticket.offline
        )

    async def run_try(self, stage: str, request: StageRequest, meter: Meter) -> StageResult:
        allowance = await meter.hold() if meter.hold is not None else math.inf
        remote = self._remote(request)
        spec = {
            "ticket": self.wire,
            "run_id": self.run_id,
            "request": request_to_wire(request),
            "home": not remote,
            "allowance": None if math.isinf(allowance) else allowance,
            "pricing": self.pricing,
            "batch": list(meter.batch) if meter.batch else None,
        }
        try:
            result = await workflow.execute_activity(
                "orchestrate.try",
                spec,
                task_queue=self.ticket.queue if remote else self.ticket.home_queue,
                start_to_close_timeout=_TRY_LIMIT,
                heartbeat_timeout=timedelta(seconds=self.ticket.heartbeat),
                retry_policy=RetryPolicy(
                    initial_interval=timedelta(seconds=1),
                    maximum_attempts=5,
                    non_retryable_error_types=[FAILURE, BUDGET],
                ),
            )
        except ActivityError as exc:
            cause = exc.cause
            if isinstance(cause, ApplicationError) and cause.details:
                details = cause.details[0]
                self._report(meter, details.get("attempts", []), details.get("batches", []))
                if cause.type == BUDGET:
                    raise BudgetExhausted(details["message"]) from None
                raise RunnerError(details["message"]) from None
            raise RunnerError(f"the try was lost: {_message(exc)}") from None
        self._report(meter, result["attempts"], result["batches"])
        if meter.tool is not None:
            for name, started, duration, error in result.get("tools", []):
                meter.tool(name, started, duration, error)
        return StageResult(result["output"], result["data"], result["stop_reason"])

    @staticmethod
    def _report(meter: Meter, attempts: list[Wire], batches: list[list[str]]) -> None:
        for batch_id, custom_id in batches:
            if meter.batched is not None:
                meter.batched(batch_id, custom_id)
        for data in attempts:
            attempt: AttemptRecord = attempt_from_wire(data)
            meter(attempt)


@workflow.defn(name="orchestrate.run")
class RunWorkflow:
    def __init__(self) -> None:
        self.control = RunControl()
        self.home: _Home | None = None

    @workflow.signal(name="decided")
    def decided(self) -> None:
        """A decision on a gate was recorded in the checkout: look for it now."""
        self.control.nudge()

    @workflow.signal(name="stop")
    def stop(self) -> None:
        """Stop as Ctrl-C stops a local run: nothing new starts, stages in flight are cancelled and recorded."""
        self.control.stop()

    @workflow.query(name="events")
    def events(self, since: int) -> list[Wire]:
        return self.home.log[since:] if self.home is not None else []

    @workflow.run
    async def run(self, ticket_data: Wire) -> Wire:
        ticket = Ticket.from_wire(ticket_data)
        homes = HOMES.get(ticket.root)
        if homes is None:  # a workflow task reached a worker that is not this checkout's home
            raise ApplicationError(f"this worker is not the home of {ticket.root}", type="NotHome")
        try:
            opened = await _on_home(ticket, "orchestrate.open", ticket_data)
        except ActivityError as exc:
            return {"status": "error", "error": _message(exc)}
        home = homes.prepared(ticket)
        prepared = home.prepared
        plan = prepared.compiled.plan
        reads = {sid: outcomes_read(prepared, sid) for sid in plan.order}
        self.home = link = _Home(ticket, opened["run_id"], reads)
        options = replace(
            engine_options(prepared, opened["run_id"], opened["spent_usd"], opened["round"], opened["resumed"]),
            poll_interval=POLL,
            tick=TICK,
            wait_at_gates=True,
        )
        try:
            outcome = await execute(
                plan,
                executor=_Executor(ticket, opened["run_id"], home),
                home=link,
                listeners=[link],
                options=options,
                price=Pricing(plan.workflow.pricing),
                clock=lambda: workflow.now().timestamp(),
                feedback=feedback_from_wire(opened["feedback"]),
                control=self.control,
                guard=_Guard(link, workspace_guard(prepared)),
                condition=decide_condition(prepared),
                expand=foreach_items(prepared),
                batches={sid: (b[0], b[1], b[2]) for sid, b in opened["batches"].items()},
            )
        finally:
            await link.drained()
            await _on_home(ticket, "orchestrate.close", ticket_data)
        return {
            "status": outcome.status,
            "note": outcome.note,
            "waiting": list(outcome.waiting),
            "cost_usd": outcome.cost_usd,
            "run_id": opened["run_id"],
        }
