"""The scheduler: runs a plan's stages on asyncio, each as soon as its last need succeeds.

There are no lock-step waves: a finished stage releases its dependents at
once, up to ``max_parallel`` stages run together, and the ready stage earliest
in the plan's order goes first (so ``max_parallel=1`` is one deterministic
topological order). All bookkeeping happens on the event loop's thread; the
engine emits events and never prints or writes files.

Per stage, in order: build the request; keep the earlier output if the memo
says nothing changed; else check the budgets, run it (with its ``retries`` and
``timeout``); then, for a gated stage, wait for a person's decision. Policies:

- a failed stage skips everything downstream, with the reason, unless it has
  ``continue_on_failure``; independent branches finish;
- a failed audit whose findings name stages sends those stages (and what
  depends on them) back with the findings, up to ``max_rounds`` audits;
- when the run's budget would be passed, no new stage starts and the run ends
  ``budget_exceeded`` once the stages in flight finish;
- ``stop()`` (a signal) cancels the stages in flight and ends the run
  ``interrupted``; what they spent is recorded.
"""

from __future__ import annotations

import asyncio
import heapq
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from .audit import Finding, Verdict, VerdictError, parse_verdict
from .contracts import check_reply
from .errors import OrchestrateError
from .events import (
    ApprovalDecided,
    ApprovalRequested,
    AttemptFinished,
    AuditRound,
    BatchSubmitted,
    Event,
    Listener,
    RunFinished,
    RunStarted,
    StageExpanded,
    StageFailed,
    StageRetrying,
    StageReused,
    StageSkipped,
    StageStarted,
    StageSucceeded,
)
from .fanout import FanOut, name_instances
from .fingerprint import Recalled, digest
from .graph import Plan
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
from .runners import AttemptRecord, BudgetExhausted, Meter, Runner, StageFailure, StageRequest, Usage
from .runners.batches import BATCH_TIMEOUT
from .scopes import scopes_overlap
from .spend import Purse

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

_RUNNING = StageOutcome("running")  # shared: a running stage has nothing of its own to hold yet

RequestBuilder = Callable[[str, Progress], StageInput]
# A stage's ``if``: the reason to skip it, or None to run it. Its ``foreach``: the list of items.
Condition = Callable[[str, Progress], "str | None"]
Expander = Callable[[str, Progress], Any]


def _no_condition(sid: str, progress: Progress) -> str | None:
    return None


def _no_items(sid: str, progress: Progress) -> Any:
    return []


