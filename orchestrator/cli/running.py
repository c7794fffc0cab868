"""Commands about a task's run: run, plan, explain, approve, reject, status and history."""

from __future__ import annotations

import functools
import json
import os
import shlex
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

import click

from .base import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    RUN_EXIT,
    _err,
    _paused_gc,
    _project,
    _shown,
    _task_project,
    cli,
    complete_task,
    reader_gone,
    root_option,
    stage_argument,
    task_argument,
    task_root_option,
    user_name,
    workflow_argument,
)
from .temporal import notify_decided, run_on_temporal, settings_of, temporal_options

if TYPE_CHECKING:
    from ..events import Listener
    from ..run.engine import RunControl
    from ..run.options import PreparedRun, RunRequest
    from ..run.session import Session
    from ..temporal.client import Settings


@dataclass(frozen=True)
class RunArgs:
    """The options ``run`` and ``plan`` share, as click parsed them: what to run, with which inputs."""

    task: str
    params: tuple[str, ...]
    params_file: Path | None
    force: bool
    from_stages: tuple[str, ...]
    only: tuple[str, ...]
    budget: float | None
    offline: bool
    responses: Path | None

    def request(
        self,
        *,
        max_parallel: int | None = None,
        approve_all: bool = False,
        latency: float = 0.0,
        record: Path | None = None,
        replay: Path | None = None,
    ) -> RunRequest:
        """The typed request the library takes (paths made absolute, the environment for commands)."""
        with _paused_gc():
            from ..run.options import RunRequest

        return RunRequest(
            task=self.task,
            param_args=self.params,
            params_file=self.params_file.absolute() if self.params_file else None,
            max_parallel=max_parallel,
            offline=self.offline,
            responses_file=self.responses.absolute() if self.responses else None,
            latency=latency,
            force=self.force,
            from_stages=self.from_stages,
            only=self.only,
            approve_all=approve_all,
            budget_usd=self.budget,
            environ=dict(os.environ),
            record=record.absolute() if record else None,
            replay=replay.absolute() if replay else None,
        )


def run_options(func: Callable[..., int]) -> Callable[..., int]:
    """Add the options ``run`` and ``plan`` share; the command gets them as one ``RunArgs`` (``args``)."""
    names = [f.name for f in fields(RunArgs)]

    @functools.wraps(func)
    def command(**values: Any) -> int:
        shared = RunArgs(**{name: values.pop(name) for name in names})
        return func(args=shared, **values)

    options = [
        click.option(
            "--task",
            default="",
            help="Name of this piece of work; its state goes to docs/ai/<task>/. Default: the workflow's name.",
        ),
        click.option("--param", "params", multiple=True, metavar="NAME=VALUE", help="A workflow param (repeatable)."),
        click.option(
            "--params-file",
            type=click.Path(path_type=Path, dir_okay=False),
            help="YAML or JSON mapping of params; --param values win.",
        ),
        click.option("--force", is_flag=True, help="Rerun every stage, keeping nothing from earlier runs."),
        click.option(
            "--from", "from_stages", multiple=True, metavar="STAGE", help="Rerun STAGE and everything after it."
        ),
        click.option("--only", multiple=True, metavar="STAGE", help="Rerun just STAGE (its needs must be done)."),
        click.option("--budget", type=float, metavar="USD", help="Most the run may spend (default: budget.usd)."),
        click.option(
            "--offline", is_flag=True, help="Call no API: every stage returns a placeholder or a canned reply."
        ),
        click.option(
            "--responses",
            type=click.Path(path_type=Path, dir_okay=False),
            help="With --offline: YAML or JSON replies keyed by stage id.",
        ),
        root_option,
    ]
    decorated: Callable[..., int] = command
    for option in reversed(options):
        decorated = option(decorated)
    return decorated


