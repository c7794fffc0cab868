"""Approval gates: people's decisions, kept next to the run's state.

``orchestrate approve|reject TASK STAGE`` writes ``approvals/<stage>.json`` in
the task's folder (atomically) and never touches ``state.json``: the run owns
that file. A decision names the exact output it was made on (the stage's
fingerprint and the output's digest), so it can't carry over to a different
output. A run reads decisions when a gate is reached, and every second while
it waits on one and other stages still run; the next ``orchestrate run`` picks
up decisions made after the run paused.
"""

from __future__ import annotations

import hmac
import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import StateError, UsageError
from ..fileio import atomic_write
from ..params import check_stage
from ..run.outcomes import Decision
from .keys import sign
from .model import RunState, timestamp
from .repository import APPROVALS_DIR, FileRepository

__all__ = ["Approvals", "DecisionRecord", "record_decision"]


@dataclass(frozen=True)
class DecisionRecord:
    stage: str
    approved: bool
    note: str
    by: str
    decided: str
    fingerprint: str
    output_sha256: str
    path: Path


def record_decision(
    folder: Path,
    state: RunState,
    stage: str,
    *,
    approved: bool,
    note: str,
    by: str,
    now: float,
    display: str,
    key: bytes | None = None,
) -> DecisionRecord:
    """Write a person's decision on a stage that waits for approval; refuse any other stage."""
    check_stage(stage, state.stages, f"task {state.task!r} has no stage {stage!r}")
    current = state.stages[stage]
    if current.status != "waiting_approval" or current.approval is None:
        gated = [s.id for s in state.stages.values() if s.status == "waiting_approval"]
        raise UsageError(
            f"stage {stage!r} of task {state.task!r} is not waiting for approval (it is {current.status})",
            hint=("waiting: " + ", ".join(gated)) if gated else "no stage of this task is waiting for approval",
        )
    record = DecisionRecord(
        stage=stage,
        approved=approved,
        note=note,
        by=by,
        decided=timestamp(now),
        fingerprint=current.approval.fingerprint,
        output_sha256=current.approval.output_sha256,
        path=FileRepository(folder).approval_file(stage),
    )
    payload = {
        "stage": stage,
        "decision": "approved" if approved else "rejected",
        "note": note,
        "by": by,
        "decided": record.decided,
        "fingerprint": record.fingerprint,
        "output_sha256": record.output_sha256,
    }
    if key is not None:
        payload["signature"] = sign(key, payload)
    try:
        atomic_write(record.path, (json.dumps(payload, indent=2, ensure_ascii=False) + "\n").encode("utf-8"))
    except OSError as exc:
        raise StateError(f"can't write {display}/{APPROVALS_DIR}/{stage}.json: {exc.strerror or exc}") from exc
    return record


class Approvals:
    """The engine's view of decisions: files written by ``approve``/``reject``, and those a stored
    run already applied (so a resumed run does not ask twice about the same output)."""

    def __init__(self, folder: Path, previous: RunState | None = None, key: bytes | None = None) -> None:
        self.folder = folder
        self.key = key  # given: a decision counts only with its signature (see ``keys``)
        self.applied: dict[str, Decision] = {}
        self._applied_keys: dict[str, tuple[str, str]] = {}
        if previous is not None:
            for sid, stage in previous.stages.items():
                approval = stage.approval
                if approval is not None and approval.status in ("approved", "rejected"):
                    self.applied[sid] = Decision(approval.status == "approved", approval.note, approval.by or "")
                    self._applied_keys[sid] = (approval.fingerprint, approval.output_sha256)

    def decision(self, stage: str, fingerprint: str, output_sha256: str) -> Decision | None:
        path = FileRepository(self.folder).approval_file(stage)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            data = None
        if (
            isinstance(data, dict)
            and data.get("fingerprint") == fingerprint
            and data.get("output_sha256", "") == output_sha256
            and data.get("decision") in ("approved", "rejected")
            and (self.key is None or hmac.compare_digest(str(data.get("signature", "")), sign(self.key, data)))
        ):
            return Decision(data["decision"] == "approved", str(data.get("note") or ""), str(data.get("by") or ""))
        if self._applied_keys.get(stage) == (fingerprint, output_sha256):
            return self.applied[stage]
        return None
