"""The ``orchestrate state`` commands' view of a run: the run's ``Scheduler`` stepped one command at a time.

``Driver`` is one command's view of a task, taken under the task's lock: the
prepared run, the state recovered from the folder, the scheduler restored from
that state, and a ``StateStore`` that writes each event before the next is
decided. A command records its fact (``start``, ``finish``) with both;
``settle`` then lets the scheduler decide everything that follows without
anyone acting, exactly as in ``orchestrate run``: ``if`` decided, ``foreach``
expanded, approval gates raised or decided, instances combined, failures
skipping what needs them, audit rounds sending work back, and the run's
status once nothing can move. It never runs a stage, prints or reads the
environment.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from ..audit import Finding
from ..events import Event, RunFinished, RunStarted, StageFailed, StageStarted, StageSucceeded
from ..fingerprint import digest
from ..runners import Usage
from ..state.approvals import Approvals
from ..state.keys import approval_key
from ..state.model import RunState
from ..state.report import render_markdown
from ..state.store import StateStore
from .options import PreparedRun
from .outcomes import Decision, Instance, Progress, StageInput, StageOutcome
from .request import decide_condition, foreach_items, request_builder
from .resumed import Resumed
from .session import workspace_manifests

__all__ = ["Driver", "Step", "busy", "epoch", "rejected_notes"]


@dataclass(frozen=True)
class Step:
    """Where a driven run stands after a command."""

    state: RunState
    folder: Path
    ready: tuple[str, ...]  # may be started now
    running: tuple[str, ...]
    waiting: tuple[str, ...]  # wait for ``orchestrate approve|reject``
    failed: tuple[str, ...]
    agents: dict[str, str] = field(default_factory=dict)  # stage -> the generated subagent that runs it

    @property
    def finished(self) -> bool:
        return self.state.status not in ("running", "waiting_approval")


class Driver:
    """One command's view of the task, under its lock: the prepared run, the state, a store to record in, and
    the run's ``Scheduler`` restored from the state (each fact a command records goes to both)."""

    def __init__(
        self, prepared: PreparedRun, state: RunState, clock: Callable[[], float], *, snapshot: bool = False
    ) -> None:
        self.prepared = prepared
        self.plan = prepared.compiled.plan
        self.state = state
        self.clock = clock
        # The state as read needs no rewrite; what changes is written when the command is done.
        self.store = StateStore(prepared.folder, state, render_markdown, snapshot=snapshot)
        self.build = request_builder(prepared, rejected_notes(state), workspace_manifests(prepared))
        self.approvals = Approvals(prepared.folder, state, approval_key(prepared.keys))
        self.agents = {a.agent: a.name for a in prepared.compiled.rendered if not a.coordinator}
        self.scheduler = Resumed(
            self.plan,
            self._read_progress(),
            {sid: s.instances for sid, s in state.stages.items() if s.instances},
            clock(),
            max_rounds=state.max_rounds,
            condition=decide_condition(prepared),
            expand=foreach_items(prepared),
        )
        self._ready: list[str] = []

    def emit(self, event: Event) -> None:
        self.store.on_event(event)

    def flush(self) -> None:
        """Record what the scheduler decided."""
        for event in self.scheduler.drain():
            self.emit(event)

    # -- reading the state ---------------------------------------------------------------------------

    def spec(self, sid: str) -> Any:
        stage = self.state.stages[sid]
        return self.plan.stages[stage.instance_of or sid]

    def released(self, sid: str) -> bool:
        """Whether stages that need ``sid`` may go on."""
        return self.scheduler.released(sid)

    def _read_progress(self) -> Progress:
        """What the request builder reads, from the state folder: outputs, decisions, findings, instances."""
        outcomes: dict[str, StageOutcome] = {}
        repository = self.prepared.repository
        for sid, stage in self.state.stages.items():
            output, data = "", None
            if stage.status == "succeeded" and stage.output:
                output = repository.output(sid) or ""
                data = repository.data(sid)
            fingerprint = stage.fingerprint or ""
            if stage.status == "waiting_approval" and stage.approval is not None:
                fingerprint = stage.approval.fingerprint
            outcomes[sid] = StageOutcome(
                stage.status, output, data, stage.error, conditional=stage.conditional, fingerprint=fingerprint
            )
        decisions = {
            sid: Decision(s.approval.status == "approved", s.approval.note, s.approval.by or "")
            for sid, s in self.state.stages.items()
            if s.approval is not None and s.approval.status in ("approved", "rejected")
        }
        feedback: dict[str, list[Finding]] = {}
        if self.state.audit is not None and self.state.audit.verdict == "fail":
            # A stage done again after a failed audit (sent back, or started again by hand) is told why.
            for finding in self.state.audit.findings:
                feedback.setdefault(finding.stage, []).append(finding)
        instances: dict[str, Instance] = {}
        for sid, stage in self.state.stages.items():
            if stage.instance_of is not None:
                parent = self.state.stages[stage.instance_of]
                index = parent.instances.index(sid) if sid in parent.instances else 0
                instances[sid] = Instance(stage.instance_of, index, sid[len(stage.instance_of) + 1 : -1], stage.item)
        return Progress(outcomes, feedback, decisions, self.state.round, instances)

    def stage_input(self, sid: str) -> StageInput:
        return self.build(sid, self.scheduler.progress)

    # -- facts a command records ---------------------------------------------------------------------

    def start(self, sid: str, reason: str) -> None:
        """``sid`` starts (again): what an earlier outcome of it released is reopened."""
        current = self.state.stages[sid]
        again = current.status in ("failed", "skipped", "interrupted", "succeeded")
        self.scheduler.started(sid)
        if again:
            self.scheduler.restart(sid, self.clock())
            self.flush()
        self.emit(StageStarted(self.clock(), sid, current.agent, current.model, reason, self.state.round))

    def finish(self, sid: str, outcome: StageOutcome, stage_input: StageInput | None = None) -> None:
        """``sid`` succeeded with ``outcome`` (its gate raised) or failed."""
        now = self.clock()
        current = self.state.stages[sid]
        duration = round(now - epoch(current.started), 3) if current.started else 0.0
        if outcome.status == "failed":
            self.emit(StageFailed(now, sid, duration, outcome.error or "failed"))
        else:
            assert stage_input is not None
            output_sha = digest(outcome.output, 64)
            self.emit(
                StageSucceeded(
                    now,
                    sid,
                    duration,
                    Usage(),
                    0.0,
                    outcome.output,
                    outcome.data,
                    stage_input.fingerprint,
                    dict(stage_input.inputs),
                    output_sha,
                )
            )
            if self.spec(sid).gated and current.instance_of is None:
                decision = self.approvals.decision(sid, stage_input.fingerprint, output_sha)
                outcome = self.scheduler.gate(
                    sid, outcome, stage_input.fingerprint, output_sha, decision, now, f"stages/{sid}.md"
                )
        self.scheduler.settle(sid, outcome, now)
        self.flush()

    # -- settling ------------------------------------------------------------------------------------

    def settle(self) -> None:
        """Record everything that follows from the state without anyone acting (see the module docstring)."""
        scheduler = self.scheduler
        self.flush()  # what restoring found (a stage whose need can no longer release it is skipped)
        while True:
            moved = False
            ready = scheduler.take_all(self.clock())
            self.flush()
            self._ready = []
            for sid in ready:
                if self.spec(sid).kind != "approval":
                    self._ready.append(sid)
                    continue
                scheduler.started(sid)  # a pure approval gate: raised (or decided) now
                stage_input = self.stage_input(sid)
                fingerprint = stage_input.fingerprint
                decision = self.approvals.decision(sid, fingerprint, "")
                outcome = StageOutcome("succeeded", fingerprint=fingerprint)
                outcome = scheduler.gate(sid, outcome, fingerprint, "", decision, self.clock())
                scheduler.settle(sid, outcome, self.clock())
                self.flush()
                moved = True
            for sid in list(scheduler.gates):
                approval = self.state.stages[sid].approval
                if approval is None:
                    continue
                decision = self.approvals.decision(sid, approval.fingerprint, approval.output_sha256)
                if decision is not None:
                    scheduler.decide(sid, decision, self.clock())
                    self.flush()
                    moved = True
            if not moved:
                break
        self._finish_or_reopen()

    def ready(self) -> list[str]:
        return list(self._ready)

    def _finish_or_reopen(self) -> None:
        status = self.scheduler.status()
        if status == self.state.status:
            return
        if status == "running":
            self.emit(
                RunStarted(
                    self.clock(),
                    self.state.run_id,
                    self.state.workflow,
                    self.state.task,
                    tuple(self.plan.order),
                    self.state.max_parallel,
                    resumed=True,
                    round=self.state.round,
                )
            )
            return
        stages = self.state.stages.values()
        self.emit(
            RunFinished(
                self.clock(),
                status,
                round(self.clock() - epoch(self.state.started), 3),
                Usage(),
                self.state.cost_usd,
                self.state.audit.verdict if self.state.audit is not None else None,
                tuple(s.id for s in stages if s.status == "failed"),
                tuple(s.id for s in stages if s.status == "skipped"),
                tuple(s.id for s in stages if s.status == "waiting_approval"),
            )
        )

    def step(self) -> Step:
        stages = self.state.stages.values()
        return Step(
            state=self.state,
            folder=self.prepared.folder,
            ready=tuple(self.ready()),
            running=tuple(s.id for s in stages if s.status == "running" and not s.instances),
            waiting=tuple(s.id for s in stages if s.status == "waiting_approval"),
            failed=tuple(s.id for s in stages if s.status == "failed"),
            agents={sid: self.agents.get(self.spec(sid).agent or "", "") for sid in self.state.stages},
        )


def busy(drive: Driver, sid: str) -> bool:
    """Whether ``sid`` (or one of its instances) is running or waiting for approval."""
    return any(
        s.status in ("running", "waiting_approval")
        for s in drive.state.stages.values()
        if s.id == sid or s.instance_of == sid
    )


def rejected_notes(state: RunState) -> dict[str, str]:
    return {
        sid: s.approval.note
        for sid, s in state.stages.items()
        if s.approval is not None and s.approval.status == "rejected"
    }


def epoch(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
