"""``apply_event``: the one pure function from a run's events to its state.

The store applies each event as it writes it, and recovery applies the events
logged after the last snapshot, so a state read back after a crash is the state
the run had. No I/O.
"""

from __future__ import annotations

from ..audit import Verdict
from ..events import (
    ApprovalDecided,
    ApprovalRequested,
    AttemptFinished,
    AuditRound,
    BatchSubmitted,
    Event,
    RunFinished,
    RunStarted,
    StageExpanded,
    StageFailed,
    StageNoted,
    StageReopened,
    StageRetrying,
    StageReused,
    StageSkipped,
    StageStarted,
    StageSucceeded,
)
from ..runners import Usage
from .model import (
    ApprovalState,
    AttemptState,
    BatchState,
    NoteState,
    RoundState,
    RunState,
    StageState,
    Tokens,
    timestamp,
)

__all__ = ["apply_event"]


def _added(tokens: Tokens, cost: float | None, usage: Usage, more: float | None) -> tuple[Tokens, float | None]:
    total = Tokens.model_construct(
        input=tokens.input + usage.input_tokens,
        output=tokens.output + usage.output_tokens,
        cache_read=tokens.cache_read + usage.cache_read_tokens,
        cache_write=tokens.cache_write + usage.cache_write_tokens,
    )
    return total, (None if cost is None or more is None else round(cost + more, 6))


def apply_event(state: RunState, event: Event) -> None:
    """Bring ``state`` up to date with one event (the store's and recovery's one way to do it)."""
    if isinstance(event, RunStarted):
        state.status = "running"
        state.round = event.round
        return
    if isinstance(event, RunFinished):
        state.status = event.status  # type: ignore[assignment]
        state.note = event.note
        state.finished = timestamp(event.time)
        state.duration = round(state.earlier + event.duration, 3)
        return
    if isinstance(event, AuditRound):
        state.rounds.append(
            RoundState(
                round=event.round,
                verdict=event.verdict,
                summary=event.summary,
                findings=event.findings,
                rework=list(event.rework),
                finished=timestamp(event.time),
            )
        )
        if event.rework:
            state.round = event.round + 1
        return
    if isinstance(event, StageExpanded):
        _expand(state, event)
        return
    stage = state.stages[event.stage]
    # The three events every stage has set fields through ``__dict__``: the values are our own, already typed,
    # and pydantic's checked assignment would be most of what recording a stage costs.
    if isinstance(event, StageStarted):
        vars(stage).update(
            status="running",
            reason=event.reason,
            reused=False,
            from_run=None,
            started=timestamp(event.time),
            finished=None,
            duration=None,
            error=None,
            model=event.model,
            round=event.round,
            tries=1,
            # The earlier output no longer belongs to this stage's inputs.
            output=None,
            fingerprint=None,
            output_sha256=None,
            inputs={},
        )
        if stage.approval is not None and stage.approval.status != "rejected":
            stage.approval = None
    elif isinstance(event, StageReused):
        stage.status = "succeeded"
        stage.reason = event.reason
        stage.reused, stage.from_run = True, event.from_run
        stage.fingerprint, stage.inputs = event.fingerprint, event.inputs
        stage.output_sha256 = event.output_sha256
        stage.output = None if stage.gate else f"stages/{event.stage}.md"
        stage.error = None
        if event.stage == state.audit_stage and event.data is not None:
            state.audit = Verdict.model_validate(event.data)
    elif isinstance(event, AttemptFinished):
        record = event.attempt
        stage.attempts.append(
            AttemptState.model_construct(  # values from our own event: no need to validate them again
                number=record.number,
                started=timestamp(record.started),
                duration=record.duration,
                tokens=Tokens.of(record.usage),
                cost_usd=event.cost_usd,
                error=record.error,
                status_code=record.status_code,
                request_id=record.request_id,
                batch=record.batch,
                worker=record.worker,
            )
        )
        # Stage and run totals follow every attempt, so an interrupted run still shows what it spent.
        tokens, cost = _added(stage.tokens, stage.cost_usd, record.usage, event.cost_usd)
        vars(stage).update(tokens=tokens, cost_usd=cost)
        tokens, cost = _added(state.tokens, state.cost_usd, record.usage, event.cost_usd)
        vars(state).update(tokens=tokens, cost_usd=cost)
    elif isinstance(event, BatchSubmitted):
        stage.batch = BatchState(id=event.batch_id, custom_id=event.custom_id, fingerprint=event.fingerprint)
    elif isinstance(event, StageRetrying):
        stage.tries = event.attempt + 1
        stage.error = f"try {event.attempt} failed: {event.error}"
    elif isinstance(event, StageSucceeded):
        vars(stage).update(
            status="succeeded",
            finished=timestamp(event.time),
            duration=event.duration,
            error=None,
            fingerprint=event.fingerprint,
            inputs=event.inputs,
            output_sha256=event.output_sha256,
        )
        if not stage.gate:
            stage.output = f"stages/{event.stage}.md"
        if event.stage == state.audit_stage and event.data is not None:
            state.audit = Verdict.model_validate(event.data)
    elif isinstance(event, StageFailed):
        stage.status = "interrupted" if event.interrupted else "failed"
        stage.finished = timestamp(event.time)
        stage.duration = event.duration
        stage.error = event.error
    elif isinstance(event, StageReopened):
        stage.status = "pending"
        stage.reason = event.reason
        stage.error = None
        stage.conditional = False
        stage.finished = stage.duration = None
    elif isinstance(event, StageNoted):
        stage.notes.append(NoteState(time=timestamp(event.time), text=event.text, by=event.by))
    elif isinstance(event, StageSkipped):
        stage.status = "skipped"
        stage.error = event.reason
        stage.conditional = event.conditional
    elif isinstance(event, ApprovalRequested):
        stage.status = "waiting_approval"
        stage.fingerprint, stage.output_sha256 = event.fingerprint, event.output_sha256
        stage.approval = ApprovalState(
            status="waiting",
            message=event.message,
            fingerprint=event.fingerprint,
            output_sha256=event.output_sha256,
        )
    elif isinstance(event, ApprovalDecided):
        stage.fingerprint = event.fingerprint
        stage.approval = ApprovalState(
            status="approved" if event.approved else "rejected",
            message=stage.approval.message if stage.approval else "",
            note=event.note,
            by=event.by,
            decided=timestamp(event.time),
            fingerprint=event.fingerprint,
            output_sha256=stage.output_sha256 or "",
        )
        if event.approved:
            stage.status = "succeeded"
        else:
            stage.status = "failed"
            stage.error = "rejected" + (f": {event.note}" if event.note else "")


def _expand(state: RunState, event: StageExpanded) -> None:
    """A foreach stage's instances join the stages, right after it; instances of an earlier expansion that
    are not in this one leave (what an earlier run recorded of the others is kept, for skip-unchanged)."""
    parent = state.stages[event.stage]
    parent.status = "running"
    parent.instances = list(event.instances)
    stages: dict[str, StageState] = {}
    for sid, stage in state.stages.items():
        if stage.instance_of == event.stage:
            continue
        stages[sid] = stage
        if sid == event.stage:
            for iid, item in zip(event.instances, event.items or [None] * len(event.instances), strict=False):
                old = state.stages.get(iid)
                if old is not None and old.instance_of == event.stage:
                    old.item = item
                    stages[iid] = old
                else:
                    stages[iid] = StageState(
                        id=iid,
                        agent=parent.agent,
                        model=parent.model,
                        needs=list(parent.needs),
                        instance_of=event.stage,
                        item=item,
                    )
    state.stages = stages