def _add_cost(total: float | None, part: float | None) -> float | None:
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
        memory: Memory,
        gates: Gates,
        feedback: Mapping[str, list[Finding]],
        guard: Guard,
        condition: Condition,
        expand: Expander,
        batches: Mapping[str, tuple[str, str, str]],
    ) -> None:
        self.plan = plan
        self.build_request = build_request
        self.runner_for = runner_for
        self.listeners = listeners
        self.options = options
        self.price = price
        self.clock = clock
        self.memory = memory
        self.gates = gates
        self.guard = guard
        self.condition = condition
        self.expand = expand
        self.fanout = FanOut()
        self.scopes: dict[str, tuple[str, ...]] = {}
        self.conflicts: dict[tuple[str, str], bool] = {}
        self.overlapped: dict[str, set[str]] = {}  # writers that ran alongside each writer
        self.writing: set[str] = set()  # running stages with a write scope
        self.index = {sid: (i, -1) for i, sid in enumerate(plan.order)}
        self.models = {sid: plan.model_for(sid) for sid in plan.order}
        self.outcomes: dict[str, StageOutcome] = {sid: StageOutcome("pending") for sid in plan.order}
        self.progress = Progress(self.outcomes, {k: list(v) for k, v in feedback.items()}, {}, options.round)
        self.verdict: Verdict | None = None
        self.deadlines: dict[str, float] = {}
        self.timed_out: set[str] = set()
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.ran: set[str] = set()
        self.purse = Purse(options.budget_usd, options.spent_usd)
        self.batches = dict(batches)
        self.stopping = False
        self.failure = ""  # why the run must end failed whatever its stages do (its state can't be written)
        self.budget_note = ""
        self.waiting_gates: dict[str, StageInput] = {}
        self.waiting: dict[str, int] = {}
        self.ready: list[tuple[tuple[int, int], str]] = []
        self.finished: asyncio.Queue[tuple[str, StageOutcome]] = asyncio.Queue()

    def emit(self, event: Event) -> None:
        for listener in self.listeners:
            listener.on_event(event)

    def fail(self, reason: str) -> None:
        """Start no more stages (their work could not be kept); the run ends failed with ``reason``."""
        if not self.failure:
            self.failure = reason

    def stop(self) -> None:
        """Start no more stages; cancel those in flight (they record what they spent)."""
        if self.stopping:
            return
        self.stopping = True
        for task in self.tasks.values():
            task.cancel()

    # -- the loop ------------------------------------------------------------------------------------

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
                self.options.resumed,
                self.progress.round,
            )
        )
        self.waiting = {sid: len(self.plan.stages[sid].needs) for sid in self.plan.order}
        self.ready = [(self.index[sid], sid) for sid, count in self.waiting.items() if count == 0]
        heapq.heapify(self.ready)
        running = self.tasks
        status: RunStatus = "failed"
        watchdog = asyncio.create_task(self._watchdog()) if self._shortest_timeout() else None
        try:
            while True:
                while self.ready and len(running) < self.options.max_parallel and not self._halted():
                    next_sid = self._pop_ready()
                    if next_sid is None:  # every ready stage would write where a running one writes
                        break
                    if not self._dispatch(next_sid):
                        continue
                    if self._scope(next_sid):  # only writers can be blamed for, or cleared of, a change
                        for other in self.writing:
                            self.overlapped[other].add(next_sid)
                        self.overlapped[next_sid] = set(self.writing)
                        self.writing.add(next_sid)
                    running[next_sid] = asyncio.create_task(self._stage(next_sid), name=f"stage {next_sid}")
                if not running:
                    if self.ready and not self._halted():
                        continue
                    break
                batch = await self._next_batch()
                for sid, outcome in sorted(batch, key=lambda item: self.index[item[0]]):
                    del running[sid]
                    self.writing.discard(sid)
                    self._settle(sid, outcome)
                self._poll_gates()
            status = self._final_status()
        except asyncio.CancelledError:
            status = "interrupted"
            await self._cancel(running)
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
            waiting = tuple(s for s in self.plan.order if self.outcomes[s].status == "waiting_approval")
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
                    waiting,
                    self.failure or self.budget_note,
                )
            )
        note = self.failure or self.budget_note
        return RunOutcome(status, self.outcomes, self.verdict, usage, cost, duration, note, waiting)

    # -- what starts next ----------------------------------------------------------------------------

    def _spec_id(self, sid: str) -> str:
        return self.fanout.parent_of.get(sid, sid)

    def _scope(self, sid: str) -> tuple[str, ...]:
        if sid not in self.scopes:
            self.scopes[sid] = self.guard.scope(sid, self.progress.instances.get(sid))
        return self.scopes[sid]

    def _conflicts(self, a: str, b: str) -> bool:
        key = (a, b) if a < b else (b, a)
        if key not in self.conflicts:
            self.conflicts[key] = scopes_overlap(self._scope(a), self._scope(b))
        return self.conflicts[key]

    def _pop_ready(self) -> str | None:
        """The first ready stage whose write scope overlaps no running stage's; the others stay ready."""
        blocked: list[tuple[tuple[int, int], str]] = []
        found: str | None = None
        while self.ready:
            entry = heapq.heappop(self.ready)
            sid = entry[1]
            if self._scope(sid) and any(self._conflicts(sid, other) for other in self.writing):
                blocked.append(entry)
                continue
            found = sid
            break
        for entry in blocked:
            heapq.heappush(self.ready, entry)
        return found

    def _dispatch(self, sid: str) -> bool:
        """Decide a stage's ``if`` and expand its ``foreach`` before it takes a slot; False when it
        needs no task of its own (skipped, failed to decide, or replaced by its instances)."""
        if sid in self.fanout.parent_of:
            return True
        stage = self.plan.stages[sid]
        if stage.condition is not None:
            try:
                skip = self.condition(sid, self.progress)
            except OrchestrateError as exc:
                self._settle(sid, self._fail(sid, time.monotonic(), _Ledger(), exc.message))
                return False
            if skip is not None:
                self.emit(StageSkipped(self.clock(), sid, skip, True))
                self._settle(sid, StageOutcome("skipped", error=skip, conditional=True))
                return False
        if stage.foreach is None:
            return True
        try:
            instances = name_instances(sid, self.expand(sid, self.progress), stage.foreach_key)
        except (OrchestrateError, ValueError) as exc:
            message = exc.message if isinstance(exc, OrchestrateError) else str(exc)
            self._settle(sid, self._fail(sid, time.monotonic(), _Ledger(), message))
            return False
        ids = self.fanout.add(sid, instances)
        self.emit(StageExpanded(self.clock(), sid, tuple(ids), tuple(i.item for i in instances)))
        self.outcomes[sid] = StageOutcome("running")
        for iid, instance in zip(ids, instances, strict=True):
            self.progress.instances[iid] = instance
            self.outcomes[iid] = StageOutcome("pending")
            self.index[iid] = (self.index[sid][0], instance.index)
            self.models[iid] = self.models[sid]
            self.scopes.pop(iid, None)
            heapq.heappush(self.ready, (self.index[iid], iid))
        if not ids:
            self._settle(sid, self._combine(sid))
        return False

    def _combine(self, sid: str) -> StageOutcome:
        """A foreach stage's outcome from its instances', recorded like any stage's."""
        outcome = self.fanout.combine(sid, self.outcomes)
        members = self.fanout.members[sid]
        outcome.fingerprint = digest("\n".join(self.outcomes[i].fingerprint for i in members), 64)
        if outcome.status == "succeeded":
            self.emit(
                StageSucceeded(
                    self.clock(),
                    sid,
                    round(outcome.duration, 3),
                    outcome.usage,
                    outcome.cost_usd,
                    outcome.output,
                    outcome.data,
                    outcome.fingerprint,
                    {i: self.outcomes[i].fingerprint[:16] for i in members},
                    digest(outcome.output, 64),
                )
            )
        else:
            self.emit(StageFailed(self.clock(), sid, round(outcome.duration, 3), outcome.error or "failed"))
        return outcome

    def _halted(self) -> bool:
        return self.stopping or bool(self.budget_note) or bool(self.failure)

    async def _next_batch(self) -> list[tuple[str, StageOutcome]]:
        """The stages that finished; waits for at least one (polling gates meanwhile)."""
        while True:
            timeout = self.options.poll_interval if self.waiting_gates else None
            try:
                first = await asyncio.wait_for(self.finished.get(), timeout)
            except TimeoutError:
                self._poll_gates()
                if not self.tasks:  # a decision started nothing and nothing runs: let the loop decide
                    return []
                if self.ready and len(self.tasks) < self.options.max_parallel:
                    return []
                continue
            batch = [first]
            while not self.finished.empty():
                batch.append(self.finished.get_nowait())
            return batch

    def _settle(self, sid: str, outcome: StageOutcome) -> None:
        """Record a stage's outcome and release or skip what depends on it."""
        self.outcomes[sid] = outcome
        if sid in self.fanout.parent_of:  # an instance: its stage settles once all of its instances have
            parent = self.fanout.settle(sid)
            if parent is not None:
                self._settle(parent, self._combine(parent))
            return
        stage = self.plan.stages[sid]
        if outcome.conditional:
            self._release(sid)
        elif outcome.status == "succeeded":
            if sid == self.plan.audit_stage and self._audit_sends_back(outcome):
                return
            self._release(sid)
        elif outcome.status == "failed":
            if stage.continue_on_failure:
                self._release(sid)
            else:
                self._skip_downstream(sid)

    def _release(self, sid: str) -> None:
        for dependent in self.plan.dependents.get(sid, ()):
            self.waiting[dependent] -= 1
            if self.waiting[dependent] == 0 and self.outcomes[dependent].status == "pending":
                heapq.heappush(self.ready, (self.index[dependent], dependent))

    def _final_status(self) -> RunStatus:
        if self.failure:
            return "failed"
        if self.stopping:
            return "interrupted"
        if self.budget_note:
            return "budget_exceeded"
        statuses = {sid: self.outcomes[sid].status for sid in self.plan.order}
        if any(s == "waiting_approval" for s in statuses.values()):
            return "waiting_approval"
        if self.options.only is not None:
            ok = all(statuses[sid] == "succeeded" for sid in self.options.only)
            return "partial" if ok else "failed"
        for sid, status in statuses.items():
            if status == "succeeded" or self.outcomes[sid].conditional:
                continue
            if status == "failed" and self.plan.stages[sid].continue_on_failure:
                continue
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

    def _audit_sends_back(self, outcome: StageOutcome) -> bool:
        """After an audit: record the round; on a failed verdict with rounds left, send work back."""
        verdict = Verdict.model_validate(outcome.data) if outcome.data is not None else None
        self.verdict = verdict
        if verdict is None:
            return False
        round_ = self.progress.round
        targets: set[str] = set()
        if verdict.verdict == "fail" and round_ < self.options.max_rounds:
            audit = self.plan.audit_stage
            named = {self.fanout.parent_of.get(f.stage, f.stage) for f in verdict.findings}
            targets = {
                stage
                for stage in named
                if stage in self.plan.stages and stage != audit and self.plan.stages[stage].has_output
            }
        rework = tuple(s for s in self.plan.order if s in targets)
        self.emit(AuditRound(self.clock(), round_, verdict.verdict, verdict.summary, len(verdict.findings), rework))
        if not rework:
            return False
        self.progress.round = round_ + 1
        self.progress.feedback = {}
        for finding in verdict.findings:
            if self.fanout.parent_of.get(finding.stage, finding.stage) in targets:
                self.progress.feedback.setdefault(finding.stage, []).append(finding)
        again = targets | self.plan.descendants(targets)
        for sid in again:
            self.outcomes[sid] = StageOutcome("pending")
            self.fanout.reopen(sid)
        for sid in again:
            self.waiting[sid] = sum(1 for need in self.plan.stages[sid].needs if not self._released_by(need))
            if self.waiting[sid] == 0:
                heapq.heappush(self.ready, (self.index[sid], sid))
        return True

    def _released_by(self, sid: str) -> bool:
        outcome = self.outcomes[sid]
        if outcome.status == "succeeded":
            return True
        return outcome.status == "failed" and self.plan.stages[sid].continue_on_failure

    # -- gates ---------------------------------------------------------------------------------------

    def _poll_gates(self) -> None:
        """Apply decisions people made while the run went on."""
        for sid, stage_input in list(self.waiting_gates.items()):
            outcome = self.outcomes[sid]
            decision = self.gates.decision(sid, stage_input.fingerprint, _output_sha(outcome, stage_input))
            if decision is None:
                continue
            del self.waiting_gates[sid]
            self._settle(sid, self._decided(sid, outcome, stage_input, decision))

    def _gate(self, sid: str, outcome: StageOutcome, stage_input: StageInput) -> StageOutcome:
        output_sha = _output_sha(outcome, stage_input)
        decision = self.gates.decision(sid, stage_input.fingerprint, output_sha)
        if decision is None and self.options.approve_all:
            decision = Decision(True, "", "--approve-all")
        if decision is not None:
            return self._decided(sid, outcome, stage_input, decision)
        stage = self.plan.stages[sid]
        output_file = f"stages/{sid}.md" if stage_input.request is not None else None
        self.emit(
            ApprovalRequested(
                self.clock(), sid, stage.approval_message, stage_input.fingerprint, output_sha, output_file
            )
        )
        self.waiting_gates[sid] = stage_input
        outcome.status = "waiting_approval"
        return outcome

    def _decided(self, sid: str, outcome: StageOutcome, stage_input: StageInput, decision: Decision) -> StageOutcome:
        self.emit(
            ApprovalDecided(self.clock(), sid, decision.approved, decision.note, decision.by, stage_input.fingerprint)
        )
        self.progress.decisions[sid] = decision
        if decision.approved:
            outcome.status = "succeeded"
            outcome.error = None
        else:
            outcome.status = "failed"
            outcome.error = "rejected" + (f": {decision.note}" if decision.note else "")
        return outcome

    # -- one stage -----------------------------------------------------------------------------------

    async def _cancel(self, running: dict[str, asyncio.Task[None]]) -> None:
        for task in running.values():
            task.cancel()
        await asyncio.gather(*running.values(), return_exceptions=True)
        while not self.finished.empty():
            sid, outcome = self.finished.get_nowait()
            self.outcomes[sid] = outcome

    def _timeout_of(self, sid: str) -> float | None:
        stage = self.plan.stages[self._spec_id(sid)]
        if stage.timeout:
            return stage.timeout
        return max(self.options.stage_timeout or 0, BATCH_TIMEOUT) if stage.batch else self.options.stage_timeout

    def _shortest_timeout(self) -> float | None:
        values = [t for t in (self._timeout_of(sid) for sid in self.plan.order) if t]
        return min(values) if values else None

    async def _watchdog(self) -> None:
        """Cancel stages past their deadline. One task for all stages: cheaper than a timer per stage."""
        period = min(1.0, (self._shortest_timeout() or 10.0) / 10)
        while True:
            await asyncio.sleep(period)
            now = time.monotonic()
            for sid, deadline in list(self.deadlines.items()):
                if now >= deadline and sid in self.tasks:
                    del self.deadlines[sid]
                    self.timed_out.add(sid)
                    self.tasks[sid].cancel()

    async def _stage(self, sid: str) -> None:
        outcome = StageOutcome("interrupted", error="interrupted")
        try:
            outcome = await self._execute_stage(sid)
        finally:
            self.deadlines.pop(sid, None)
            self.finished.put_nowait((sid, outcome))

    async def _execute_stage(self, sid: str) -> StageOutcome:
        stage = self.plan.stages[self._spec_id(sid)]
        self.outcomes[sid] = _RUNNING
        started = time.monotonic()
        try:
            stage_input = self.build_request(sid, self.progress)
        except OrchestrateError as exc:
            return self._fail(sid, started, _Ledger(), exc.message)
        except Exception as exc:  # a bug building one request must fail its stage, not the run
            return self._fail(sid, started, _Ledger(), f"could not build the request: {type(exc).__name__}: {exc}")
        recalled = self.memory.recall(sid, stage_input.fingerprint, stage_input.inputs, self.ran)
        if not isinstance(recalled, Recalled) and sid in self.ran:  # again in this run: an audit round's rework
            findings = len(self.progress.feedback.get(sid, ()))
            recalled = (
                f"the audit sent it back with {findings} finding{'s' if findings != 1 else ''} "
                f"(round {self.progress.round})"
                if findings
                else f"what it needs was redone in audit round {self.progress.round}"
            )
        if isinstance(recalled, Recalled):
            outcome = StageOutcome(
                "succeeded",
                output=recalled.output,
                data=recalled.data,
                fingerprint=stage_input.fingerprint,
                reused=True,
            )
            self.emit(
                StageReused(
                    self.clock(),
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
            return self._gate(sid, outcome, stage_input) if stage.gated else outcome
        if self.options.only is not None and sid not in self.options.only:
            asked = ", ".join(sorted(self.options.only))
            reason = f"not run: only {asked} was asked for, and this stage can't be kept ({recalled})"
            self.emit(StageSkipped(self.clock(), sid, reason))
            return StageOutcome("skipped", error=reason)
        if stage_input.request is None:  # a pure gate: nothing to run
            self.ran.add(sid)
            return self._gate(sid, StageOutcome("succeeded", fingerprint=stage_input.fingerprint), stage_input)
        held = self._over_budget(sid, stage_input)
        if held:
            self.budget_note = held
            return StageOutcome("pending", error=held)
        self.ran.add(sid)
        outcome = await self._run_stage(sid, stage_input, recalled)
        if outcome.status == "succeeded" and stage.gated:
            # A person approves the output as recorded: its fingerprint over the workspace the stage left.
            return self._gate(sid, outcome, replace(stage_input, fingerprint=outcome.fingerprint))
        return outcome

    def _over_budget(self, sid: str, stage_input: StageInput) -> str:
        """Why the stage can't start within the run's budget even at its cheapest ("" when it may)."""
        purse = self.purse
        if purse.cap is None:
            return ""
        least = self._least(sid, stage_input)
        if purse.spent + least > purse.cap:
            return (
                f"the run's budget of ${purse.cap:.2f} would be exceeded: ${purse.spent:.4f} spent, and the next "
                f"stage costs at least ${least:.4f}"
            )
        return ""

    def _least(self, sid: str, stage_input: StageInput) -> float:
        return (self.price.least(self.models[sid], stage_input.min_tokens) or 0.0) if stage_input.min_tokens else 0.0

    def _fail(self, sid: str, started: float, spent: _Ledger, error: str, *, interrupted: bool = False) -> StageOutcome:
        outcome = StageOutcome(
            "interrupted" if interrupted else "failed",
            error=error,
            usage=spent.usage,
            cost_usd=spent.cost_usd,
            duration=time.monotonic() - started,
        )
        self.emit(StageFailed(self.clock(), sid, round(outcome.duration, 3), error, interrupted))
        return outcome

    def _meter(
        self, sid: str, model: str, spent: _Ledger, stage_budget: float | None, fingerprint: str
    ) -> tuple[Meter, Callable[[], None]]:
        """What the stage's runner reports to and reserves from (see ``runners.Meter``), and how to release
        a reservation a try left unsettled (one that ended before its request was reported)."""
        purse = self.purse
        held = [0.0]  # the reservation of the request in flight, settled by its attempt's report

        def report(attempt: AttemptRecord) -> None:
            cost = self.price.cost(attempt, model) if attempt.usage.total else 0.0  # a command costs nothing
            spent.usage = spent.usage + attempt.usage
            spent.cost_usd = _add_cost(spent.cost_usd, cost)
            purse.settle(held[0], cost or 0.0)
            held[0] = 0.0
            self.emit(AttemptFinished(self.clock(), sid, attempt, cost))

        async def reserve(input_tokens: int, max_output: int, batch: bool) -> None:
            worst = self.price.worst(model, input_tokens, max_output, batch) or 0.0
            if stage_budget is not None and (spent.cost_usd or 0.0) + worst > stage_budget:
                raise StageFailure(
                    f"the stage's budget of ${stage_budget:.2f} would be exceeded: ${spent.cost_usd or 0.0:.4f} "
                    f"spent, and its next request may cost up to ${worst:.4f}"
                )
            await purse.reserve(worst)
            held[0] = worst

        def batched(batch_id: str, custom_id: str) -> None:
            self.emit(BatchSubmitted(self.clock(), sid, batch_id, custom_id, fingerprint))

        def release() -> None:
            purse.settle(held[0], 0.0)
            held[0] = 0.0

        pending = self.batches.pop(sid, None)
        meter = Meter(
            report,
            reserve if purse.limited or stage_budget is not None else None,
            batched,
            (pending[1], pending[2]) if pending is not None and pending[0] == fingerprint else None,
        )
        return meter, release

    async def _run_stage(self, sid: str, stage_input: StageInput, reason: str) -> StageOutcome:
        stage = self.plan.stages[self._spec_id(sid)]
        request = stage_input.request
        assert request is not None
        model = self.models[sid]
        started = time.monotonic()
        spent = _Ledger()
        stage_budget = stage.budget.usd if stage.budget else None

        self.emit(StageStarted(self.clock(), sid, stage.agent or "", model, reason, self.progress.round))
        timeout = self._timeout_of(sid)
        tries = stage.retries + 1
        sent_back = False  # a malformed structured reply gets one more try beyond the stage's retries
        number = 0
        while number < tries:
            number += 1
            if timeout:
                self.deadlines[sid] = time.monotonic() + timeout
            error: str | None = None
            data: dict[str, Any] | None = None
            token: object = None
            reply_problem = False
            meter, release = self._meter(sid, model, spent, stage_budget, stage_input.fingerprint)
            try:
                token = await self.guard.before(sid)
                result = await self.runner_for(sid).run(request, meter)
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if sid in self.timed_out:  # the watchdog's cancel, not the user's: this try fails
                    self.timed_out.discard(sid)
                    if task is not None:
                        task.uncancel()
                    error = f"timed out after {timeout:g} s (retries included)"
                elif self.stopping:
                    if task is not None:
                        task.uncancel()
                    return self._fail(sid, started, spent, "interrupted", interrupted=True)
                else:
                    self._fail(sid, started, spent, "interrupted", interrupted=True)
                    raise
            except BudgetExhausted as exc:
                self.budget_note = exc.message
                return self._fail(sid, started, spent, f"stopped: {exc.message}", interrupted=True)
            except OrchestrateError as exc:
                error = exc.message
            except Exception as exc:  # a runner bug must fail its stage, not the whole run
                error = f"runner error: {type(exc).__name__}: {exc}"
            else:
                error, data = self._check_result(request, result.output, result.data)
                reply_problem = error is not None and not error.startswith(BLOCKED)
                if error is None:
                    checked, error = await self.guard.after(
                        sid, token, result.output, data, frozenset(self.overlapped.get(sid, ()))
                    )
                    data = checked if error is None else data
                if error is not None and not error.startswith(BLOCKED):
                    self.progress.contract[sid] = error
            finally:
                self.deadlines.pop(sid, None)
                release()
            if error is None:
                if stage_input.settle is not None:  # recorded as it left the workspace (see StageInput.settle)
                    stage_input = await asyncio.to_thread(stage_input.settle)
                output = _normal(result.output)
                duration = time.monotonic() - started
                outcome = StageOutcome(
                    "succeeded",
                    output=output,
                    data=data,
                    usage=spent.usage,
                    cost_usd=spent.cost_usd,
                    duration=duration,
                    fingerprint=stage_input.fingerprint,
                )
                self.emit(
                    StageSucceeded(
                        self.clock(),
                        sid,
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
            assert error is not None
            if number == tries and reply_problem and not sent_back:
                sent_back = True
                tries += 1
            if number == tries or self.stopping:
                break
            if stage_budget is not None and (spent.cost_usd or 0.0) + self._least(sid, stage_input) > stage_budget:
                error += f"; no retry: the stage's budget of ${stage_budget:.2f} is spent"
                break
            held = self._over_budget(sid, stage_input)
            if held:
                self.budget_note = held
                error += "; no retry: " + held
                break
            self.emit(StageRetrying(self.clock(), sid, number, error))
            if sid in self.progress.contract:  # the next try is told what was wrong with this one
                try:
                    stage_input = self.build_request(sid, self.progress)
                except OrchestrateError as exc:
                    error = exc.message
                    break
                request = stage_input.request
                assert request is not None
        assert error is not None
        return self._fail(sid, started, spent, error + (f" (after {number} tries)" if number > 1 else ""))

    def _check_result(self, request: StageRequest, output: str, data: dict[str, Any] | None) -> tuple[str | None, Any]:
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


BLOCKED = "the agent reported itself blocked: "


def _output_sha(outcome: StageOutcome, stage_input: StageInput) -> str:
    """What a decision on a gate is bound to besides its fingerprint: the output a person saw (none for a pure
    approval stage, which has no output)."""
    return digest(outcome.output, 64) if stage_input.request is not None else ""


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


class RunControl:
    """A handle to stop a run from outside it (a signal handler), safely from any thread."""

    def __init__(self) -> None:
        self._run: _Run | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.requested = False

    def _attach(self, run: _Run) -> None:
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
    runner_for: Callable[[str], Runner],
    listeners: Sequence[Listener],
    options: EngineOptions,
    price: Pricer,
    clock: Callable[[], float] = time.time,
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
    ``runner_for`` picks the runner of a stage; ``price`` turns attempts into USD (and a request's worst
    case, for the budget's reservations); ``batches`` are batches an earlier run submitted (stage ->
    fingerprint, batch id, custom id), collected instead of sent again;
    ``memory`` keeps unchanged outputs; ``gates`` hold people's decisions;
    ``feedback`` are findings a resumed run's stages were sent back with;
    ``guard`` holds write scopes and output contracts; ``condition`` decides a
    stage's ``if`` and ``expand`` gives a ``foreach`` stage its items.
    """
    run = _Run(
        plan,
        build_request,
        runner_for,
        listeners,
        options,
        price,
        clock,
        memory or NoMemory(),
        gates or NoGates(),
        feedback or {},
        guard or NoGuard(),
        condition or _no_condition,
        expand or _no_items,
        batches or {},
    )
    if control is not None:
        control._attach(run)
    return await run.run()
