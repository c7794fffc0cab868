"""``orchestrate explain TASK STAGE``: why a stage ran, was kept, skipped, failed, is blocked or waits.

A pure function of the task's recovered state and its event log: nothing is
run and nothing is written.
"""

from __future__ import annotations

from datetime import datetime

from .events import (
    ApprovalDecided,
    ApprovalRequested,
    AttemptFinished,
    AuditRound,
    Event,
    RunStarted,
    StageFailed,
    StageRetrying,
    StageReused,
    StageSkipped,
    StageStarted,
    StageSucceeded,
)
from .state.model import RunState
from .state.report import format_cost, format_duration, format_tokens

__all__ = ["explain_stage"]


def _clock(epoch: float) -> str:
    return datetime.fromtimestamp(epoch).strftime("%Y-%m-%d %H:%M:%S")


def _history_line(event: Event) -> str | None:
    if isinstance(event, StageStarted):
        return (
            "started"
            + (f": {event.reason}" if event.reason else "")
            + (f" (audit round {event.round})" if event.round > 1 else "")
        )
    if isinstance(event, StageReused):
        return f"kept its earlier output: {event.reason}"
    if isinstance(event, AttemptFinished):
        usage = event.attempt.usage
        spent = f"{usage.input_tokens:,} in / {usage.output_tokens:,} out, {format_cost(event.cost_usd)}"
        what = f"failed: {event.attempt.error}" if event.attempt.error else "succeeded"
        return f"request {event.attempt.number} {what} ({format_duration(event.attempt.duration)}, {spent})"
    if isinstance(event, StageRetrying):
        return f"try {event.attempt} failed, tried again: {event.error}"
    if isinstance(event, StageSucceeded):
        return f"succeeded in {format_duration(event.duration)}"
    if isinstance(event, StageFailed):
        return ("interrupted" if event.interrupted else "failed") + f": {event.error}"
    if isinstance(event, StageSkipped):
        return f"skipped: {event.reason}"
    if isinstance(event, ApprovalRequested):
        return "waits for approval" + (f": {event.message}" if event.message else "")
    if isinstance(event, ApprovalDecided):
        who = f" by {event.by}" if event.by else ""
        return ("approved" if event.approved else "rejected") + who + (f": {event.note}" if event.note else "")
    return None


