"""A run of a task, from the command's inputs to a finished state folder.

``prepare_run`` does every check that needs no API (the workflow and its
templates, params, the task name, canned responses) and raises before anything
is written. ``run_prepared`` starts the state folder, builds each stage's
request (system prompt = the agent's compiled instructions, the same text as in
the generated configs; user message = the task, the params, the upstream
outputs and the rendered stage prompt) and hands the plan to the engine.
"""

from __future__ import annotations

import asyncio
import shlex
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .audit import verdict_schema
from .compiler import Compiled, compile_workflow
from .cost import estimate
from .engine import EngineOptions, RunOutcome, StageOutcome, execute
from .errors import StateError, UsageError
from .events import Listener
from .loader import load_mapping
from .params import check_task, parse_param_args, resolve_params
from .project import Project
from .report import render_markdown
from .runners import Runner, StageRequest
from .runners.offline import OfflineRunner, check_responses
from .state import RunState, StageState, StateStore, timestamp

__all__ = ["PreparedRun", "RunRequest", "initial_state", "prepare_run", "request_builder", "run_async", "run_prepared"]


@dataclass(frozen=True)
class RunRequest:
    """What the user asked for on the command line."""

    task: str
    param_args: Sequence[str] = ()
    params_file: Path | None = None
    max_parallel: int | None = None
    offline: bool = False
    responses_file: Path | None = None
    latency: float = 0.0


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

    @property
    def command(self) -> str:
        """The command that runs this again, as a user would type it from the project root."""
        parts = ["orchestrate", "run", self.compiled.source, "--task", self.task]
        for name, value in self.params.items():
            parts += ["--param", f"{name}={_text(value)}"]
        if self.offline:
            parts.append("--offline")
        return shlex.join(parts)


