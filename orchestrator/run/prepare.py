"""A run of a task, from the command's inputs to a finished state folder.

``prepare_run`` does every check that needs no API (the workflow and its
templates, params, the task name, stage names, canned responses, the budget)
and raises before anything is written. ``run_async`` takes the task's lock,
reads what earlier runs left (``recover_state``), decides whether this run
continues the stored one (it stopped: interrupted, killed, paused at a gate,
out of budget) or starts a new one (it had finished), and hands the plan to
the engine with a ``Memo`` (unchanged stages keep their outputs) and the
approval gates. The request of a stage: system prompt = the agent's compiled
instructions, the same text as in the generated configs; user message = the
task, the params, the upstream outputs, approval notes, audit findings sent
back, and the rendered stage prompt.
"""

from __future__ import annotations

import asyncio
import shlex
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..audit import Finding
from ..compiler import Compiled, compile_workflow
from ..cost import Pricing, has_price
from ..errors import StateError, UsageError
from ..events import Listener
from ..fingerprint import digest
from ..loader import load_mapping
from ..manifest import Manifests
from ..params import check_stage, check_task, param_text, parse_param_args, resolve_params
from ..project import INSTRUCTIONS_DIR, OUTPUT_DIR, Project
from ..runners import Runner
from ..runners.offline import OfflineRunner, check_responses
from ..runners.registry import RunnerSetup, kind_of
from ..state.approvals import Approvals
from ..state.lock import TaskLock
from ..state.memo import Memo, Record
from ..state.model import RunState, StageState, timestamp
from ..state.report import render_markdown
from ..state.repository import FileRepository, recover_state
from ..state.store import StateStore
from .engine import EngineOptions, RunControl, RunOutcome, execute
from .guard import WorkspaceGuard
from .request import decide_condition, foreach_items, request_builder

if TYPE_CHECKING:
    from ..runners.agent_cli import CliAgent

__all__ = [
    "PreparedRun",
    "RunRequest",
    "Session",
    "changes_since",
    "initial_state",
    "load_previous",
    "prepare_run",
    "request_builder",
    "run_async",
    "run_prepared",
    "start_session",
    "workspace_manifests",
]

# A stored run that ended in one of these is continued by the next `orchestrate run`; any other starts anew.
RESUMABLE = frozenset({"running", "interrupted", "waiting_approval", "budget_exceeded", "partial"})


@dataclass(frozen=True)
class RunRequest:
    """What the user asked for on the command line."""

    task: str  # "": the workflow's name
    param_args: Sequence[str] = ()
    params_file: Path | None = None
    max_parallel: int | None = None
    offline: bool = False
    responses_file: Path | None = None
    latency: float = 0.0
    force: bool = False
    from_stages: Sequence[str] = ()
    only: Sequence[str] = ()
    approve_all: bool = False
    budget_usd: float | None = None
    # The caller's environment: commands get it scrubbed of secrets; agent CLIs get it as it is.
    environ: Mapping[str, str] = field(default_factory=dict)
    record: Path | None = None
    replay: Path | None = None
    params: Mapping[str, Any] = field(default_factory=dict)  # typed values (a stored run's), under the others
    driven: bool = False  # stages run elsewhere and are recorded with ``orchestrate state``: no runner needed


