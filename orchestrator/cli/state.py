"""``orchestrate state``: record a run driven from inside OpenCode or Claude Code, one step at a time."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from .base import (
    EXIT_OK,
    _err,
    _paused_gc,
    _project,
    _shown,
    _task_project,
    cli,
    root_option,
    stage_argument,
    task_argument,
    task_root_option,
    user_name,
    workflow_argument,
)

if TYPE_CHECKING:
    from ..run.driven import Step

_OUTPUT_HELP = "The stage's output: a file, or - for stdin (default: the stage's file in the state folder)."


@cli.group()
def state() -> None:
    """Record a run stage by stage, for a coordinator agent that delegates the stages itself.

    \b
    orchestrate state begin WORKFLOW --task T --param NAME=VALUE   create the run
    orchestrate state next T                 stages whose needs are met
    orchestrate state start T STAGE          mark it running; prints its prompt
    orchestrate state done T STAGE --output FILE
    orchestrate state fail T STAGE --reason TEXT
    orchestrate state note T STAGE TEXT
    \b
    They write the same state.json, workflow-state.md and events.jsonl as
    `orchestrate run`, one command at a time under the task's lock, and refuse
    (exit 2) what the workflow's DAG forbids.
    """


def _show(step: Step, as_json: bool) -> None:
    """Where the run stands and what may start now."""
    task = step.state.task
    if as_json:
        click.echo(json.dumps(_step_json(step), indent=2))
        return
    width = max((len(s) for s in (*step.ready, *step.running, *step.waiting)), default=0)
    for sid in step.ready:
        stage = step.state.stages[sid]
        runs = f"→ {step.agents[sid]}" if step.agents.get(sid) else ("command" if not stage.agent else "")
        click.echo(f"ready    {sid:<{width}}  {runs}".rstrip())
    for sid in step.running:
        click.echo(f"running  {sid:<{width}}  since {step.state.stages[sid].started}")
    for sid in step.waiting:
        click.echo(f"waiting  {sid:<{width}}  orchestrate approve {task} {sid}  (or reject --note WHY)")
    status = step.state.status
    folder = _shown(step.folder)
    if step.finished:
        verdict = f", audit {step.state.audit.verdict}" if step.state.audit is not None else ""
        click.echo(f"The run {status}{verdict}. State: {folder}/workflow-state.md")
        for sid in step.failed:
            click.echo(f"failed   {sid}: {step.state.stages[sid].error}")
    elif step.ready:
        click.echo(f"Start with: orchestrate state start {task} {step.ready[0]}")
    elif status == "waiting_approval":
        click.echo(f"Waiting for approval. State: {folder}/workflow-state.md")


def _step_json(step: Step) -> dict[str, Any]:
    return {
        "task": step.state.task,
        "status": step.state.status,
        "ready": [{"stage": sid, "subagent": step.agents.get(sid) or None} for sid in step.ready],
        "running": list(step.running),
        "waiting_approval": list(step.waiting),
        "failed": list(step.failed),
        "verdict": step.state.audit.verdict if step.state.audit is not None else None,
        "state_file": f"{_shown(step.folder)}/workflow-state.md",
    }


@state.command()
@workflow_argument
@click.option("--task", required=True, help="Name of this piece of work; its state goes to docs/ai/<task>/.")
@click.option("--param", "params", multiple=True, metavar="NAME=VALUE", help="A workflow param (repeatable).")
@click.option("--params-file", type=click.Path(path_type=Path, dir_okay=False), help="YAML or JSON mapping of params.")
@click.option("--force", is_flag=True, help="Begin afresh even if the task's run stopped part-way.")
@click.option("--json", "as_json", is_flag=True, help="Print the stages that may start as JSON.")
@root_option
def begin(
    workflow: Path,
    task: str,
    params: tuple[str, ...],
    params_file: Path | None,
    force: bool,
    as_json: bool,
    root: Path | None,
) -> int:
    """Create the task's run from WORKFLOW (or go on with the one that stopped part-way)."""
    with _paused_gc():
        from ..run.manual import begin_run
        from ..run.options import RunRequest

    request = RunRequest(
        task=task,
        param_args=params,
        params_file=params_file.absolute() if params_file else None,
        force=force,
    )
    step, resumed = begin_run(workflow.absolute(), _project(workflow, root), request)
    how = "continuing the run that stopped" if resumed else "a new run"
    _err(f"{task}: {how} of workflow {step.state.workflow!r} ({_shown(step.folder)}/workflow-state.md)")
    _show(step, as_json)
    return EXIT_OK


