"""A run of a task, from the command's inputs to a finished state folder; the public Python API.

    prepared = prepare_workflow("workflows/feature.yaml", RunRequest(task="add-login", param_args=["goal=..."]))
    outcome = run_workflow(prepared)                 # or: await run_workflow_async(prepared)

``prepare_workflow`` (``prepare_run`` with the project found for you) does
every check that needs no API (the workflow and its templates, params, the
task name, stage names, canned responses, the budget) and raises before
anything is written. ``run_async`` takes the task's lock, reads what earlier
runs left, decides with ``session`` whether this run continues the stored one,
and hands the plan to the engine with the memo (unchanged stages keep their
outputs), the approval gates and the runners, chosen through the runner
registry. The state folder is complete and durable when it returns.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypedDict, Unpack

from ..compiler import compile_workflow
from ..cost import has_price
from ..errors import UsageError
from ..events import Listener
from ..loader import load_mapping
from ..params import check_stage, check_task, parse_param_args, resolve_params
from ..project import Project, find_project
from ..runners import Runner
from ..runners.offline import check_responses
from ..runners.registry import kind_of
from ..sandbox import require
from .engine import RunControl, RunOutcome, execute
from .executor import LocalExecutor
from .opened import OpenedRun
from .options import PreparedRun, RunRequest
from .session import Session

__all__ = [
    "prepare_run",
    "prepare_workflow",
    "run_async",
    "run_prepared",
    "run_workflow",
    "run_workflow_async",
]


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
    prepared = PreparedRun(
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
        keys=project.keys,
    )
    if not request.driven and prepared.runs_commands and prepared.confinement.enabled:
        require(compiled.source)  # before anything is written or spent
    return prepared


def _check_priced(pricing: Mapping[str, Any], models: Sequence[str]) -> None:
    for model in dict.fromkeys(models):
        if not has_price(model, pricing):
            raise UsageError(
                f"a budget is set, but orchestrate knows no price for model {model!r}, so it can't keep to it",
                hint=f"add its price to the workflow: pricing: {{{model}: {{input: 3.0, output: 15.0}}}} (USD per "
                "million tokens)",
            )


def prepare_workflow(
    workflow: str | Path, request: RunRequest | None = None, *, root: str | Path | None = None
) -> PreparedRun:
    """Check a workflow and a request without calling any API (a user mistake raises ``OrchestrateError``, whose
    ``exit_code`` is 2); ``root`` is the project folder (default: the one holding the workflow's ``workflows/``).
    Nothing is read from the environment: pass ``RunRequest(environ=...)`` for what commands and agent CLIs get."""
    path = Path(workflow).absolute()
    project = find_project(path, Path(root).absolute() if root is not None else None)
    return prepare_run(path, project, request or RunRequest(task=""))


def run_workflow(
    prepared: PreparedRun,
    *,
    listeners: Sequence[Listener] = (),
    control: RunControl | None = None,
) -> RunOutcome:
    """Run a prepared workflow to its end (or until stopped or paused at a gate), its state folder written and
    durable when this returns; ``listeners`` see every event; ``control`` stops it from another thread."""
    return run_prepared(prepared, listeners=listeners, control=control)


async def run_workflow_async(
    prepared: PreparedRun,
    *,
    listeners: Sequence[Listener] = (),
    control: RunControl | None = None,
) -> RunOutcome:
    """``run_workflow`` on the caller's event loop."""
    return await run_async(prepared, listeners=listeners, control=control)


class RunOptions(TypedDict, total=False):
    """What ``run_async`` takes besides the prepared run (see there)."""

    listeners: Sequence[Listener]
    runner: Runner | None
    clock: Callable[[], float]
    run_id: str | None
    flush_interval: float
    control: RunControl | None
    on_start: Callable[[Session], None] | None


def run_prepared(prepared: PreparedRun, **options: Unpack[RunOptions]) -> RunOutcome:
    """Run the task to the end (or until interrupted or paused) and leave its state folder complete."""
    return asyncio.run(run_async(prepared, **options))


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
    """Run the task on the caller's loop: ``listeners`` see every event; ``runner`` replaces every agent stage's
    runner (tests); ``clock`` stamps events; ``flush_interval`` spaces the state's snapshots; ``control`` stops
    the run from outside; ``on_start`` is told how the run relates to the stored one before any stage starts."""
    control = control or RunControl()
    opened = OpenedRun.open(
        prepared,
        clock=clock,
        run_id=run_id,
        flush_interval=flush_interval,
        loop=asyncio.get_running_loop(),
        on_error=lambda exc: control.fail(f"its state can't be written: {exc}"),
        runner=runner,
        check=check_only,
    )
    try:
        if on_start is not None:
            on_start(opened.session)
        return await execute(
            prepared.compiled.plan,
            executor=LocalExecutor(opened.runners),
            home=opened.home,
            listeners=[opened.store, *listeners],
            options=opened.options,
            price=opened.price,
            clock=clock,
            feedback=opened.session.feedback,
            control=control,
            guard=opened.guard,
            condition=opened.condition,
            expand=opened.expand,
            batches=opened.session.batches,
        )
    finally:
        await opened.aclose()


def check_only(prepared: PreparedRun, session: Session) -> None:
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
