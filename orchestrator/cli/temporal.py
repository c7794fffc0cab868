"""Commands and options for runs on Temporal: ``run --temporal``, ``worker`` and ``cancel``.

Nothing here imports ``temporalio`` until a command asks for Temporal, and then
only through ``orchestrator.temporal``; without the extra installed the
command says how to install it.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from ..errors import OrchestrateError, UsageError
from ..state.repository import FileRepository
from .base import EXIT_OK, _err, _paused_gc, _task_project, cli, quit_at_once, task_argument, task_root_option

if TYPE_CHECKING:
    from ..events import Listener
    from ..run.options import PreparedRun, RunRequest
    from ..temporal.client import Settings

ADDRESS_ENV = "ORCHESTRATE_TEMPORAL_ADDRESS"
API_KEY_ENV = "ORCHESTRATE_TEMPORAL_API_KEY"
HEARTBEAT_ENV = "ORCHESTRATE_TEMPORAL_HEARTBEAT"
DEFAULT_QUEUE = "orchestrate"


def temporal_options(*, required: bool) -> Callable[[Callable[..., int]], Callable[..., int]]:
    """``--temporal ADDRESS`` and how to reach it (namespace, TLS; the API key from the environment)."""

    def decorate(func: Callable[..., int]) -> Callable[..., int]:
        for option in reversed(
            (
                click.option(
                    "--temporal",
                    "temporal",
                    metavar="HOST:PORT",
                    envvar=ADDRESS_ENV,
                    required=required,
                    help=f"Run on the Temporal server at HOST:PORT (or ${ADDRESS_ENV}).",
                ),
                click.option(
                    "--namespace",
                    default="default",
                    envvar="ORCHESTRATE_TEMPORAL_NAMESPACE",
                    show_default=True,
                    help="The Temporal namespace.",
                ),
                click.option(
                    "--queue",
                    default=DEFAULT_QUEUE,
                    show_default=True,
                    help="The task queue of model-only stages (every worker serves it).",
                ),
                click.option("--tls", is_flag=True, help=f"Connect with TLS (implied by ${API_KEY_ENV})."),
                click.option(
                    "--tls-cert",
                    type=click.Path(path_type=Path, dir_okay=False),
                    help="Client certificate for mTLS (with --tls-key).",
                ),
                click.option(
                    "--tls-key",
                    type=click.Path(path_type=Path, dir_okay=False),
                    help="The client certificate's private key.",
                ),
            )
        ):
            func = option(func)
        return func

    return decorate


def _import_temporal() -> None:
    """Refuse, saying how to install it, when the temporal extra is missing."""
    try:
        found = importlib.util.find_spec("temporalio") is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        raise UsageError(
            "running on Temporal needs the temporal extra, which is not installed",
            hint="pip install 'orchestrate[temporal]'",
        )
    quit_at_once()  # its native runtime can abort the interpreter's finalization


def settings_of(address: str, namespace: str, tls: bool, tls_cert: Path | None, tls_key: Path | None) -> Settings:
    _import_temporal()
    with _paused_gc():
        from ..temporal.client import Settings

    api_key = os.environ.get(API_KEY_ENV) or None
    return Settings(address, namespace, tls or tls_cert is not None, tls_cert, tls_key, api_key)


@contextmanager
def _on_signals(action: Callable[[], None]) -> Iterator[None]:
    """SIGINT and SIGTERM call ``action`` on the running loop while the block runs."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, action)
    try:
        yield
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


def _heartbeat() -> float:
    raw = os.environ.get(HEARTBEAT_ENV, "10")
    try:
        value = float(raw)
    except ValueError:
        raise UsageError(f"{HEARTBEAT_ENV}={raw!r} is not a number of seconds") from None
    if value < 1:
        raise UsageError(f"{HEARTBEAT_ENV} must be at least 1 second (got {value:g})")
    return value


