"""The rules of a run, once: pure, synchronous, no asyncio, clock or I/O.

A ``Scheduler`` holds where each stage of a plan stands and answers what
follows. It is told facts (a stage finished with this outcome; a person
decided this gate; the run must stop) and records the decisions they lead to
as events in ``events``, which its caller drains, stamps nothing onto and
passes on: the time of each fact comes in with it.

The rules it owns:

- **ready**: a stage is ready once each of its needs succeeded, was skipped by
  its own ``if``, or failed with ``continue_on_failure``; the ready stage
  earliest in the plan's order goes first, and one whose write scope overlaps a
  running stage's waits (write-scope admission);
- **if and foreach**: decided as a stage becomes ready (``condition`` and
  ``expand`` are given by the caller and read only outputs); a false ``if``
  skips the stage and still releases what needs it; a ``foreach`` stage
  becomes its instances and succeeds once all of them have;
- **failure**: a failed stage skips everything downstream, with the reason,
  unless it has ``continue_on_failure``;
- **gates**: a gated stage's output (or a pure approval stage) waits for a
  person's decision unless one is at hand (or ``approve_all``); a rejection
  fails it;
- **audit rounds**: a failed verdict whose findings name stages sends those
  stages, and what depends on them, back with the findings, up to
  ``max_rounds`` audits;
- **halting** (a stop, the budget, a state that can't be written): nothing new
  starts, and the run's status says why;
- **the run's status** once nothing more can move.

``orchestrate run`` (``engine``), the ``orchestrate state`` commands
(``driven``) and ``orchestrate plan`` (``forecast``) all drive this one class.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Mapping
from typing import Any, Literal

from ..audit import Finding, Verdict
from ..errors import OrchestrateError
from ..events import (
    ApprovalDecided,
    ApprovalRequested,
    AuditRound,
    Event,
    StageExpanded,
    StageFailed,
    StageReopened,
    StageSkipped,
)
from ..graph import Plan
from .admission import Admission, ScopeOf
from .fanout import FanOut, name_instances
from .outcomes import Decision, Instance, Progress, RunStatus, StageOutcome

__all__ = ["Condition", "Expander", "Halt", "Scheduler", "ScopeOf"]

# A stage's ``if``: the reason to skip it, or None to run it. Its ``foreach``: the items (None: not known, so
# the stage stands for its instances unexpanded, as ``plan`` takes it).
Condition = Callable[[str, Progress], "str | None"]
Expander = Callable[[str, Progress], Any]
Halt = Literal["stop", "budget", "failure"]

OPEN = ("pending", "interrupted")
DONE = ("succeeded", "failed", "skipped")
_RUNNING = StageOutcome("running")  # shared: a running stage has nothing of its own to hold yet


def _no_scope(sid: str, instance: Instance | None) -> tuple[str, ...]:
    return ()


class Scheduler:
    """Where each stage stands and what follows (see the module docstring)."""

    def __init__(
        self,
        plan: Plan,
        *,
        max_rounds: int = 1,
        round: int = 1,
        feedback: Mapping[str, list[Finding]] | None = None,
        only: frozenset[str] | None = None,
        approve_all: bool = False,
        scope: ScopeOf | None = None,
        condition: Condition | None = None,
        expand: Expander | None = None,
        progress: Progress | None = None,
    ) -> None:
        """A scheduler for a new run (``progress``: what the stages have to read, when given)."""
        self.plan = plan
        self.max_rounds = max_rounds
        self.only = only
        self.approve_all = approve_all
        self.condition = condition
        self.expand = expand
        self.events: list[Event] = []
        self.fanout = FanOut()
        self.index = {sid: (i, -1) for i, sid in enumerate(plan.order)}
        if progress is None:
            outcomes = {sid: StageOutcome("pending") for sid in plan.order}
            progress = Progress(outcomes, {k: list(v) for k, v in (feedback or {}).items()}, {}, round)
        self.progress = progress
        self.outcomes = progress.outcomes
        self.verdict: Verdict | None = None
        self.halted: dict[Halt, str] = {}
        self.gates: dict[str, tuple[str, str]] = {}  # waiting gate -> (fingerprint, output digest) decided on
        self.ready: list[tuple[tuple[int, int], str]] = []
        self.waiting: dict[str, int] = {}
        self.running: set[str] = set()
        self.admission = Admission(scope or _no_scope, progress.instances.get)
        self.overlapped = self.admission.overlapped  # writers that ran alongside each writer
        self.waiting = {sid: len(plan.stages[sid].needs) for sid in plan.order}
        self.ready = [(self.index[sid], sid) for sid, n in self.waiting.items() if n == 0]
        heapq.heapify(self.ready)

    # -- facts in ------------------------------------------------------------------------------------

    def next(self, at: float) -> str | None:
        """The next stage to start, now marked running: the first ready one whose write scope overlaps no
        running stage's, after deciding the ``if`` and expanding the ``foreach`` of those before it (their
        events go to ``events``). None when nothing can start now (or the run is halted)."""
        while self.ready and not self.halted:
            sid = self._pop_admissible()
            if sid is None:
                return None
            if self._resolve(sid, at):
                self._admit(sid)
                return sid
        return None

    def gate(
        self,
        sid: str,
        outcome: StageOutcome,
        fingerprint: str,
        output_sha: str,
        decision: Decision | None,
        at: float,
        output_file: str | None = None,
    ) -> StageOutcome:
        """A gated stage's output (or a pure approval stage) is ready for a person: decide it with
        ``decision`` (or ``approve_all``), else it waits. Returns the outcome to ``settle``."""
        if decision is None and self.approve_all:
            decision = Decision(True, "", "--approve-all")
        if decision is not None:
            return self._decided(sid, outcome, fingerprint, decision, at)
        stage = self.plan.stages[sid]
        self.events.append(ApprovalRequested(at, sid, stage.approval_message, fingerprint, output_sha, output_file))
        self.gates[sid] = (fingerprint, output_sha)
        outcome.status = "waiting_approval"
        return outcome

    def decide(self, sid: str, decision: Decision, at: float) -> None:
        """A person decided the waiting gate ``sid``."""
        fingerprint, _ = self.gates.pop(sid)
        self.settle(sid, self._decided(sid, self.outcomes[sid], fingerprint, decision, at), at)

    def settle(self, sid: str, outcome: StageOutcome, at: float) -> None:
        """Record a stage's outcome and release, skip, combine or send back what follows from it."""
        self.outcomes[sid] = outcome
        self.running.discard(sid)
        self.admission.leave(sid)
        if sid in self.fanout.parent_of:  # an instance: its stage settles once all of its instances have
            parent = self.fanout.settle(sid)
            if parent is not None:
                self.settle(parent, self._combine(parent, at), at)
            return
        stage = self.plan.stages[sid]
        if outcome.conditional:
            self._release(sid)
        elif outcome.status == "succeeded":
            if sid == self.plan.audit_stage and self._audit_sends_back(outcome, at):
                return
            self._release(sid)
        elif outcome.status == "failed":
            if stage.continue_on_failure:
                self._release(sid)
            else:
                self._skip_downstream(sid, at)

    def halt(self, why: Halt, note: str = "") -> None:
        """Start nothing more: stopped (a signal), out of budget, or failed (``note`` says why)."""
        self.halted.setdefault(why, note)

    def drain(self) -> list[Event]:
        """The events decided since the last drain, in order."""
        out, self.events = self.events, []
        return out

    # -- answers -------------------------------------------------------------------------------------

    def spec_id(self, sid: str) -> str:
        return self.fanout.parent_of.get(sid, sid)

    def released(self, sid: str) -> bool:
        """Whether stages that need ``sid`` may go on."""
        outcome = self.outcomes[sid]
        if outcome.status == "succeeded" or (outcome.status == "skipped" and outcome.conditional):
            return True
        return outcome.status == "failed" and self.plan.stages[self.spec_id(sid)].continue_on_failure

    @property
    def note(self) -> str:
        """Why the run stopped early, in words ("" when it did not)."""
        return self.halted.get("failure") or self.halted.get("budget") or ""

    def status(self) -> RunStatus | Literal["running"]:
        """The run's status: ``running`` while a stage runs or may start."""
        if "failure" in self.halted:
            return "failed"
        if "stop" in self.halted:
            return "interrupted"
        if "budget" in self.halted:
            return "budget_exceeded"
        if self.running or any(self.outcomes[sid].status in OPEN for _, sid in self.ready):
            return "running"
        if any(o.status == "waiting_approval" for o in self.outcomes.values()):
            return "waiting_approval"
        if self.only is not None:
            return "partial" if all(self.outcomes[sid].status == "succeeded" for sid in self.only) else "failed"
        if not all(self.released(sid) for sid in self.plan.order):
            return "failed"
        return "succeeded" if self.verdict is not None and self.verdict.verdict == "pass" else "failed"

    def with_status(self, *statuses: str) -> tuple[str, ...]:
        return tuple(sid for sid in self.plan.order if self.outcomes[sid].status in statuses)

    # -- the rules -----------------------------------------------------------------------------------

    def _admit(self, sid: str) -> None:
        self.outcomes[sid] = _RUNNING
        self.running.add(sid)
        self.admission.enter(sid)

    def _pop_admissible(self) -> str | None:
        """The first ready stage whose write scope overlaps no running stage's; the others stay ready."""
        blocked: list[tuple[tuple[int, int], str]] = []
        found: str | None = None
        while self.ready:
            entry = heapq.heappop(self.ready)
            sid = entry[1]
            if self.outcomes[sid].status not in OPEN:
                continue
            if self.admission.held(sid):
                blocked.append(entry)
                continue
            found = sid
            break
        for entry in blocked:
            heapq.heappush(self.ready, entry)
        return found

    def _resolve(self, sid: str, at: float) -> bool:
        """Decide a ready stage's ``if`` and expand its ``foreach``; True when it is to be started, False
        when it needed no start of its own (skipped, failed to decide, or replaced by its instances)."""
        if sid in self.fanout.parent_of:
            return True
        stage = self.plan.stages[sid]
        if stage.condition is not None and self.condition is not None:
            try:
                skip = self.condition(sid, self.progress)
            except OrchestrateError as exc:
                self._fail_now(sid, exc.message, at)
                return False
            if skip is not None:
                self.events.append(StageSkipped(at, sid, skip, True))
                self.settle(sid, StageOutcome("skipped", error=skip, conditional=True), at)
                return False
        if stage.foreach is None or self.expand is None:
            return True
        try:
            items = self.expand(sid, self.progress)
            if items is None:  # not known: the stage stands for its instances
                return True
            instances = name_instances(sid, items, stage.foreach_key)
        except (OrchestrateError, ValueError) as exc:
            self._fail_now(sid, exc.message if isinstance(exc, OrchestrateError) else str(exc), at)
            return False
        ids = self.fanout.add(sid, instances)
        self.events.append(StageExpanded(at, sid, tuple(ids), tuple(i.item for i in instances)))
        self.outcomes[sid] = StageOutcome("running")
        for iid, instance in zip(ids, instances, strict=True):
            self.progress.instances[iid] = instance
            self.outcomes[iid] = StageOutcome("pending")
            self.index[iid] = (self.index[sid][0], instance.index)
            self.admission.forget(iid)
            heapq.heappush(self.ready, (self.index[iid], iid))
        if not ids:
            self.settle(sid, self._combine(sid, at), at)
        return False

    def _fail_now(self, sid: str, error: str, at: float) -> None:
        self.events.append(StageFailed(at, sid, 0.0, error))
        self.settle(sid, StageOutcome("failed", error=error), at)

    def _combine(self, sid: str, at: float) -> StageOutcome:
        """A foreach stage's outcome from its instances', recorded like any stage's."""
        outcome, event = self.fanout.combined(sid, self.outcomes, at)
        self.events.append(event)
        return outcome

    def _release(self, sid: str) -> None:
        for dependent in self.plan.dependents.get(sid, ()):
            self.waiting[dependent] -= 1
            if self.waiting[dependent] == 0 and self.outcomes[dependent].status in OPEN:
                heapq.heappush(self.ready, (self.index[dependent], dependent))

    def _skip(self, sid: str, reason: str, at: float) -> None:
        self.outcomes[sid] = StageOutcome("skipped", error=reason)
        self.events.append(StageSkipped(at, sid, reason))

    def _skip_downstream(self, failed: str, at: float) -> None:
        how = self.outcomes[failed].status
        todo = [(d, failed, how) for d in self.plan.dependents[failed]]
        while todo:
            sid, cause, why = todo.pop(0)
            if self.outcomes[sid].status not in OPEN:
                continue
            self._skip(sid, f"needs {cause}, which {'failed' if why == 'failed' else 'was skipped'}", at)
            todo.extend((d, sid, "skipped") for d in self.plan.dependents[sid])

    def _decided(
        self, sid: str, outcome: StageOutcome, fingerprint: str, decision: Decision, at: float
    ) -> StageOutcome:
        self.events.append(ApprovalDecided(at, sid, decision.approved, decision.note, decision.by, fingerprint))
        self.progress.decisions[sid] = decision
        if decision.approved:
            outcome.status = "succeeded"
            outcome.error = None
        else:
            outcome.status = "failed"
            outcome.error = "rejected" + (f": {decision.note}" if decision.note else "")
        return outcome

    def _reopen(self, sid: str) -> None:
        self.outcomes[sid] = StageOutcome("pending")
        self.fanout.reopen(sid)

    def _audit_sends_back(self, outcome: StageOutcome, at: float) -> bool:
        """After an audit: record the round; on a failed verdict with rounds left, send work back."""
        verdict = Verdict.model_validate(outcome.data) if outcome.data is not None else None
        self.verdict = verdict
        if verdict is None:
            return False
        round_ = self.progress.round
        targets = rework_of(self.plan, verdict, self.spec_id) if round_ < self.max_rounds else set()
        rework = tuple(s for s in self.plan.order if s in targets)
        self.events.append(AuditRound(at, round_, verdict.verdict, verdict.summary, len(verdict.findings), rework))
        if not rework:
            return False
        self.progress.round = round_ + 1
        self.progress.feedback = {}
        for finding in verdict.findings:
            if self.spec_id(finding.stage) in targets:
                self.progress.feedback.setdefault(finding.stage, []).append(finding)
        again = targets | self.plan.descendants(targets)
        for sid in self.plan.order:
            if sid in again:
                self.events.append(StageReopened(at, sid, f"the audit of round {round_} sent it back"))
                self._reopen(sid)
        for sid in again:
            self.waiting[sid] = sum(1 for need in self.plan.stages[sid].needs if not self.released(need))
            if self.waiting[sid] == 0:
                heapq.heappush(self.ready, (self.index[sid], sid))
        return True


def rework_of(plan: Plan, verdict: Verdict, spec_id: Callable[[str], str]) -> set[str]:
    """The stages a failed verdict sends back: those its findings name that have an output (not the audit)."""
    if verdict.verdict != "fail":
        return set()
    named = {spec_id(f.stage) for f in verdict.findings}
    return {s for s in named if s in plan.stages and s != plan.audit_stage and plan.stages[s].kind != "approval"}