@state.command("next")
@task_argument
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@task_root_option
def next_(task: str, as_json: bool, root: Path | None) -> int:
    """Print the stages whose needs are met, and what runs or waits."""
    with _paused_gc():
        from ..run.manual import next_step

    _show(next_step(_task_project(root), task), as_json)
    return EXIT_OK


@state.command()
@task_argument
@stage_argument
@click.option("--json", "as_json", is_flag=True, help="Print the subagent, prompt and output file as JSON.")
@task_root_option
def start(task: str, stage: str, as_json: bool, root: Path | None) -> int:
    """Mark STAGE running and print the message for its subagent (for a command stage, the command)."""
    with _paused_gc():
        from ..run.manual import start_stage

    started = start_stage(_task_project(root), task, stage)
    if as_json:
        click.echo(
            json.dumps(
                {
                    "stage": started.stage,
                    "subagent": started.subagent or None,
                    "command": started.command,
                    "cwd": started.cwd,
                    "prompt": started.prompt,
                    "output_file": started.output_file,
                },
                indent=2,
            )
        )
        return EXIT_OK
    done = f"orchestrate state done {task} {started.stage} --output FILE"
    if started.command is not None:
        where = f" in {started.cwd}" if started.cwd != "." else ""
        _err(f"{started.stage}: started. Run this command{where}, then record its output: {done}")
        click.echo(started.command)
    else:
        _err(f"{started.stage}: started. Send the message below to subagent {started.subagent}, then: {done}")
        click.echo(started.prompt, nl=False)
    return EXIT_OK


@state.command()
@task_argument
@stage_argument
@click.option("--output", "output_file", metavar="FILE", help=_OUTPUT_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print where the run stands afterwards as JSON.")
@task_root_option
def done(task: str, stage: str, output_file: str | None, root: Path | None, as_json: bool) -> int:
    """Record STAGE as succeeded with its output; the audit's output must hold its verdict."""
    with _paused_gc():
        from ..errors import UsageError
        from ..run.manual import finish_stage

    output: str | None = None
    if output_file == "-":
        output = sys.stdin.read()
    elif output_file is not None:
        try:
            output = Path(output_file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"can't read --output {output_file}: {getattr(exc, 'strerror', None) or exc}") from None
    step = finish_stage(_task_project(root), task, stage, output)
    stage_state = step.state.stages[stage]
    what = "waits for approval" if stage_state.status == "waiting_approval" else "succeeded"
    _err(f"{stage}: {what}; output in {_shown(step.folder)}/stages/{stage}.md")
    _show(step, as_json)
    return EXIT_OK


@state.command()
@task_argument
@stage_argument
@click.option("--reason", required=True, help="Why it failed: shown in the state and to whoever reads it.")
@click.option("--json", "as_json", is_flag=True, help="Print where the run stands afterwards as JSON.")
@task_root_option
def fail(task: str, stage: str, reason: str, root: Path | None, as_json: bool) -> int:
    """Record STAGE as failed; the stages that need it are skipped (start it again to retry)."""
    with _paused_gc():
        from ..run.manual import fail_stage

    step = fail_stage(_task_project(root), task, stage, reason)
    _err(f"{stage}: failed ({' '.join(reason.split())})")
    _show(step, as_json)
    return EXIT_OK


@state.command()
@task_argument
@stage_argument
@click.argument("text")
@click.option("--json", "as_json", is_flag=True, help="Print the note as JSON.")
@task_root_option
def note(task: str, stage: str, text: str, root: Path | None, as_json: bool) -> int:
    """Leave a note on STAGE in workflow-state.md."""
    with _paused_gc():
        from ..run.manual import note_stage

    step = note_stage(_task_project(root), task, stage, text, by=user_name())
    if as_json:
        noted = step.state.stages[stage].notes[-1]
        record = {"task": task, "stage": stage, "note": noted.text, "by": noted.by, "time": noted.time}
        click.echo(json.dumps({**record, "state_file": f"{_shown(step.folder)}/workflow-state.md"}, indent=2))
        return EXIT_OK
    click.echo(f"{stage}: noted in {_shown(step.folder)}/workflow-state.md")
    return EXIT_OK