@dataclass(frozen=True)
class PreparedRun:
    compiled: Compiled
    workflow_path: Path
    task: str
    params: dict[str, Any]
    max_parallel: int
    folder: Path
    offline: bool
    responses: dict[str, Any]
    latency: float
    force: bool = False
    from_stages: tuple[str, ...] = ()
    only: tuple[str, ...] = ()
    approve_all: bool = False
    budget_usd: float | None = None
    display: str = ""  # how messages name the state folder
    root: Path = Path(".")  # the workspace: the project root, where tools and commands work
    environ: Mapping[str, str] = field(default_factory=dict)
    record: Path | None = None
    replay: Path | None = None

    @property
    def repository(self) -> FileRepository:
        """Where the task's state lives."""
        return FileRepository(self.folder, self.display or None)

    @property
    def needs_api(self) -> bool:
        """Whether some stage will call the Messages API (so an API key is needed)."""
        if self.offline or self.replay is not None:
            return False
        plan = self.compiled.plan
        return any(kind_of(plan.runner_for(sid)).calls_api for sid in plan.order if plan.runner_for(sid))

    @property
    def command(self) -> str:
        """The command that runs (or continues) this task, as a user would type it from the project root."""
        parts = ["orchestrate", "run", self.compiled.source, "--task", self.task]
        for name, value in self.params.items():
            parts += ["--param", f"{name}={param_text(value)}"]
        if self.offline:
            parts.append("--offline")
        return shlex.join(parts)

    @property
    def forced(self) -> dict[str, str]:
        """Stages this run must redo whatever they hold, with the reason."""
        plan = self.compiled.plan
        if self.force:
            return {sid: "--force" for sid in plan.order}
        out: dict[str, str] = {}
        for sid in self.from_stages:
            for target in {sid} | plan.descendants({sid}):
                out.setdefault(target, f"--from {sid}")
        for sid in self.only:
            out[sid] = f"--only {sid}"
        return out


def _check_stages(plan_stages: Mapping[str, Any], names: Sequence[str], option: str) -> tuple[str, ...]:
    for name in names:
        check_stage(name, plan_stages, f"{option} {name}: the workflow has no stage {name!r}")
    return tuple(dict.fromkeys(names))


def prepare_run(workflow_path: Path, project: Project, request: RunRequest) -> PreparedRun:
    """Check everything a run needs without calling any API; raise user errors (exit 2) before writing."""
    compiled = compile_workflow(workflow_path, project)
    plan = compiled.plan
    task = check_task(request.task or plan.workflow.name)  # no task named: the workflow's name
    from_file = (
        load_mapping(request.params_file, display=str(request.params_file), what="params file")
        if request.params_file
        else None
    )
    if request.params:
        from_file = {**request.params, **(from_file or {})}
    params = resolve_params(plan.workflow, parse_param_args(request.param_args), from_file)
    if (request.responses_file or request.latency) and not request.offline:
        raise UsageError("--responses and --latency only apply to offline runs", hint="add --offline")
    responses: dict[str, Any] = {}
    if request.responses_file:
        shown = str(request.responses_file)
        responses = load_mapping(request.responses_file, display=shown, what="responses file")
        check_responses(responses, plan.stages, shown)
    if request.latency < 0:
        raise UsageError("--latency can't be negative")
    from_stages = _check_stages(plan.stages, request.from_stages, "--from")
    only = _check_stages(plan.stages, request.only, "--only")
    if sum(bool(x) for x in (request.force, from_stages, only)) > 1:
        raise UsageError("use one of --force, --from and --only", hint="--force reruns everything")
    budget = (
        request.budget_usd
        if request.budget_usd is not None
        else (plan.workflow.budget.usd if plan.workflow.budget else None)
    )
    if budget is not None:
        if budget <= 0:
            raise UsageError(f"--budget must be more than 0 (got {budget:g})")
        _check_priced(
            plan.workflow.pricing, [plan.model_for(sid) for sid in plan.order if plan.stages[sid].kind == "agent"]
        )
    for sid in plan.order:
        stage_budget = plan.stages[sid].budget
        if stage_budget is not None:
            _check_priced(plan.workflow.pricing, [plan.model_for(sid)])
    if request.record is not None and request.replay is not None:
        raise UsageError("use --record or --replay, not both")
    if request.offline and (request.record is not None or request.replay is not None):
        raise UsageError("--record and --replay work with the model's replies; an offline run has none")
    if request.replay is not None and not request.replay.is_dir():
        raise UsageError(
            f"--replay {request.replay}: no such folder", hint="record one first with: orchestrate run ... --record DIR"
        )
    if not request.offline and not request.driven:
        for name in dict.fromkeys(plan.runner_for(sid) for sid in plan.order if plan.runner_for(sid)):
            preflight = kind_of(name).preflight
            if preflight is not None:
                preflight(request.environ)
    folder = project.state_root / task
    return PreparedRun(
        compiled=compiled,
        workflow_path=workflow_path,
        task=task,
        params=params,
        max_parallel=request.max_parallel or plan.workflow.defaults.max_parallel,
        folder=folder,
        offline=request.offline,
        responses=responses,
        latency=request.latency,
        force=request.force,
        from_stages=from_stages,
        only=only,
        approve_all=request.approve_all,
        budget_usd=budget,
        display=project.display(folder),
        root=project.root,
        environ=dict(request.environ),
        record=request.record,
        replay=request.replay,
    )