@cli.command()
@workflow_argument
@run_options
@click.option("--max-parallel", type=click.IntRange(1, 256), help="Stages run at once (default: the workflow's).")
@click.option("--approve-all", is_flag=True, help="Approve every approval gate without stopping (unattended runs).")
@click.option("--latency", type=float, default=0.0, help="With --offline: seconds each stage takes.")
@click.option(
    "--record",
    type=click.Path(path_type=Path, file_okay=False),
    metavar="DIR",
    help="Save every model exchange of the run in DIR (to replay it later).",
)
@click.option(
    "--replay",
    type=click.Path(path_type=Path, file_okay=False),
    metavar="DIR",
    help="Rerun with the replies saved by --record DIR: no network, no API key, the same results.",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per event instead of the live view.")
@temporal_options(required=False)
@click.option(
    "--no-home",
    is_flag=True,
    help="With --temporal: don't host this checkout's home worker (an `orchestrate worker --workspace` does).",
)
@click.option(
    "--otel",
    is_flag=True,
    help="Send a trace of the run over OTLP (on when OTEL_EXPORTER_OTLP_ENDPOINT is set; needs orchestrate[otel]).",
)
@click.option(
    "--no-shared",
    is_flag=True,
    help="With --temporal: leave stages that only call the model to `orchestrate worker`s.",
)
def run(
    workflow: Path,
    root: Path | None,
    as_json: bool,
    args: RunArgs,
    max_parallel: int | None,
    approve_all: bool,
    latency: float,
    record: Path | None,
    replay: Path | None,
    temporal: str | None,
    namespace: str,
    queue: str,
    tls: bool,
    tls_cert: Path | None,
    tls_key: Path | None,
    no_home: bool,
    no_shared: bool,
    otel: bool,
) -> int:
    """Run a workflow's stages against Claude, in parallel where the DAG allows.

    \b
    The run is recorded in docs/ai/<task>/: workflow-state.md, state.json,
    events.jsonl and stages/<id>.md. Running a task again keeps every stage
    whose inputs did not change and continues a run that stopped (failed,
    interrupted, killed, paused for approval or at its budget); it says why
    each other stage runs.
    \b
    With --temporal HOST:PORT the run is a Temporal workflow: it outlives
    this command (Ctrl-C only stops following it), and stages that only call
    the model run on any `orchestrate worker`. See docs/temporal.md.
    \b
    Exit codes: 0 the audit passed, 1 a stage failed or the audit said fail,
    3 paused at an approval gate, 4 stopped at the budget, 130 interrupted.
    """
    with _paused_gc():
        from ..console import JsonView, LiveView, PlainView
        from ..errors import UsageError
        from ..run.prepare import prepare_run

    project = _project(workflow, root)
    request = args.request(
        max_parallel=max_parallel, approve_all=approve_all, latency=latency, record=record, replay=replay
    )
    if temporal is not None and (record is not None or replay is not None):
        raise UsageError("--record and --replay work in a local run only", hint="drop --temporal, or them")
    if temporal is None and (no_home or no_shared):
        raise UsageError(f"{'--no-home' if no_home else '--no-shared'} goes with --temporal")
    settings = settings_of(temporal, namespace, tls, tls_cert, tls_key) if temporal is not None else None
    prepared = prepare_run(workflow.absolute(), project, request)
    if not args.task:
        _err(f"note: task {prepared.task} (the workflow's name); name another with --task NAME")
    if prepared.needs_api and not (os.environ.get("ANTHROPIC_API_KEY") or os.environ.get("ANTHROPIC_AUTH_TOKEN")):
        raise UsageError(
            "ANTHROPIC_API_KEY is not set, so the stages can't reach Claude",
            hint="export ANTHROPIC_API_KEY=<your key> (from console.anthropic.com), "
            "or try the workflow without a model: add --offline",
        )
    for notice in prepared.compiled.plan.notices:
        _err(f"note: {notice}")
    if prepared.runs_commands and not prepared.confinement.enabled:
        _err(
            "warning: sandbox: none: this workflow's commands run unconfined, with your permissions, and can "
            "write anywhere you can; remove `sandbox: none` to run them under bubblewrap"
        )
    out = sys.stdout
    if as_json:
        view: Listener = JsonView(out)
    elif out.isatty():
        view = LiveView(out)
    else:
        view = PlainView(out)

    def started(session: Session) -> None:
        if session.resume and session.previous is not None:
            _err(f"note: continuing run {session.run_id}, which stopped ({session.previous.status.replace('_', ' ')})")
        for change in session.changes:
            _err(f"note: since the last run: {change}")

    tracing = _tracing(otel)
    listeners = [view] if tracing is None else [view, tracing[0]]
    try:
        return _run_and_report(prepared, request, settings, queue, no_home, no_shared, listeners, as_json, started)
    finally:
        if tracing is not None:
            tracing[1].shutdown()  # sends what is left of the trace


def _tracing(asked: bool) -> tuple[Listener, Any] | None:
    """A trace listener and its provider, when ``--otel`` or an OTLP endpoint in the environment asks for one."""
    import importlib.util

    from ..errors import UsageError

    endpoint = os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    if not asked and not endpoint:
        return None
    if importlib.util.find_spec("opentelemetry.sdk") is None:
        if asked:
            raise UsageError(
                "--otel needs the otel extra, which is not installed", hint="pip install 'orchestrate[otel]'"
            )
        _err("note: OTEL_EXPORTER_OTLP_ENDPOINT is set, but orchestrate[otel] is not installed: no trace is sent")
        return None
    with _paused_gc():
        from ..telemetry import TraceListener, tracer_provider

    provider = tracer_provider()
    return TraceListener(provider), provider


def _run_and_report(
    prepared: PreparedRun,
    request: RunRequest,
    settings: Settings | None,
    queue: str,
    no_home: bool,
    no_shared: bool,
    listeners: list[Listener],
    as_json: bool,
    started: Callable[[Session], None],
) -> int:
    """Run here or on Temporal, then print the summary; the exit code."""
    with _paused_gc():
        from ..run.engine import RunControl
        from ..run.prepare import run_prepared
        from ..state.report import summary_lines

    if settings is not None:
        command = shlex.join(["orchestrate", *sys.argv[1:]])
        result = run_on_temporal(
            prepared,
            request,
            settings,
            queue=queue,
            host=not no_home,
            shared=not no_shared,
            listeners=listeners,
            command=command,
        )
        if result is None:
            return EXIT_INTERRUPTED
        status = str(result["status"])
    else:
        control = RunControl()
        with _signals_stop(control):
            outcome = run_prepared(prepared, listeners=listeners, control=control, on_start=started)
        status = outcome.status
    if not as_json and prepared.repository.exists():
        from ..state.repository import recover_state

        try:
            click.echo("")
            for line in summary_lines(recover_state(prepared.folder), _shown(prepared.folder)):
                click.echo(line)
        except BrokenPipeError:  # `run | head`: the run's exit code still tells how it ended
            reader_gone()
    return RUN_EXIT[status]


@cli.command("plan")
@workflow_argument
@run_options
@click.option("--approve-all", is_flag=True, help="Count approval gates as approved.")
@click.option("--json", "as_json", is_flag=True, help="Print the forecast as JSON.")
def plan_(
    workflow: Path,
    root: Path | None,
    as_json: bool,
    args: RunArgs,
    approve_all: bool,
) -> int:
    """Show what `run` would do and cost, calling no model: the waves, which stages run or are kept and
    why, prompt sizes, and expected tokens and cost (prompt cache included), checked against the budget.
    With ANTHROPIC_API_KEY set, prompts are counted by the API's free token-counting endpoint."""
    with _paused_gc():
        from ..run.forecast import forecast_run
        from ..run.prepare import prepare_run
        from ..state.report import format_cost

    project = _project(workflow, root)
    request = args.request(approve_all=approve_all)
    prepared = prepare_run(workflow.absolute(), project, request)
    counter = None
    if not prepared.offline and (os.environ.get("ANTHROPIC_API_KEY") or os.environ.get("ANTHROPIC_AUTH_TOKEN")):
        from ..runners.anthropic import token_counter

        counter = token_counter()
    forecast = forecast_run(prepared, counter)
    if as_json:
        click.echo(
            json.dumps(
                {
                    "workflow": prepared.compiled.plan.workflow.name,
                    "task": prepared.task,
                    "resume": forecast.resume,
                    "changes": forecast.changes,
                    "counted": forecast.counted,
                    "stages": [
                        {
                            "stage": f.stage,
                            "wave": f.wave,
                            "action": f.action,
                            "reason": f.reason,
                            "prompt_chars": f.prompt_chars,
                            "tokens": list(f.tokens) if f.tokens else None,
                            "cached_tokens": f.cached_tokens,
                            "cost_usd": f.cost_usd,
                            "cost_range": list(f.cost_range) if f.cost_range else None,
                        }
                        for f in forecast.stages
                    ],
                    "cost_usd": forecast.cost_usd,
                    "cost_range": list(forecast.cost_range) if forecast.cost_range else None,
                    "budget_usd": forecast.budget_usd,
                    "spent_usd": forecast.spent_usd,
                    "budget_check": forecast.budget_check or None,
                },
                indent=2,
            )
        )
        return EXIT_OK
    counts = {a: sum(1 for f in forecast.stages if f.action == a) for a in ("run", "keep", "wait", "skip")}
    how = "continues the stopped run" if forecast.resume else "a new run"
    skipped = f", {counts['skip']} skipped" if counts["skip"] else ""
    click.echo(
        f"{_shown(workflow.absolute())}, task {prepared.task} ({how}): {counts['run']} to run, "
        f"{counts['keep']} kept, {counts['wait']} waiting at gates{skipped}"
    )
    for change in forecast.changes:
        click.echo(f"Since the last run: {change}")
    width = max(len(f.stage) for f in forecast.stages)
    head = f"  {'wave':<4}  {'stage':<{width}}  {'action':<6}  {'prompt':>9}  {'in (cached)':>15}  {'out':>6}"
    click.echo(f"{head}  {'cost':>9}  why")
    for f in forecast.stages:
        prompt = f"{f.prompt_chars:,} ch" if f.prompt_chars is not None else "-"
        tokens_in = f"{_k(f.tokens[0])} ({_k(f.cached_tokens)})" if f.tokens else "-"
        tokens_out = _k(f.tokens[1]) if f.tokens else "-"
        if f.action in ("keep", "skip"):
            cost = "$0"
        elif f.cost_usd is not None:
            cost = format_cost(f.cost_usd)
        else:
            cost = "-"
        click.echo(
            f"  {f.wave:<4}  {f.stage:<{width}}  {f.action:<6}  {prompt:>9}  {tokens_in:>15}  {tokens_out:>6}  "
            f"{cost:>9}  {f.reason}"
        )
    if forecast.cost_range is not None and forecast.cost_usd is not None:
        low, high = forecast.cost_range
        how_counted = "prompts counted by the API" if forecast.counted else "prompts guessed from their length"
        total = (
            f"about {format_cost(forecast.cost_usd)} (likely {format_cost(low)} to {format_cost(high)}; "
            f"{how_counted}, replies at typical lengths)"
        )
    else:
        total = forecast.unknown_cost
    click.echo(f"Estimated cost of this run: {total}")
    if forecast.budget_usd is not None:
        spent = f", {format_cost(forecast.spent_usd)} already spent" if forecast.spent_usd else ""
        click.echo(f"Budget: {format_cost(forecast.budget_usd)}{spent}: {forecast.budget_check}")
    return EXIT_OK


def _k(tokens: int) -> str:
    return f"{tokens / 1000:.1f}k" if tokens >= 1000 else str(tokens)


@cli.command()
@task_argument
@stage_argument
@click.option("--json", "as_json", is_flag=True, help="Print the explanation, the stage's state and its events.")
@task_root_option
def explain(task: str, stage: str, root: Path | None, as_json: bool) -> int:
    """Say why a stage ran, was kept, skipped, failed, is blocked or waits, from the task's state and log."""
    with _paused_gc():
        from ..explain import explain_stage
        from ..params import check_stage, check_task
        from ..state.repository import FileRepository

    project = _task_project(root)
    folder = project.state_root / check_task(task)
    shown = _shown(folder)
    repository = FileRepository(folder, shown)
    state = repository.observe()
    check_stage(stage, state.stages, f"task {task!r} has no stage {stage!r}")
    events = [event for _, event in repository.events()]
    lines = explain_stage(state, stage, events, shown)
    if as_json:
        from ..events import to_json

        mine = [to_json(e) for e in events if getattr(e, "stage", None) == stage]
        body = {
            "task": task,
            "stage": stage,
            "explanation": lines,
            "state": state.stages[stage].model_dump(mode="json"),
        }
        click.echo(json.dumps({**body, "events": mine}, indent=2, default=str))
        return EXIT_OK
    for line in lines:
        click.echo(line)
    return EXIT_OK


@contextmanager
def _signals_stop(control: RunControl) -> Iterator[None]:
    """SIGINT and SIGTERM stop the run cleanly (in-flight stages cancelled and recorded); a second
    one quits at once. Every state file is written atomically, so even that leaves valid files."""
    import signal

    def handle(signum: int, frame: FrameType | None) -> None:
        if control.requested:
            _err("Interrupted again: quitting now. The state files are valid; run the same command to continue.")
            os._exit(EXIT_INTERRUPTED)
        name = signal.Signals(signum).name
        _err(f"\n{name}: stopping; cancelling the stages in flight (press Ctrl-C again to quit at once)")
        control.stop()

    previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _decide(task: str, stage: str, note: str, root: Path | None, approved: bool, as_json: bool) -> int:
    with _paused_gc():
        import time

        from ..params import check_task
        from ..state.approvals import record_decision
        from ..state.keys import approval_key
        from ..state.repository import recover_state

    project = _task_project(root)
    folder = project.state_root / check_task(task)
    shown = _shown(folder)
    state = recover_state(folder, display=shown)
    key = approval_key(project.keys)
    record = record_decision(
        folder, state, stage, approved=approved, note=note, by=user_name(), now=time.time(), display=shown, key=key
    )
    what = "approved" if record.approved else "rejected"
    if as_json:
        decision = {"task": task, "stage": stage, "decision": what, "note": note, "by": record.by}
        click.echo(json.dumps({**decision, "file": _shown(record.path), "run_status": state.status}, indent=2))
        return EXIT_OK
    click.echo(f"{stage}: {what}" + (f" ({note})" if note else "") + f"; recorded in {_shown(record.path)}")
    told = notify_decided(folder) if state.status in ("running", "waiting_approval") else None
    if told is not None:
        click.echo(told)
    elif state.status == "running":
        click.echo("The run in progress picks this up within a second.")
    else:
        click.echo(f"Continue the run with: {state.command}" if state.command else "Continue with orchestrate run.")
    return EXIT_OK


@cli.command()
@task_argument
@stage_argument
@click.option("--note", default="", help="A note for the stages downstream (they see it in their prompts).")
@click.option("--json", "as_json", is_flag=True, help="Print the recorded decision as JSON.")
@task_root_option
def approve(task: str, stage: str, note: str, root: Path | None, as_json: bool) -> int:
    """Approve a stage that waits for approval; the run continues past it."""
    return _decide(task, stage, note, root, approved=True, as_json=as_json)


@cli.command()
@task_argument
@stage_argument
@click.option("--note", default="", help="Why: shown in the state, and to the stage when it runs again.")
@click.option("--json", "as_json", is_flag=True, help="Print the recorded decision as JSON.")
@task_root_option
def reject(task: str, stage: str, note: str, root: Path | None, as_json: bool) -> int:
    """Reject a stage that waits for approval: that branch fails (the rest of the run goes on)."""
    return _decide(task, stage, note, root, approved=False, as_json=as_json)


@cli.command()
@task_argument
@task_root_option
@click.option("--json", "as_json", is_flag=True, help="Print state.json instead of the summary.")
def status(task: str, root: Path | None, as_json: bool) -> int:
    """Show where a task's run stands, from its saved state."""
    with _paused_gc():
        from ..params import check_task
        from ..state.report import summary_lines
        from ..state.repository import observed_state

    project = _task_project(root)
    folder = project.state_root / check_task(task)
    state = observed_state(folder, display=_shown(folder))
    if as_json:
        click.echo(state.model_dump_json(indent=2))
    else:
        for line in summary_lines(state, _shown(folder)):
            click.echo(line)
    return EXIT_OK


@cli.command()
@click.argument("task", required=False, shell_complete=complete_task)
@task_root_option
@click.option("--json", "as_json", is_flag=True, help="Print the runs and totals as JSON.")
def history(task: str | None, root: Path | None, as_json: bool) -> int:
    """Every run of TASK (default: of every task), from the event logs, with totals across runs.

    \b
    Each run: when it started, how it ended (killed: its log stops before the
    end), its duration, requests, tokens and cost, and which stages ran or
    were kept. state.json holds only the latest run; the event log holds all.
    """
    with _paused_gc():
        from ..errors import UsageError
        from ..params import check_task
        from ..state.history import TaskHistory, history_of

    project = _task_project(root)
    if task is not None:
        folders = [project.state_root / check_task(task)]
        if not (folders[0] / "events.jsonl").exists():
            raise UsageError(f"task {task} has no runs in {_shown(project.state_root)}", hint="orchestrate history")
    else:
        try:
            folders = sorted(p for p in project.state_root.iterdir() if (p / "events.jsonl").exists())
        except OSError:
            folders = []
    histories: list[TaskHistory] = [history_of(f, f.name, _shown(f)) for f in folders]
    if as_json:
        data: Any = histories[0].to_json() if task is not None else {"tasks": [h.to_json() for h in histories]}
        click.echo(json.dumps(data, indent=2))
        return EXIT_OK
    if not histories:
        click.echo(f"No runs yet in {_shown(project.state_root)}.")
        return EXIT_OK
    for number, found in enumerate(histories):
        if number:
            click.echo("")
        usage = found.usage
        cost = "cost unknown" if found.cost_usd is None else f"${found.cost_usd:.4f}"
        click.echo(
            f"{found.task}: {len(found.runs)} run{'s' if len(found.runs) != 1 else ''}, {found.duration:.1f} s, "
            f"{found.requests} requests, {_k(usage.input_tokens)} in / {_k(usage.output_tokens)} out, {cost}"
        )
        for run in found.runs:
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(run.started))
            took = f"{run.duration:.1f} s" if run.duration is not None else "-"
            spent = "?" if run.cost_usd is None else f"${run.cost_usd:.4f}"
            resumed = " (continued)" if run.resumed else ""
            click.echo(
                f"  {when}  {run.run_id}{resumed}  {run.status:<16} {took:>8}  {run.requests:>4} requests  "
                f"{spent:>9}  ran {len(run.ran)}, kept {len(run.kept)}"
            )
            if run.ran:
                click.echo(f"      ran: {', '.join(run.ran)}")
    return EXIT_OK
