"""Commands for writing workflows: init (start a project) and watch (recompile on every save).

Each maps its options onto one library call (``scaffold.init_project``,
``watcher.watch_workflows``) and prints what it reports; what to write, watch
or recompile is decided there, not here.
"""

from __future__ import annotations

import contextlib
import shlex
import time
from pathlib import Path
from typing import TYPE_CHECKING

import click

from ..errors import ProjectError
from .base import (
    EXIT_OK,
    _err,
    _paused_gc,
    _print_notes,
    _project,
    _relocate,
    _shown,
    cli,
    root_option,
)

if TYPE_CHECKING:
    from ..watcher import WatchReport, WorkflowBuilt


@cli.command()
@click.argument(
    "workflows", nargs=-1, metavar="[WORKFLOW]...", type=click.Path(path_type=Path, dir_okay=False, exists=True)
)
@root_option
@click.option("--out", type=click.Path(path_type=Path, file_okay=False), help="Output folder (default: output/).")
@click.option(
    "--target",
    type=click.Choice(["opencode", "claude", "all"]),
    default="all",
    show_default=True,
    help="Which tool's agent files to write.",
)
@click.option(
    "--debounce",
    type=click.IntRange(0, 60_000),
    default=300,
    show_default=True,
    metavar="MS",
    help="Wait this long for more saves before recompiling (editors often write a file in several steps).",
)
def watch(workflows: tuple[Path, ...], root: Path | None, out: Path | None, target: str, debounce: int) -> int:
    """Compile workflows, then recompile them whenever a workflow, template or context file changes.

    \b
    With no WORKFLOW, watches every workflows/*.yaml of the project (and picks
    up new ones). A save that breaks a workflow prints the error and leaves
    output/ as it was; the next good save recompiles. Stop with Ctrl-C.
    """
    with _paused_gc():
        from ..agent_config import TARGETS
        from ..watcher import find_workflows, watch_workflows

    # With no workflow to find the project from, the project is the current folder unless --root says otherwise.
    project = _project(workflows[0], root) if workflows else _project(Path("."), root or Path("."))
    if workflows and root is None:
        with _paused_gc():
            from ..project import find_project
        roots = sorted({find_project(w.absolute()).root for w in workflows})
        if len(roots) > 1:
            raise ProjectError(
                "the workflows belong to different projects: " + ", ".join(f"{_shown(r)}/" for r in roots),
                hint="watch one project at a time, or pass --root",
            )
    if not workflows and not find_workflows(project):
        raise ProjectError(
            f"no workflow files (*.yaml, *.yml) in {_shown(project.root / 'workflows')}/",
            hint="name the workflow files to watch, or start a project with: orchestrate init",
        )
    targets = TARGETS if target == "all" else (target,)
    watched = [_shown(w.absolute()) for w in workflows] or [f"{_shown(project.root / 'workflows')}/"]
    view = _WatchView(" and ".join(watched) if len(watched) < 3 else f"{len(watched)} workflows")
    # Ctrl-C is how a watch ends, not an interruption of work: exit 0 without a traceback.
    with contextlib.suppress(KeyboardInterrupt):
        watch_workflows(
            [w.absolute() for w in workflows] or None,
            project,
            on_report=view.show,
            out_dir=out.absolute() if out else None,
            targets=targets,  # type: ignore[arg-type]
            debounce_ms=debounce,
        )
    click.echo("Stopped watching.")
    return EXIT_OK


