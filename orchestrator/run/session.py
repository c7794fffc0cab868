"""How a run relates to the one stored for its task: continue it or start anew, and what it keeps.

``load_previous`` reads what earlier runs left; ``start_session`` decides
whether this run continues the stored one (it stopped: interrupted, killed,
paused at a gate, out of budget) or starts a new one, and builds the memo
(skip-unchanged), the approvals, the findings sent back and the batches to
collect; ``initial_state`` is the state the run starts from.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ..audit import Finding
from ..errors import StateError
from ..fingerprint import digest
from ..manifest import Manifests
from ..project import INSTRUCTIONS_DIR, OUTPUT_DIR
from ..runners.registry import kind_of
from ..state.approvals import Approvals
from ..state.keys import approval_key
from ..state.memo import Memo, Record
from ..state.model import RunState, StageState, timestamp
from .options import PreparedRun

__all__ = [
    "RESUMABLE",
    "Session",
    "changes_since",
    "initial_state",
    "load_previous",
    "start_session",
    "workspace_manifests",
]

# A stored run that ended in one of these is continued by the next `orchestrate run`; any other starts anew.
RESUMABLE = frozenset({"running", "interrupted", "waiting_approval", "budget_exceeded", "partial"})


def load_previous(prepared: PreparedRun) -> RunState | None:
    """What earlier runs of the task left (snapshot plus logged events), or None for a fresh task.

    A state folder this version can't read stops the run (nothing is overwritten) unless ``--force``.
    """
    if not prepared.repository.exists():
        return None
    try:
        return prepared.repository.recover()
    except StateError as exc:
        if prepared.force:
            return None
        if "--force" not in (exc.hint or ""):
            exc.hint = (exc.hint + "; " if exc.hint else "") + "or start the task afresh with --force"
        raise


@dataclass
class Session:
    """How this run relates to the stored one."""

    run_id: str
    resume: bool
    previous: RunState | None
    memo: Memo
    approvals: Approvals
    feedback: dict[str, list[Finding]] = field(default_factory=dict)
    spent_usd: float = 0.0
    round: int = 1
    changes: list[str] = field(default_factory=list)
    sources: dict[str, str] = field(default_factory=dict)
    # Batches an earlier run submitted and never collected: stage -> (fingerprint, batch id, custom id).
    batches: dict[str, tuple[str, str, str]] = field(default_factory=dict)
    workspace: Manifests | None = None  # what stages that act see of the workspace

    @property
    def rejected(self) -> dict[str, str]:
        """Stages whose last output a person rejected, with the note: they are told when they rerun."""
        return {sid: r.rejected for sid, r in self.memo.records.items() if r.rejected is not None}


def _sources(prepared: PreparedRun) -> dict[str, str]:
    out: dict[str, str] = {}
    for agent in prepared.compiled.rendered:
        for name, data in agent.sources:
            out[name] = digest(data.replace(b"\r\n", b"\n"))
    return dict(sorted(out.items()))


def changes_since(previous: RunState | None, prepared: PreparedRun, current: Mapping[str, str]) -> list[str]:
    """What differs from the stored run, in words: files of the workflow and its templates (``current``
    maps each to its digest), params."""
    if previous is None:
        return []
    out: list[str] = []
    if previous.workflow != prepared.compiled.plan.workflow.name:
        out.append(f"the task was last run with workflow {previous.workflow!r}")
    before = previous.sources
    edited = [name for name in current if name in before and before[name] != current[name]]
    added = [name for name in current if name not in before]
    removed = [name for name in before if name not in current]
    if before:
        if edited:
            out.append("changed: " + ", ".join(edited))
        if added:
            out.append("new: " + ", ".join(added))
        if removed:
            out.append("no longer used: " + ", ".join(removed))
    params = sorted(
        name
        for name in previous.params.keys() | prepared.params.keys()
        if previous.params.get(name) != prepared.params.get(name)
    )
    if params:
        out.append("params changed: " + ", ".join(params))
    return out


def workspace_manifests(prepared: PreparedRun, *, keep: bool = True) -> Manifests:
    """What stages that act see of the workspace, without orchestrate's own files (workflows, templates, state,
    compiled output, recordings: what a stage is told of them is in its request already); manifests are kept
    in the task's state folder (``keep=False``: read there, never written)."""
    ignore = inside(
        prepared.root,
        prepared.folder.parent,
        prepared.root / OUTPUT_DIR,
        prepared.root / INSTRUCTIONS_DIR,
        prepared.workflow_path.parent,
        prepared.record,
    )
    return Manifests(prepared.root, ignore, prepared.repository.workspace, keep=keep)