def _check_priced(pricing: Mapping[str, Any], models: Sequence[str]) -> None:
    for model in dict.fromkeys(models):
        if not has_price(model, pricing):
            raise UsageError(
                f"a budget is set, but orchestrate knows no price for model {model!r}, so it can't keep to it",
                hint=f"add its price to the workflow: pricing: {{{model}: {{input: 3.0, output: 15.0}}}} (USD per "
                "million tokens)",
            )


def load_previous(prepared: PreparedRun) -> RunState | None:
    """What earlier runs of the task left (snapshot plus logged events), or None for a fresh task.

    A state folder this version can't read stops the run (nothing is overwritten) unless ``--force``.
    """
    if not prepared.repository.exists():
        return None
    try:
        return recover_state(prepared.folder, display=prepared.display)
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
    ignore = _inside(
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
        approvals=Approvals(prepared.folder, previous if same_workflow else None),
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


def run_prepared(
    prepared: PreparedRun,
    *,
    listeners: Sequence[Listener] = (),
    runner: Runner | None = None,
    clock: Callable[[], float] = time.time,
    run_id: str | None = None,
    flush_interval: float = 0.25,
    control: RunControl | None = None,
    on_start: Callable[[Session], None] | None = None,
) -> RunOutcome:
    """Run the task to the end (or until interrupted or paused) and leave its state folder complete."""
    return asyncio.run(
        run_async(
            prepared,
            listeners=listeners,
            runner=runner,
            clock=clock,
            run_id=run_id,
            flush_interval=flush_interval,
            control=control,
            on_start=on_start,
        )
    )


async def run_async(
    prepared: PreparedRun,
    *,
    listeners: Sequence[Listener] = (),
    runner: Runner | None = None,
    clock: Callable[[], float] = time.time,
    run_id: str | None = None,
    flush_interval: float = 0.25,
    control: RunControl | None = None,
    on_start: Callable[[Session], None] | None = None,
) -> RunOutcome:
    plan = prepared.compiled.plan
    runner_for = RunnerChoice(prepared, runner)
    with TaskLock(prepared.folder, prepared.command, display=prepared.display):
        previous = load_previous(prepared)
        session = start_session(prepared, previous, run_id)
        _check_only(prepared, session)
        runner_for.prepare()  # import and build the runners now, so a stage's duration is its own work
        if on_start is not None:
            on_start(session)
        control = control or RunControl()
        store = StateStore(
            prepared.folder,
            initial_state(prepared, session.run_id, clock(), session),
            render_markdown,
            flush_interval=flush_interval,
            on_error=lambda exc: control.fail(f"its state can't be written: {exc}"),
        )
        pricing = plan.workflow.pricing
        guard = WorkspaceGuard(
            plan,
            prepared.root,
            prepared.compiled.renderer,
            params=prepared.params,
            task=prepared.task,
            ignore=_inside(prepared.root, prepared.folder.parent, prepared.record),
            acting=not prepared.offline,
        )
        try:
            return await execute(
                plan,
                build_request=request_builder(prepared, session.rejected, session.workspace),
                runner_for=runner_for,
                listeners=[store, *listeners],
                options=EngineOptions(
                    max_parallel=prepared.max_parallel,
                    stage_timeout=plan.workflow.defaults.timeout,
                    run_id=session.run_id,
                    task=prepared.task,
                    budget_usd=prepared.budget_usd,
                    spent_usd=session.spent_usd,
                    max_rounds=plan.workflow.audit.max_rounds,
                    round=session.round,
                    approve_all=prepared.approve_all,
                    only=frozenset(prepared.only) if prepared.only else None,
                    resumed=session.resume,
                ),
                price=Pricing(pricing),
                clock=clock,
                memory=session.memo,
                gates=session.approvals,
                feedback=session.feedback,
                control=control,
                guard=guard,
                condition=decide_condition(prepared),
                expand=foreach_items(prepared),
                batches=session.batches,
            )
        finally:
            await runner_for.aclose()
            store.close()


def _inside(root: Path, *folders: Path | None) -> tuple[str, ...]:
    """Folders orchestrate itself writes during a run (state, recordings), as paths from the root: a stage's
    write scope check must not blame the stage for them."""
    return tuple(
        f.relative_to(root).as_posix() for f in folders if f is not None and f.is_relative_to(root) and f != root
    )


def _check_only(prepared: PreparedRun, session: Session) -> None:
    """``--only STAGE`` needs the outputs of STAGE's needs: refuse before anything runs if one has none."""
    plan = prepared.compiled.plan
    for sid in prepared.only:
        for need in plan.stages[sid].needs:
            if need in prepared.only:
                continue
            obstacle = session.memo.obstacle(need)
            if obstacle is not None:
                raise UsageError(
                    f"--only {sid}: its need {need!r} has no finished output to use ({obstacle})",
                    hint=f"run without --only first, or use --from {need}",
                )


class RunnerChoice:
    """Which runner runs each stage: ``run:`` commands the shell runner; agent stages ``runner`` if given
    (tests), else the offline runner for offline runs, else the stage's own (the API, Claude Code or OpenCode).
    Each runner is made once, on first use, and closed by ``aclose``."""

    def __init__(self, prepared: PreparedRun, runner: Runner | None = None) -> None:
        self.prepared = prepared
        self.runner = runner
        self.made: dict[str, Runner] = {}

    def _make(self, kind: str) -> Runner:
        prepared = self.prepared
        if kind != "shell" and self.runner is not None:
            return self.runner
        if kind != "shell" and prepared.offline:
            return OfflineRunner(prepared.responses, prepared.latency)
        setup = RunnerSetup(
            root=prepared.root,
            environ=prepared.environ,
            transcripts=prepared.repository.stages,
            record=prepared.record,
            replay=prepared.replay,
            cache_warmup=prepared.compiled.plan.workflow.defaults.cache_warmup,
            agents=lambda: _cli_agents(prepared),
        )
        return kind_of(kind).make(setup)

    def prepare(self) -> None:
        """Make every runner the plan's stages will use."""
        for sid in self.prepared.compiled.plan.order:
            if self.prepared.compiled.plan.runner_for(sid):  # an approval gate has none
                self(sid)

    def __call__(self, sid: str) -> Runner:
        kind = self.prepared.compiled.plan.runner_for(sid.split("[", 1)[0])  # an instance runs as its stage
        key = "shell" if kind == "shell" else ("agent" if self.runner is not None or self.prepared.offline else kind)
        if key not in self.made:
            self.made[key] = self._make(kind)
        return self.made[key]

    async def aclose(self) -> None:
        """Close the HTTP clients the runners opened, on the loop that opened them."""
        for made in self.made.values():
            close = getattr(made, "aclose", None)
            if close is not None:
                await close()


def _cli_agents(prepared: PreparedRun) -> dict[str, CliAgent]:
    """The compiled agent files, as the agent CLIs load them."""
    from ..runners.agent_cli import CliAgent

    files: dict[tuple[str, str], str] = {}
    for generated in prepared.compiled.files:  # keyed by the generated name, e.g. feature-build
        files[(generated.target, generated.agent)] = generated.content.decode("utf-8")
    out: dict[str, CliAgent] = {}
    for agent in prepared.compiled.rendered:
        if agent.coordinator:
            continue
        out[agent.agent] = CliAgent(
            name=agent.name,
            claude_file=files.get(("claude", agent.name), ""),
            opencode_file=files.get(("opencode", agent.name), ""),
        )
    return out