class _WatchView:
    """Prints the watcher's reports: compile results on stdout, errors on stderr."""

    def __init__(self, watched: str) -> None:
        self.watched = watched
        self.notes: dict[Path, tuple[tuple[str, ...], tuple[str, ...]]] = {}
        self.watching = False

    def show(self, report: WatchReport) -> None:
        from ..watcher import FilesChanged, WatchStarted, WorkflowBuilt, WorkflowDropped, WorkflowFailed

        if isinstance(report, WatchStarted):
            if not self.watching:
                self.watching = True
                click.echo(f"Watching {self.watched}, the templates and context files for changes (Ctrl-C to stop)")
        elif isinstance(report, FilesChanged):
            click.echo("")
            for kind in ("modified", "added", "deleted"):
                paths = [_shown(c.path) for c in report.changes if c.kind == kind]
                if paths:
                    click.echo(f"{time.strftime('%H:%M:%S')}  {kind}: {', '.join(paths)}")
        elif isinstance(report, WorkflowBuilt):
            self.built(report)
        elif isinstance(report, WorkflowFailed):
            _relocate(report.error)
            for line in report.error.lines():
                _err(line)
            _err(f"{_shown(report.workflow)}: not compiled, output files left as they were; fix it and save again")
        elif isinstance(report, WorkflowDropped):
            click.echo(f"{_shown(report.workflow)} was deleted: no longer compiling it (its output files are kept).")

    def built(self, built: WorkflowBuilt) -> None:
        shown_wf = _shown(built.workflow)
        shown_out = _shown(built.out_dir)
        notes = (built.notices, built.warnings)
        if self.notes.get(built.workflow) != notes:
            # Repeating the same notes on every save would bury what changed.
            _print_notes(*notes)
            self.notes[built.workflow] = notes
        if built.recovered:
            click.echo(f"{shown_wf} compiles again.")
        report = built.report
        if self.watching and built.unchanged_output:
            click.echo(f"{shown_wf}: no changes to {shown_out}/")
            return
        for rel in report.written:
            click.echo(f"  wrote    {shown_out}/{rel}")
        for rel in report.removed:
            click.echo(f"  removed  {shown_out}/{rel}")
        click.echo(
            f"Compiled {shown_wf} → {shown_out}/: {len(report.written)} written, "
            f"{len(report.unchanged)} unchanged, {len(report.removed)} removed"
        )


@cli.command()
@click.option(
    "--root",
    type=click.Path(path_type=Path),
    default=Path("."),
    help="Folder to set up (default: the current folder). It must exist.",
)
@click.option("--force", is_flag=True, help="Overwrite starter files that exist with the packaged defaults.")
@click.option(
    "--gitignore",
    "add_gitignore",
    is_flag=True,
    help="Add docs/ai/ (run state) to .gitignore. Off by default: run state is meant to be committed, "
    "so a resumed run, an approval or a teammate sees where the work stands.",
)
def init(root: Path, force: bool, add_gitignore: bool) -> int:
    """Start a project: a starter workflow in workflows/ and editable templates in content/instructions/.

    \b
    Existing files are kept (and listed) unless --force.
    """
    with _paused_gc():
        from ..scaffold import init_project

    scaffold = init_project(root.absolute(), force=force, gitignore=add_gitignore)
    base = _shown(scaffold.root)
    prefix = "" if base == "." else base + "/"
    labels = {"created": "created", "unchanged": "unchanged", "kept": "kept (exists)", "overwritten": "overwritten"}
    for item in scaffold.files:
        click.echo(f"  {labels[item.action]:<14}{prefix}{item.path}")
    if scaffold.gitignore == "added":
        click.echo(f"  {'updated':<14}{prefix}.gitignore (added docs/ai/)")
    elif scaffold.gitignore == "present":
        click.echo(f"  {'unchanged':<14}{prefix}.gitignore (already ignores docs/ai/)")
    kept = sum(1 for item in scaffold.files if item.action == "kept")
    if kept:
        _err(f"note: kept {kept} file(s) that differ from the defaults; --force replaces them")
    if not scaffold.in_git:
        where = "this folder" if base == "." else base
        _err(
            f"warning: {where} is not in a git repository; orchestrate expects output/ and docs/ai/ "
            "to be committed (run: git init)"
        )
    workflow = shlex.quote(f"{prefix}{scaffold.workflow}")
    click.echo("")
    click.echo("Next:")
    click.echo(f"  orchestrate validate {workflow}")
    click.echo(f"  orchestrate compile {workflow}")
    goal = shlex.quote("Add a health check endpoint")
    click.echo(f"  orchestrate run {workflow} --task my-first-task --param goal={goal} --offline")
    click.echo("Drop --offline (and export ANTHROPIC_API_KEY) to run the stages against Claude.")
    return EXIT_OK
