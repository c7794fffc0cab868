"""The command group, the helpers every command shares, and ``main``, where errors become exit codes.

Errors are translated in one place (``main``): ``Error: <file>:<line>:<col>:
<what>`` and ``hint: <next step>`` on stderr, the error's exit code, and a
traceback only with ``--debug``.
"""

from __future__ import annotations

import dataclasses
import gc
import os
import sys
import traceback
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from ..compiler import Compiled
    from ..project import Project

from .. import __version__
from ..errors import OrchestrateError, WorkflowErrors

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_WAITING = 3
EXIT_BUDGET = 4
EXIT_INTERRUPTED = 130
EXIT_INTERNAL = 70
RUN_EXIT = {
    "succeeded": EXIT_OK,
    "partial": EXIT_OK,
    "failed": EXIT_FAILED,
    "waiting_approval": EXIT_WAITING,
    "budget_exceeded": EXIT_BUDGET,
    "interrupted": EXIT_INTERRUPTED,
}

_debug = False
# Errors name files relative to the project root; when the user works from elsewhere, show them
# relative to where they are.
_root_shown: str | None = None


def _shown(path: Path) -> str:
    """A path as the user typed it: relative to the working directory when that is shorter."""
    try:
        rel = os.path.relpath(path)
    except ValueError:
        return str(path)
    return rel if not rel.startswith("../../") else str(path)