def run_on_temporal(
    prepared: PreparedRun,
    request: RunRequest,
    settings: Settings,
    *,
    queue: str,
    host: bool,
    shared: bool,
    listeners: list[Listener],
    command: str,
) -> dict[str, Any] | None:
    """Run (or attach to) the task on Temporal, passing its events to ``listeners``; its result, or None when
    the user stopped following (Ctrl-C: the run carries on)."""
    with _paused_gc():
        from ..temporal.client import follow_run
        from ..temporal.ticket import Ticket

    ticket = Ticket.of(prepared, request, queue, _heartbeat())

    def attached(again: bool) -> None:
        if again:
            _err(f"note: task {prepared.task} is already running on Temporal: following it")

    async def go() -> dict[str, Any] | None:
        stop = asyncio.Event()

        def interrupted() -> None:
            _err("\nStopped following. The run carries on on Temporal.")
            stop.set()

        with _on_signals(interrupted):
            return await follow_run(
                prepared,
                ticket,
                settings,
                listeners=listeners,
                environ=request.environ,
                host=host,
                shared=shared,
                stop_following=stop,
                on_attach=attached,
            )

    result = asyncio.run(go())
    if result is None:
        _err(f"  follow it again: {command}")
        _err(f"  stop it:         orchestrate cancel {prepared.task}")
        if host:
            _err("  its stages that act on this checkout wait until a home worker serves it again")
        return None
    if result.get("status") == "error":
        raise OrchestrateError(str(result.get("error")))
    return result


def notify_decided(folder: Path) -> str | None:
    """Tell a run on Temporal that a decision on one of its gates was recorded; what to print about it."""
    if not FileRepository(folder).temporal_note.exists():
        return None
    try:
        _import_temporal()
        with _paused_gc():
            from ..temporal.client import NotRunning, signal_run

        try:
            workflow_id = asyncio.run(signal_run(folder, "decided", os.environ.get(API_KEY_ENV) or None))
        except NotRunning:
            return None  # an earlier run's note: the run that waits is a local one
    except OrchestrateError as exc:
        return f"note: couldn't tell the run on Temporal ({exc.message}); it looks for decisions every 30 s"
    return f"Sent to the run on Temporal ({workflow_id})."


@cli.command()
@temporal_options(required=True)
@click.option(
    "--workspace",
    is_flag=True,
    help="Also be the home of runs of this checkout (--root, or the current folder): their workflows, their state "
    "and the stages that act on the files.",
)
@task_root_option
def worker(
    temporal: str,
    namespace: str,
    queue: str,
    tls: bool,
    tls_cert: Path | None,
    tls_key: Path | None,
    workspace: bool,
    root: Path | None,
) -> int:
    """Serve runs on Temporal until Ctrl-C: stages that only call the model, from any project.

    \b
    With --workspace it is also the home of this checkout's runs, so they go
    on while no `orchestrate run` follows them. Its API key for Claude comes
    from its own environment (ANTHROPIC_API_KEY).
    """
    settings = settings_of(temporal, namespace, tls, tls_cert, tls_key)
    with _paused_gc():
        from ..temporal.client import connect
        from ..temporal.worker import serving

    project = _task_project(root) if workspace else None

    async def go() -> None:
        client = await connect(settings)
        stopping = asyncio.Event()
        home = project.root if project is not None else None
        async with serving(
            client, queue=queue, environ=dict(os.environ), root=home, keys=project.keys if project else None
        ):
            where = f" and the home of {home}" if home is not None else ""
            _err(f"worker serving queue {queue!r}{where} on {temporal} (Ctrl-C stops it)")
            with _on_signals(stopping.set):
                await stopping.wait()

    asyncio.run(go())
    return EXIT_OK


@cli.command()
@task_argument
@task_root_option
def cancel(task: str, root: Path | None) -> int:
    """Stop TASK's run on Temporal: stages in flight are cancelled and recorded, as Ctrl-C does to a local run."""
    with _paused_gc():
        from ..params import check_task

    folder = _task_project(root).state_root / check_task(task)
    if not FileRepository(folder).temporal_note.exists():
        raise UsageError(
            f"task {task} has no run on Temporal here",
            hint="a local run stops with Ctrl-C in its terminal",
        )
    _import_temporal()
    with _paused_gc():
        from ..temporal.client import signal_run

    workflow_id = asyncio.run(signal_run(folder, "stop", os.environ.get(API_KEY_ENV) or None))
    click.echo(f"Asked the run of {task} to stop ({workflow_id}); its stages in flight are cancelled and recorded.")
    return EXIT_OK