def explain_stage(state: RunState, stage_id: str, events: list[Event], folder: str) -> list[str]:
    """Lines that say what happened to ``stage_id`` and why; ``events`` is the task's event log."""
    stage = state.stages[stage_id]
    kind = "approval gate" if stage.gate else f"agent {stage.agent}, model {stage.model}"
    lines = [f"{stage_id} ({kind}) in task {state.task}, run {state.run_id}: {stage.status.replace('_', ' ')}"]
    needs = ", ".join(f"{n} ({state.stages[n].status.replace('_', ' ')})" for n in stage.needs if n in state.stages)
    if needs:
        lines.append(f"  Needs: {needs}")
    if stage.status == "succeeded" and stage.reused:
        lines.append(f"  Kept: {stage.reason or 'its inputs did not change'}; no request was made for it this run.")
    elif stage.status == "succeeded":
        lines.append(f"  Why it ran: {stage.reason or 'first run'}")
    elif stage.status == "running":
        lines.append(f"  Running now. Why it runs: {stage.reason or 'first run'}")
    elif stage.status == "failed":
        if stage.approval is not None and stage.approval.status == "rejected":
            lines.append(f"  Rejected by {stage.approval.by or 'a person'}: {stage.approval.note or '(no note)'}")
            lines.append(
                "  The next run does it again, and tells it why it was rejected."
                if not stage.gate
                else ("  A gate stays rejected until what it checks changes: rerun its needs with --from.")
            )
        else:
            blocked = "the agent reported itself blocked" in (stage.error or "")
            lines.append(f"  {'Blocked' if blocked else 'Failed'}: {stage.error}")
            if stage.reason:
                lines.append(f"  Why it ran: {stage.reason}")
            lines.append("  The next run does it again (and what was skipped because of it).")
    elif stage.status == "interrupted":
        lines.append("  Interrupted while it ran; the next run does it again.")
    elif stage.status == "skipped":
        lines.append(f"  Skipped: {stage.error}")
        cause = _root_cause(state, stage_id)
        if cause and cause != stage_id:
            lines.append(f"  Root cause: {cause} {state.stages[cause].status}: {state.stages[cause].error}")
    elif stage.status == "waiting_approval":
        message = f" ({stage.approval.message})" if stage.approval and stage.approval.message else ""
        lines.append(f"  Waits for a person's approval{message}.")
        if stage.output:
            lines.append(f"  Read {folder}/{stage.output}, then:")
        lines.append(f"    orchestrate approve {state.task} {stage_id} [--note TEXT]")
        lines.append(f"    orchestrate reject {state.task} {stage_id} --note TEXT")
    elif stage.status == "pending":
        open_needs = [n for n in stage.needs if state.stages[n].status != "succeeded"]
        if state.status == "budget_exceeded":
            lines.append(f"  Not started: {state.note or 'the run reached its budget'}")
        elif open_needs:
            lines.append(f"  Not started: waits for {', '.join(open_needs)}")
        else:
            lines.append("  Not started yet.")
    if stage.approval is not None and stage.approval.status == "approved":
        who = f" by {stage.approval.by}" if stage.approval.by else ""
        lines.append(f"  Approved{who}" + (f": {stage.approval.note}" if stage.approval.note else ""))
    if stage.unconfined:
        lines.append(f"  Not sandboxed: {stage.unconfined}")
    if stage.attempts:
        failed = sum(1 for a in stage.attempts if a.error)
        spent = f"{format_tokens(stage)}, {format_cost(stage.cost_usd)}"
        lines.append(f"  Requests: {len(stage.attempts)} ({failed} failed), {spent}")
    if stage.output:
        lines.append(f"  Output: {folder}/{stage.output}")
    if stage.feedback:
        lines.append(f"  Sent back by the audit with {len(stage.feedback)} findings:")
        lines += [f"    - [{f.severity}] {f.title}" for f in stage.feedback]
    if state.audit is not None:
        mine = [f for f in state.audit.findings if f.stage == stage_id]
        if mine:
            lines.append(f"  The audit's findings about it ({state.audit.verdict}):")
            lines += [f"    - [{f.severity}] {f.title}" for f in mine]
    history: list[str] = []
    for event in events:
        if isinstance(event, RunStarted):
            history.append(
                f"    {_clock(event.time)}  run {event.run_id} {'continued' if event.resumed else 'started'}"
            )
        elif isinstance(event, AuditRound) and stage_id in event.rework:
            history.append(f"    {_clock(event.time)}  sent back by audit round {event.round}")
        elif getattr(event, "stage", None) == stage_id:
            line = _history_line(event)
            if line:
                history.append(f"    {_clock(event.time)}  {line}")
    # Show run boundaries only around this stage's own lines.
    trimmed = [line for i, line in enumerate(history) if " run " not in line or _followed_by_stage(history, i)]
    if trimmed:
        lines.append("  History (events.jsonl):")
        lines += trimmed[-40:]
    return lines


def _followed_by_stage(history: list[str], index: int) -> bool:
    return index + 1 < len(history) and " run " not in history[index + 1]


def _root_cause(state: RunState, stage_id: str) -> str | None:
    """The failed stage that made ``stage_id`` skipped, following skipped needs upstream."""
    current = stage_id
    seen: set[str] = set()
    while current not in seen:
        seen.add(current)
        stage = state.stages[current]
        if stage.status in ("failed", "interrupted"):
            return current
        bad = [n for n in stage.needs if state.stages[n].status in ("failed", "skipped", "interrupted")]
        if not bad:
            return None
        current = bad[0]
    return None