def _text(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def prepare_run(workflow_path: Path, project: Project, request: RunRequest) -> PreparedRun:
    """Check everything a run needs without calling any API; raise user errors (exit 2) before writing."""
    compiled = compile_workflow(workflow_path, project)
    plan = compiled.plan
    task = check_task(request.task)
    from_file = (
        load_mapping(request.params_file, display=str(request.params_file), what="params file")
        if request.params_file
        else None
    )
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
    return PreparedRun(
        compiled=compiled,
        workflow_path=workflow_path,
        task=task,
        params=params,
        max_parallel=request.max_parallel or plan.workflow.defaults.max_parallel,
        folder=project.state_root / task,
        offline=request.offline,
        responses=responses,
        latency=request.latency,
    )


def initial_state(prepared: PreparedRun, run_id: str, started: float) -> RunState:
    plan = prepared.compiled.plan
    return RunState(
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
        audit_stage=plan.audit_stage,
        stages={
            sid: StageState(
                id=sid, agent=plan.stages[sid].agent, model=plan.model_for(sid), needs=list(plan.stages[sid].needs)
            )
            for sid in plan.order
        },
    )


def run_prepared(
    prepared: PreparedRun,
    *,
    listeners: Sequence[Listener] = (),
    runner: Runner | None = None,
    clock: Callable[[], float] = time.time,
    run_id: str | None = None,
    flush_interval: float = 0.25,
) -> RunOutcome:
    """Run the task to the end (or until interrupted) and leave its state folder complete."""
    return asyncio.run(
        run_async(
            prepared, listeners=listeners, runner=runner, clock=clock, run_id=run_id, flush_interval=flush_interval
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
) -> RunOutcome:
    plan = prepared.compiled.plan
    run_id = run_id or uuid.uuid4().hex[:12]
    if runner is None:
        runner = _default_runner(prepared)
    _clear_previous_outputs(prepared.folder)
    store = StateStore(
        prepared.folder, initial_state(prepared, run_id, clock()), render_markdown, flush_interval=flush_interval
    )
    chosen = runner
    pricing = plan.workflow.pricing
    try:
        return await execute(
            plan,
            build_request=request_builder(prepared),
            runner_for=lambda sid: chosen,
            listeners=[store, *listeners],
            options=EngineOptions(
                max_parallel=prepared.max_parallel,
                stage_timeout=plan.workflow.defaults.timeout,
                run_id=run_id,
                task=prepared.task,
            ),
            price=lambda usage, model: estimate(usage, model, pricing),
            clock=clock,
        )
    finally:
        store.close()


def _default_runner(prepared: PreparedRun) -> Runner:
    if prepared.offline:
        return OfflineRunner(prepared.responses, prepared.latency)
    from .runners.anthropic import AnthropicRunner  # imported only for real runs: it is slow to import

    return AnthropicRunner()


def _clear_previous_outputs(folder: Path) -> None:
    """A new run starts over: outputs of an earlier run must not pass for this one's."""
    stages = folder / "stages"
    if not stages.is_dir():
        return
    try:
        for path in stages.iterdir():
            if path.suffix in (".md", ".json") and path.is_file():
                path.unlink()
    except OSError as exc:
        raise StateError(f"can't clear {stages}: {exc.strerror or exc}") from exc


def request_builder(prepared: PreparedRun) -> Callable[[str, Mapping[str, StageOutcome]], StageRequest]:
    """The function the engine calls to build a stage's request once its needs are done."""
    plan = prepared.compiled.plan
    workflow = plan.workflow
    instructions = {agent.agent: agent.text for agent in prepared.compiled.rendered if not agent.coordinator}
    schema = verdict_schema()
    folder = f"docs/ai/{prepared.task}"
    models = {sid: plan.model_for(sid) for sid in plan.order}
    checker = prepared.compiled.renderer.checker

    def build(sid: str, outcomes: Mapping[str, StageOutcome]) -> StageRequest:
        stage = plan.stages[sid]
        audit = sid == plan.audit_stage
        referenced = checker.stages_read(sid)
        prompt = ""
        if stage.prompt:
            values = {
                "params": prepared.params,
                "task": prepared.task,
                "workflow": {"name": workflow.name, "description": workflow.description},
                "stage": {"id": sid, "agent": stage.agent, "model": models[sid]},
                "stages": {
                    other: {
                        "output": outcomes[other].output,
                        "data": outcomes[other].data,
                        "status": outcomes[other].status,
                    }
                    for other in set(stage.needs) | referenced
                },
            }
            prompt = prepared.compiled.renderer.render_prompt(sid, values)
        shown = [o for o in plan.order if o != sid] if audit else stage.needs
        if referenced:
            shown = [o for o in shown if o not in referenced]
        parts = [f"# Task `{prepared.task}`: stage `{sid}` of workflow `{workflow.name}`"]
        if audit:
            parts.append(
                "## What this workflow is for\n\n"
                + (workflow.description or "(the workflow has no description)")
                + "\n\nYou audit the output of every other stage, shown below in the order they ran."
            )
        if prepared.params:
            parts.append("## Params\n\n" + "\n".join(f"- {k}: {_text(v)}" for k, v in prepared.params.items()))
        for other in shown:
            text = outcomes[other].output.strip() if other in outcomes else ""
            parts.append(f"## Output of stage `{other}` ({folder}/stages/{other}.md)\n\n{text or '(empty)'}")
        if prompt.strip():
            task_text = prompt.strip()
        elif audit:
            task_text = (
                "Audit the work above against the workflow's purpose, the params and the plan, and submit your verdict."
            )
        else:
            task_text = (
                f"Stage `{sid}` has no prompt of its own: do the part of the work that the upstream outputs "
                "assign to it, as your instructions describe."
            )
        parts.append("## Your stage\n\n" + task_text)
        return StageRequest(
            stage_id=sid,
            agent=stage.agent,
            model=models[sid],
            system=instructions[stage.agent],
            prompt="\n\n".join(parts) + "\n",
            max_tokens=workflow.defaults.max_tokens,
            task=prepared.task,
            structured=schema if audit else None,
        )

    return build
