"""What ``state.json`` holds: the run's state as pydantic models, versioned by ``SCHEMA_VERSION``.

Plain data: no files, no events. ``reducer.apply_event`` moves it forward,
``repository`` reads and ``store`` writes it.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from ..audit import Finding, Verdict
from ..run.outcomes import RunStatus as Ended
from ..run.outcomes import StageStatus
from ..runners import Usage

__all__ = [
    "SCHEMA_VERSION",
    "ApprovalState",
    "AttemptState",
    "BatchState",
    "NoteState",
    "RoundState",
    "RunState",
    "RunStatus",
    "StageState",
    "Tokens",
    "timestamp",
]

SCHEMA_VERSION = 2
RunStatus = Literal["running", Ended]  # the statuses a run can end with, or still running


def timestamp(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Tokens(BaseModel):
    input: int = 0
    output: int = 0
    cache_read: int = 0
    cache_write: int = 0

    @classmethod
    def of(cls, usage: Usage) -> Tokens:
        return cls.model_construct(
            input=usage.input_tokens,
            output=usage.output_tokens,
            cache_read=usage.cache_read_tokens,
            cache_write=usage.cache_write_tokens,
        )


class AttemptState(BaseModel):
    number: int
    started: str
    duration: float
    tokens: Tokens = Field(default_factory=Tokens)
    cost_usd: float | None = None
    error: str | None = None
    status_code: int | None = None
    request_id: str | None = None
    batch: bool = False  # sent through the Message Batches API
    worker: str | None = None  # the Temporal worker that made it (a run on Temporal)


class BatchState(BaseModel):
    """A ``batch: true`` stage's submitted batch: a resumed run collects it rather than sending the request again."""

    id: str
    custom_id: str
    fingerprint: str  # the request in it


class ApprovalState(BaseModel):
    """A gate's decision, bound to the exact output (fingerprint and digest) a person saw."""

    status: Literal["waiting", "approved", "rejected"]
    message: str = ""
    note: str = ""
    by: str | None = None
    decided: str | None = None
    fingerprint: str = ""
    output_sha256: str = ""


class RoundState(BaseModel):
    """One audit round: its verdict and the stages it sent back."""

    round: int
    verdict: str
    summary: str = ""
    findings: int = 0
    rework: list[str] = Field(default_factory=list)
    finished: str


class NoteState(BaseModel):
    """A note left on a stage with ``orchestrate state note``."""

    time: str
    text: str
    by: str = ""


class StageState(BaseModel):
    id: str
    agent: str
    model: str
    needs: list[str] = Field(default_factory=list)
    gate: bool = False  # a pure approval stage: no agent runs it
    unconfined: str | None = None  # why the commands it runs are not under orchestrate's sandbox, if they are not
    status: StageStatus = "pending"
    reason: str | None = None  # why it ran, or why its earlier output was kept
    reused: bool = False
    from_run: str | None = None  # the run that produced a kept output
    round: int = 1
    tries: int = 0
    attempts: list[AttemptState] = Field(default_factory=list)
    started: str | None = None
    finished: str | None = None
    duration: float | None = None
    tokens: Tokens = Field(default_factory=Tokens)
    cost_usd: float | None = 0.0
    output: str | None = None
    fingerprint: str | None = None  # of the request that produced ``output``
    inputs: dict[str, str] = Field(default_factory=dict)  # what went into it, to say what changed
    output_sha256: str | None = None
    error: str | None = None
    approval: ApprovalState | None = None
    feedback: list[Finding] = Field(default_factory=list)  # audit findings it was sent back with
    instances: list[str] = Field(default_factory=list)  # a foreach stage's instances, in order
    instance_of: str | None = None  # an instance's foreach stage
    item: Any = None  # an instance's item
    conditional: bool = False  # skipped because its ``if`` was false
    notes: list[NoteState] = Field(default_factory=list)
    batch: BatchState | None = None  # the Message Batch holding its request: a rerun collects it if it has no output


class RunState(BaseModel):
    """Everything about one run of a task; ``state.json`` holds exactly this."""

    schema_version: int = SCHEMA_VERSION
    run_id: str
    workflow: str
    workflow_file: str
    description: str = ""
    task: str
    params: dict[str, Any] = Field(default_factory=dict)
    command: str = ""
    driver: Literal["run", "state"] = "run"  # "state": driven stage by stage with ``orchestrate state``
    offline: bool = False
    sandbox: str = "bubblewrap"  # how its commands were confined: bubblewrap, or none (the workflow opted out)
    max_parallel: int = 1
    status: RunStatus = "running"
    note: str = ""  # why the run stopped early, in words
    started: str
    finished: str | None = None
    duration: float | None = None  # seconds the run has run, every invocation of it counted
    resumed: int = 0  # times this run was continued after stopping
    earlier: float = 0.0  # seconds its earlier invocations ran (a continued run's duration adds this one's)
    tokens: Tokens = Field(default_factory=Tokens)
    cost_usd: float | None = 0.0
    budget_usd: float | None = None
    audit_stage: str
    audit: Verdict | None = None
    round: int = 1
    max_rounds: int = 1
    rounds: list[RoundState] = Field(default_factory=list)
    sources: dict[str, str] = Field(default_factory=dict)  # sha256 of each workflow, template and context file
    log_offset: int = 0  # bytes of events.jsonl this snapshot includes
    stages: dict[str, StageState]

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for stage in self.stages.values():
            out[stage.status] = out.get(stage.status, 0) + 1
        return out
