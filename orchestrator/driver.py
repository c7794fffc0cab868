"""The bookkeeping of a run driven by hand: what its state folder says, and what follows from it.

``Driver`` is one ``orchestrate state`` command's view of a task, taken under
the task's lock: the prepared run, the state recovered from the folder, and a
``StateStore`` that writes each event before the next is decided. ``settle``
records everything that follows without anyone acting, as the engine does
between stages: a stage whose needs are done has its ``if`` decided (false:
skipped), its ``foreach`` expanded into instances, or its approval gate raised;
a gate decided with ``orchestrate approve`` is applied; a foreach stage whose
instances have all finished succeeds or fails; a failed stage skips what needs
it; and once nothing can move, the run finishes with the audit's verdict.
It never runs a stage, prints or reads the environment.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from .approvals import Approvals
from .audit import Finding, Verdict
from .engine import Decision
from .errors import OrchestrateError
from .events import (
    ApprovalDecided,
    ApprovalRequested,
    AuditRound,
    Event,
    RunFinished,
    RunStarted,
    StageExpanded,
    StageFailed,
    StageReopened,
    StageSkipped,
    StageSucceeded,
)
from .fanout import FanOut, name_instances
from .fingerprint import digest
from .outcomes import Instance, Progress, StageInput, StageOutcome
from .prompts import decide_condition, foreach_items, request_builder
from .report import render_markdown
from .run import PreparedRun, workspace_manifests
from .runners import Usage
from .state import RunState, StateStore

__all__ = ["Driver", "Step", "audit_round", "busy", "epoch", "rejected_notes", "reopen_downstream"]

_DONE = frozenset({"succeeded", "failed", "skipped"})


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
    """One command's view of the task, under its lock: the prepared run, the state, and a store to record in."""

    def __init__(
        self, prepared: PreparedRun, state: RunState, clock: Callable[[], float], *, snapshot: bool = False
    ) -> None:
        self.prepared = prepared
        self.plan = prepared.compiled.plan
        self.state = state
        self.clock = clock
        # The state as read needs no rewrite; what changes is written when the command is done.
        self.store = StateStore(prepared.folder, state, render_markdown, threaded=False, snapshot=snapshot)
        self.build = request_builder(prepared, rejected_notes(state), workspace_manifests(prepared))
        self.decide = decide_condition(prepared)
        self.items = foreach_items(prepared)
        self.approvals = Approvals(prepared.folder, state)
        self.agents = {a.agent: a.name for a in prepared.compiled.rendered if not a.coordinator}
        self._progress: Progress | None = None

    def emit(self, event: Event) -> None:
        self.store.on_event(event)
        self._progress = None  # the state moved on: read the outputs again when next asked

    # -- reading the state ---------------------------------------------------------------------------

    def spec(self, sid: str) -> Any:
        stage = self.state.stages[sid]
        return self.plan.stages[stage.instance_of or sid]

    def released(self, sid: str) -> bool:
        """Whether stages that need ``sid`` may go on."""
        stage = self.state.stages[sid]
        if stage.status == "succeeded" or (stage.status == "skipped" and stage.conditional):
            return True
        return stage.status == "failed" and self.plan.stages[sid].continue_on_failure

    def blocked_by(self, sid: str) -> tuple[str, str] | None:
        """A need that can no longer release ``sid`` (failed or skipped), and how."""
        for need in self.state.stages[sid].needs:
            other = self.state.stages[need]
            if other.status in ("failed", "skipped") and not self.released(need):
                return need, "failed" if other.status == "failed" else "was skipped"
        return None

    def needs_done(self, sid: str) -> bool:
        return all(self.released(need) for need in self.state.stages[sid].needs)

    def progress(self) -> Progress:
        """What the request builder reads, from the state folder: outputs, decisions, findings, instances
        (read once per state, not once per question)."""
        if self._progress is None:
            self._progress = self._read_progress()
        return self._progress

    def _read_progress(self) -> Progress:
        outcomes: dict[str, StageOutcome] = {}
        for sid, stage in self.state.stages.items():
            output, data = "", None
            if stage.status == "succeeded" and stage.output:
                output = _read(self.prepared.folder / stage.output)
                data = _read_json(self.prepared.folder / "stages" / f"{sid}.json")
            outcomes[sid] = StageOutcome(stage.status, output, data, stage.error, conditional=stage.conditional)
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
        return self.build(sid, self.progress())

    # -- settling ------------------------------------------------------------------------------------

    def settle(self) -> None:
        """Record everything that follows from the state without anyone acting (see the module docstring)."""
        moved = True
        while moved:
            moved = False
            for sid in list(self.state.stages):
                moved = self._settle_one(sid) or moved
        self._finish_or_reopen()

    def _settle_one(self, sid: str) -> bool:
        stage = self.state.stages[sid]
        spec = self.spec(sid)
        if stage.status in ("pending", "interrupted"):
            blocked = self.blocked_by(sid)
            if blocked is not None:
                self.emit(StageSkipped(self.clock(), sid, f"needs {blocked[0]}, which {blocked[1]}"))
                return True
            if not self.needs_done(sid) or stage.instance_of is not None:
                return False
            if spec.condition is not None:
                try:
                    skip = self.decide(sid, self.progress())
                except OrchestrateError as exc:
                    self._fail_now(sid, exc.message)
                    return True
                if skip is not None:
                    self.emit(StageSkipped(self.clock(), sid, skip, True))
                    return True
            if not spec.has_output:  # a pure approval gate
                return self.raise_gate(sid, self.stage_input(sid), "")
            if spec.foreach is not None:
                return self._expand(sid)
            return False
        if stage.status == "waiting_approval" and stage.approval is not None:
            decision = self.approvals.decision(sid, stage.approval.fingerprint, stage.approval.output_sha256)
            if decision is not None:
                self._decide(sid, stage.approval.fingerprint, decision)
                return True
            return False
        if stage.status == "running" and stage.instances:
            members = [self.state.stages[i] for i in stage.instances if i in self.state.stages]
            if all(m.status in _DONE for m in members):
                self._combine(sid)
                return True
        return False

    def raise_gate(self, sid: str, stage_input: StageInput, output_sha: str) -> bool:
        decision = self.approvals.decision(sid, stage_input.fingerprint, output_sha)
        if decision is not None:
            self._decide(sid, stage_input.fingerprint, decision)
            return True
        spec = self.spec(sid)
        output_file = f"stages/{sid}.md" if spec.has_output else None
        self.emit(
            ApprovalRequested(
                self.clock(), sid, spec.approval_message, stage_input.fingerprint, output_sha, output_file
            )
        )
        return True

    def _decide(self, sid: str, fingerprint: str, decision: Decision) -> None:
        self.emit(ApprovalDecided(self.clock(), sid, decision.approved, decision.note, decision.by, fingerprint))

    def _expand(self, sid: str) -> bool:
        spec = self.plan.stages[sid]
        try:
            instances = name_instances(sid, self.items(sid, self.progress()), spec.foreach_key)
        except (OrchestrateError, ValueError) as exc:
            self._fail_now(sid, exc.message if isinstance(exc, OrchestrateError) else str(exc))
            return True
        fanout = FanOut()
        ids = fanout.add(sid, instances)
        self.emit(StageExpanded(self.clock(), sid, tuple(ids), tuple(i.item for i in instances)))
        if not ids:
            self._combine(sid)
        return True

    def _combine(self, sid: str) -> None:
        stage = self.state.stages[sid]
        fanout = FanOut()
        fanout.members[sid] = list(stage.instances)
        progress = self.progress()
        outcome = fanout.combine(sid, progress.outcomes)
        members = stage.instances
        fingerprint = digest("\n".join(self.state.stages[i].fingerprint or "" for i in members), 64)
        now = self.clock()
        if outcome.status == "succeeded":
            inputs = {i: (self.state.stages[i].fingerprint or "")[:16] for i in members}
            output_sha = digest(outcome.output, 64)
            self.emit(
                StageSucceeded(
                    now, sid, 0.0, Usage(), 0.0, outcome.output, outcome.data, fingerprint, inputs, output_sha
                )
            )
        else:
            self.emit(StageFailed(now, sid, 0.0, outcome.error or "failed"))

    def _fail_now(self, sid: str, error: str) -> None:
        self.emit(StageFailed(self.clock(), sid, 0.0, error))

    def ready(self) -> list[str]:
        out = []
        for sid, stage in self.state.stages.items():
            if stage.status not in ("pending", "interrupted") or not self.needs_done(sid):
                continue
            if stage.instance_of is None and self.plan.stages[sid].foreach is not None:
                continue
            out.append(sid)
        return out

    def _run_status(self) -> str:
        statuses = [s.status for s in self.state.stages.values()]
        if "running" in statuses or self.ready():
            return "running"
        if "waiting_approval" in statuses:
            return "waiting_approval"
        for sid in self.plan.order:
            if not self.released(sid):
                return "failed"
        audit = self.state.audit
        return "succeeded" if audit is not None and audit.verdict == "pass" else "failed"

    def _finish_or_reopen(self) -> None:
        status = self._run_status()
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