@contextmanager
def _paused_gc() -> Iterator[None]:
    """Import the library with the cyclic garbage collector paused.

    Start-up allocates tens of thousands of objects and no garbage, so collections
    during imports are wasted time (about a tenth of a small validate).
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _err(line: str = "") -> None:
    click.echo(line, err=True)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="orchestrate")
@click.option("--debug", is_flag=True, help="Show tracebacks for errors.")
def cli(debug: bool) -> None:
    """Compile AI-agent workflows into checked DAGs and agent configs.

    \b
    Exit codes: 0 success, 1 stale output or failed run, 2 invalid input or usage,
    3 run paused for approval, 4 run stopped at its budget, 130 interrupted,
    70 internal error.
    """
    global _debug
    _debug = debug


workflow_argument = click.argument("workflow", type=click.Path(path_type=Path, dir_okay=False))
root_option = click.option(
    "--root",
    type=click.Path(path_type=Path, file_okay=False),
    help="Project folder (default: the folder holding workflows/, or the workflow's folder).",
)


task_root_option = click.option(
    "--root",
    type=click.Path(path_type=Path, file_okay=False),
    help="Project folder holding docs/ai/<task>/ (default: the current folder).",
)


def _project(workflow: Path, root: Path | None) -> Project:
    with _paused_gc():
        from ..project import find_project
        from ..state.keys import key_folder

    global _root_shown
    project = find_project(workflow.absolute(), root.absolute() if root else None)
    project = dataclasses.replace(project, keys=key_folder(os.environ))
    shown = _shown(project.root)
    _root_shown = None if shown == "." else shown
    return project


def _task_project(root: Path | None) -> Project:
    """The project of the task commands: ``--root``, else the working directory or the nearest folder above it
    that holds task state (``docs/ai/``) or workflows (so ``status`` works from ``workflows/``, as ``run`` does)."""
    with _paused_gc():
        from ..project import STATE_DIR, WORKFLOWS_DIR, Project
        from ..state.keys import key_folder

    if root is None:
        here = Path.cwd().absolute()
        found = next((d for d in (here, *here.parents) if (d / STATE_DIR).is_dir()), None)
        found = found or next((d for d in (here, *here.parents) if (d / WORKFLOWS_DIR).is_dir()), None)
        root = found or here
    return Project(root.absolute(), keys=key_folder(os.environ))


def user_name() -> str:
    """Who is deciding or noting, as the operating system names them ("" when it can't say)."""
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return ""


def complete_task(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[str]:
    """Shell completion for TASK: the tasks with a state folder in the project."""
    try:
        state_root = _task_project(ctx.params.get("root")).state_root
        names = sorted(p.name for p in state_root.iterdir() if p.is_dir() and (p / "state.json").exists())
    except OSError:
        return []
    return [name for name in names if name.startswith(incomplete)]


def complete_stage(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[str]:
    """Shell completion for STAGE: the stages of the task named before it."""
    import json

    task = ctx.params.get("task")
    if not task:
        return []
    try:
        folder = _task_project(ctx.params.get("root")).state_root / str(task)
        stages = json.loads((folder / "state.json").read_text(encoding="utf-8")).get("stages", {})
    except (OSError, ValueError, AttributeError):
        return []
    return [sid for sid in stages if isinstance(sid, str) and sid.startswith(incomplete)]


task_argument = click.argument("task", shell_complete=complete_task)
stage_argument = click.argument("stage", shell_complete=complete_stage)


def _compile(workflow: Path, root: Path | None, target: str = "all") -> Compiled:
    with _paused_gc():
        from ..agent_config import TARGETS
        from ..compiler import compile_workflow

    targets = TARGETS if target == "all" else (target,)
    return compile_workflow(workflow.absolute(), _project(workflow, root), targets)  # type: ignore[arg-type]


def _relocate(error: OrchestrateError) -> None:
    """Show file names relative to the working directory: project-relative ones and absolute ones."""
    errors = error.errors if isinstance(error, WorkflowErrors) else [error]
    for item in errors:
        loc = item.location
        if loc is None or loc.file.startswith(("builtin/", "<")):
            continue
        if Path(loc.file).is_absolute():
            item.location = type(loc)(_shown(Path(loc.file)), loc.line, loc.column)
        elif _root_shown:
            item.location = type(loc)(f"{_root_shown}/{loc.file}", loc.line, loc.column)


def _print_notes(notices: Sequence[str], warnings: Sequence[str]) -> None:
    for notice in notices:
        _err(f"note: {notice}")
    for warning in warnings:
        _err(f"warning: {warning}")


def reader_gone() -> None:
    """Stdout's reader has gone (``| head``): send what is left to /dev/null, so the flush at exit
    neither fails nor prints a traceback."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


_quit_at_once = False


def quit_at_once() -> None:
    """End the process with ``os._exit`` once the command is done (the console entry point only).

    The Temporal SDK's native runtime keeps threads that may call into Python while the interpreter
    finalizes, which can abort a short command at exit (``PyGILState_Release``) after its work is done.
    Every file orchestrate writes is complete by then (atomic writes), so the command flushes its output
    and leaves without finalizing."""
    global _quit_at_once
    _quit_at_once = True


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point: run the CLI and turn every outcome into one exit code."""
    global _debug, _root_shown, _quit_at_once
    _debug, _root_shown, _quit_at_once = False, None, False
    try:
        _main(argv)
    except SystemExit as exc:
        if _quit_at_once and argv is None:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
            for stream in (sys.stdout, sys.stderr):
                with suppress(OSError, ValueError):
                    stream.flush()
            os._exit(code)
        raise


def _main(argv: Sequence[str] | None) -> None:
    try:
        code = cli.main(args=list(argv) if argv is not None else None, standalone_mode=False)
    except click.exceptions.Abort:
        _err("Interrupted.")
        sys.exit(EXIT_INTERRUPTED)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except OrchestrateError as exc:
        if _debug:
            traceback.print_exc()
        _relocate(exc)
        for line in exc.lines():
            _err(line)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        _err("Interrupted.")
        sys.exit(EXIT_INTERRUPTED)
    except BrokenPipeError:
        # `orchestrate schema | head`: stdout closed early is not an error worth a traceback.
        reader_gone()
        sys.exit(EXIT_OK)
    except Exception as exc:
        if _debug:
            traceback.print_exc()
        else:
            _err(f"Internal error: {type(exc).__name__}: {exc}")
            _err("  hint: this is a bug in orchestrate; rerun with --debug and report the traceback")
        sys.exit(EXIT_INTERNAL)
    sys.exit(code if isinstance(code, int) else EXIT_OK)