def start_session(
    prepared: PreparedRun, previous: RunState | None, run_id: str | None = None, *, dry: bool = False
) -> Session:
    plan = prepared.compiled.plan
    same_workflow = previous is not None and previous.workflow == plan.workflow.name
    resume = previous is not None and same_workflow and previous.status in RESUMABLE and not prepared.force
    records: dict[str, Record] = {}
    if previous is not None and same_workflow and not prepared.force:
        for sid, stage in previous.stages.items():
            rejected = None
            if stage.approval is not None and stage.approval.status == "rejected":
                rejected = stage.approval.note
            records[sid] = Record(
                status=stage.status,
                fingerprint=stage.fingerprint,
                inputs=stage.inputs,
                output_sha256=stage.output_sha256,
                run_id=stage.from_run or previous.run_id,
                error=stage.error,
                gate=stage.gate,
                rejected=rejected,
            )
    sources = _sources(prepared)
    workspace = workspace_manifests(prepared, keep=not dry)
    batches: dict[str, tuple[str, str, str]] = {}
    if previous is not None and same_workflow:
        for sid, stage in previous.stages.items():
            if stage.batch is not None and stage.status != "succeeded":
                batches[sid] = (stage.batch.fingerprint, stage.batch.id, stage.batch.custom_id)
    feedback: dict[str, list[Finding]] = {}
    if resume and previous is not None:
        feedback = {sid: list(stage.feedback) for sid, stage in previous.stages.items() if stage.feedback}
    return Session(
        run_id=previous.run_id if resume and previous is not None else (run_id or uuid.uuid4().hex[:12]),
        resume=resume,
        previous=previous,
        memo=Memo(prepared.repository, records, prepared.forced, workspace.get),
        workspace=workspace,
        approvals=Approvals(prepared.folder, previous if same_workflow else None, approval_key(prepared.keys)),
        feedback=feedback,
        spent_usd=(previous.cost_usd or 0.0) if resume and previous is not None else 0.0,
        round=previous.round if resume and previous is not None else 1,
        changes=changes_since(previous, prepared, sources),
        sources=sources,
        batches=batches,
    )


def initial_state(prepared: PreparedRun, run_id: str, started: float, session: Session | None = None) -> RunState:
    """The state a run starts from: a fresh one, or the stored run's carried on.

    Stages keep what an earlier run recorded of them (their output's fingerprint
    and digest above all) until the engine decides about them, so a run killed
    at any moment still knows every finished stage.
    """
    plan = prepared.compiled.plan
    previous = session.previous if session is not None else None
    resume = session is not None and session.resume
    same = previous is not None and previous.workflow == plan.workflow.name and not prepared.force
    stages: dict[str, StageState] = {}
    for sid in plan.order:
        spec = plan.stages[sid]
        fresh = StageState(
            id=sid,
            agent=spec.agent or "",
            model=plan.model_for(sid),
            needs=list(spec.needs),
            gate=spec.kind == "approval",
            unconfined=unconfined(prepared, sid),
        )
        old = previous.stages.get(sid) if previous is not None and same else None
        if old is not None:
            keep = {"status", "reason", "reused", "from_run", "round", "output", "fingerprint", "inputs"}
            keep |= {"output_sha256", "error", "approval", "started", "finished", "duration", "batch"}
            if resume:
                keep |= {"tries", "attempts", "tokens", "cost_usd", "feedback"}
            fresh = fresh.model_copy(update={name: getattr(old, name) for name in keep})
            if fresh.status == "running":  # the process that ran it is gone
                fresh.status = "interrupted"
            if not resume and old.status == "succeeded" and not old.reused:
                fresh.from_run = old.from_run or previous.run_id  # type: ignore[union-attr]
        noted = previous.stages.get(sid) if previous is not None and previous.workflow == plan.workflow.name else None
        if noted is not None and noted.notes:  # people's notes on a stage outlive its reruns, --force included
            fresh = fresh.model_copy(update={"notes": noted.notes})
        stages[sid] = fresh
        if old is not None and spec.foreach and previous is not None:  # its instances, until it expands again
            for iid in old.instances:
                kept = previous.stages.get(iid)
                if kept is not None:
                    kept = kept.model_copy(update={"status": "interrupted"} if kept.status == "running" else {})
                    stages[iid] = kept
    state = RunState(
        run_id=run_id,
        workflow=plan.workflow.name,
        workflow_file=prepared.compiled.source,
        description=plan.workflow.description,
        task=prepared.task,
        params=prepared.params,
        command=prepared.command,
        offline=prepared.offline,
        sandbox="bubblewrap" if prepared.confinement.enabled else "none",
        max_parallel=prepared.max_parallel,
        started=timestamp(started),
        budget_usd=prepared.budget_usd,
        audit_stage=plan.audit_stage,
        max_rounds=plan.workflow.audit.max_rounds,
        sources=session.sources if session is not None else _sources(prepared),
        stages=stages,
    )
    if resume and previous is not None:
        state.started = previous.started
        state.resumed = previous.resumed + 1
        state.earlier = previous.duration or 0.0
        state.tokens, state.cost_usd = previous.tokens, previous.cost_usd
        state.rounds, state.round, state.audit = previous.rounds, previous.round, previous.audit
    return state


def inside(root: Path, *folders: Path | None) -> tuple[str, ...]:
    """Folders orchestrate itself writes during a run (state, recordings), as paths from the root: a stage's
    write scope check must not blame the stage for them."""
    return tuple(
        f.relative_to(root).as_posix() for f in folders if f is not None and f.is_relative_to(root) and f != root
    )


def unconfined(prepared: PreparedRun, sid: str) -> str | None:
    """Why the commands stage ``sid`` runs are not under orchestrate's sandbox (None: they are, or it runs none)."""
    plan = prepared.compiled.plan
    runner = plan.runner_for(sid)
    if not runner:
        return None
    if not kind_of(runner).sandboxed:
        return f"{runner} runs its own tools, with its own permissions"
    if not prepared.confinement.enabled and prepared.stage_runs_commands(sid):
        return "the workflow says sandbox: none"
    return None