def reopen_downstream(drive: Driver, sid: str) -> None:
    """A stage started again: what comes after it runs again once it is done (what a failure skipped, what
    an earlier output of it fed)."""
    plan = drive.plan
    spec_id = drive.state.stages[sid].instance_of or sid
    after = plan.descendants({spec_id})
    for other in [o for o in drive.state.stages if (drive.state.stages[o].instance_of or o) in after]:
        stage = drive.state.stages[other]
        if stage.status in ("succeeded", "failed", "skipped") and stage.instance_of is None:
            drive.emit(StageReopened(drive.clock(), other, f"{sid} is running again"))
    parent = drive.state.stages[sid].instance_of
    if parent is not None and drive.state.stages[parent].status == "failed":
        # The same instances again: the stage is running until they have all finished.
        members = drive.state.stages[parent].instances
        items = tuple(drive.state.stages[i].item for i in members)
        drive.emit(StageExpanded(drive.clock(), parent, tuple(members), items))


def busy(drive: Driver, sid: str) -> bool:
    """Whether ``sid`` (or one of its instances) is running or waiting for approval."""
    return any(
        s.status in ("running", "waiting_approval")
        for s in drive.state.stages.values()
        if s.id == sid or s.instance_of == sid
    )


def audit_round(drive: Driver, verdict: Verdict) -> None:
    """Record the audit's round; on a failed verdict with rounds left, send the named stages back."""
    plan = drive.plan
    round_ = drive.state.round
    targets: set[str] = set()
    if verdict.verdict == "fail" and round_ < drive.state.max_rounds:
        for finding in verdict.findings:
            owner = drive.state.stages.get(finding.stage)
            name = owner.instance_of or finding.stage if owner is not None else finding.stage
            if name in plan.stages and name != plan.audit_stage and plan.stages[name].has_output:
                targets.add(name)
    rework = tuple(s for s in plan.order if s in targets)
    drive.emit(AuditRound(drive.clock(), round_, verdict.verdict, verdict.summary, len(verdict.findings), rework))
    if rework:
        again = targets | plan.descendants(targets)
        for sid in plan.order:
            if sid in again:
                drive.emit(StageReopened(drive.clock(), sid, f"the audit of round {round_} sent it back"))


def rejected_notes(state: RunState) -> dict[str, str]:
    return {
        sid: s.approval.note
        for sid, s in state.stages.items()
        if s.approval is not None and s.approval.status == "rejected"
    }


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return ""


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def epoch(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
