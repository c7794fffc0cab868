"""Commands about a workflow file: validate, graph, compile and schema."""

from __future__ import annotations

import json
import traceback
from pathlib import Path
from typing import Any

import click

from ..errors import OrchestrateError, WorkflowError, WorkflowErrors
from .base import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    _compile,
    _err,
    _paused_gc,
    _print_notes,
    _project,
    _relocate,
    _shown,
    cli,
    root_option,
    workflow_argument,
)


@cli.command()
@workflow_argument
@root_option
@click.option("--json", "as_json", is_flag=True, help="Print the plan (or the errors) as JSON.")
def validate(workflow: Path, root: Path | None, as_json: bool) -> int:
    """Check a workflow and its templates; print the parallel waves and the critical path."""
    try:
        compiled = _compile(workflow, root)
    except WorkflowError as exc:
        if not as_json:
            raise
        _relocate(exc)
        errors = exc.errors if isinstance(exc, WorkflowErrors) else [exc]
        click.echo(json.dumps({"valid": False, "errors": [_error_json(e) for e in errors]}, indent=2))
        return EXIT_USAGE
    summary = compiled.summary()
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return EXIT_OK
    plan = compiled.plan
    agents = {a.agent for a in compiled.rendered if not a.coordinator}
    counts = f"{len(plan.order)} stages, {len(agents)} agents"
    click.echo(f"{_shown(workflow.absolute())}: workflow {plan.workflow.name!r} is valid ({counts})")
    click.echo("Waves (stages in one wave can run in parallel):")
    width = len(str(len(plan.waves)))
    for index, wave in enumerate(plan.waves, 1):
        click.echo(f"  {index:>{width}}. {', '.join(wave)}")
    click.echo(f"Critical path: {' → '.join(plan.critical_path)} ({len(plan.critical_path)} stages)")
    click.echo(f"Audit stage: {plan.audit_stage}")
    click.echo("Agents:")
    for agent in compiled.rendered:
        label = "coordinator" if agent.coordinator else agent.agent
        click.echo(f"  {label:<14} {agent.name}  ({agent.model})")
    _print_notes(plan.notices, compiled.warnings)
    return EXIT_OK


def _error_json(error: OrchestrateError) -> dict[str, Any]:
    loc = error.location
    return {
        "file": loc.file if loc else None,
        "line": loc.line if loc else None,
        "column": loc.column if loc else None,
        "message": error.message,
        "hint": error.hint,
    }


@cli.command()
@workflow_argument
@root_option
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["mermaid", "dot", "json", "text"]),
    default="mermaid",
    show_default=True,
    help="Drawing format.",
)
def graph(workflow: Path, root: Path | None, fmt: str) -> int:
    """Draw the workflow's DAG (mermaid, Graphviz dot, JSON or text)."""
    with _paused_gc():
        from ..compiler import load_plan
        from ..graph import render_graph

    plan, _, _ = load_plan(workflow.absolute(), _project(workflow, root))
    click.echo(render_graph(plan, fmt))
    _print_notes(plan.notices, ())
    return EXIT_OK


@cli.command("compile")
@click.argument("workflows", nargs=-1, metavar="[WORKFLOW]...", type=click.Path(path_type=Path, dir_okay=False))
@root_option
@click.option(
    "--out",
    type=click.Path(path_type=Path, file_okay=False),
    help="Output folder (default: output/); only with one workflow.",
)
@click.option(
    "--target",
    type=click.Choice(["opencode", "claude", "all"]),
    default="all",
    show_default=True,
    help="Which tool's agent files to write.",
)
@click.option("--check", is_flag=True, help="Write nothing; exit 1 if the output folder is not up to date.")
@click.option("--force", is_flag=True, help="Overwrite files in the output folder that orchestrate did not write.")
@click.option("--json", "as_json", is_flag=True, help="Print what was written (or, with --check, found) as JSON.")
def compile_(
    workflows: tuple[Path, ...],
    root: Path | None,
    out: Path | None,
    target: str,
    check: bool,
    force: bool,
    as_json: bool,
) -> int:
    """Render every agent's instructions and write OpenCode and Claude Code agent files.

    \b
    Give one or more WORKFLOW files; with none, every workflows/*.yaml of the project
    in the current folder (or --root) is compiled. With --check nothing is written and
    the exit code is 1 if any output is stale: a check for CI and pre-commit.
    """
    paths = list(workflows) or _project_workflows(root)
    if out is not None and len(paths) > 1:
        raise click.UsageError("--out takes a single workflow: each workflow's files would share the folder")
    records: list[dict[str, Any]] = []
    if len(paths) == 1:
        outcome = _compile_one(paths[0], root, out, target, check, force, label=False, records=records, quiet=as_json)
        codes = [EXIT_OK if outcome else EXIT_FAILED]
        stale = [] if outcome else paths
    else:
        codes, stale = [], []
        for path in paths:
            try:
                ok = _compile_one(path, root, out, target, check, force, label=True, records=records, quiet=as_json)
            except OrchestrateError as exc:
                _show_error(exc)
                records.append({"workflow": _shown(path.absolute()), "ok": False, "error": exc.message})
                codes.append(exc.exit_code)
                continue
            codes.append(EXIT_OK if ok else EXIT_FAILED)
            if not ok:
                stale.append(path)
    if as_json:
        click.echo(json.dumps({"ok": all(r["ok"] for r in records), "workflows": records}, indent=2))
    if stale:
        command = " ".join(["orchestrate compile", *(_shown(p.absolute()) for p in stale)])
        if root:
            command += f" --root {_shown(root.absolute())}"
        if out:
            command += f" --out {_shown(out.absolute())}"
        if target != "all":
            command += f" --target {target}"
        _err(f"Run: {command}")
    errors = [code for code in codes if code not in (EXIT_OK, EXIT_FAILED)]
    return errors[0] if errors else max(codes)


def _project_workflows(root: Path | None) -> list[Path]:
    """Every workflow file of the project in ``root`` (default: the working directory), sorted."""
    with _paused_gc():
        from ..errors import ProjectError
        from ..project import WORKFLOWS_DIR

    project = _project(Path("."), root or Path("."))
    folder = project.root / WORKFLOWS_DIR
    found: list[Path] = project.workflow_files()
    if not found:
        raise ProjectError(
            f"no workflow files (*.yaml, *.yml) in {_shown(folder)}/",
            hint="name the workflow files to compile, or run it in the project folder (or pass --root)",
        )
    return found


def _show_error(exc: OrchestrateError) -> None:
    """An error of one workflow among several, shown as ``main`` shows errors, so the rest still run."""
    from . import base

    if base._debug:
        traceback.print_exception(exc)
    _relocate(exc)
    for line in exc.lines():
        _err(line)


def _compile_one(
    workflow: Path,
    root: Path | None,
    out: Path | None,
    target: str,
    check: bool,
    force: bool,
    *,
    label: bool,
    records: list[dict[str, Any]],
    quiet: bool = False,
) -> bool:
    """Compile (or with ``check``, compare) one workflow; False when its output is stale.

    ``label`` names the workflow in notes and warnings, for runs over several workflows; what was done is
    appended to ``records`` (for ``--json``), and printed unless ``quiet``.
    """
    with _paused_gc():
        from ..compiler import check_output, write_output

    compiled = _compile(workflow, root, target)
    out_dir = out.absolute() if out else compiled.project.output_dir
    shown_out = _shown(out_dir)
    shown_wf = _shown(workflow.absolute())
    prefix = f"{shown_wf}: " if label else ""
    _print_notes([prefix + n for n in compiled.plan.notices], [prefix + w for w in compiled.warnings])
    echo = (lambda line: None) if quiet else click.echo
    if check:
        report = check_output(compiled, out_dir)
        records.append(
            {
                "workflow": shown_wf,
                "output": shown_out,
                "ok": report.ok,
                "up_to_date": len(report.up_to_date),
                "stale": list(report.stale),
                "missing": list(report.missing),
                "extra": list(report.extra),
            }
        )
        if report.ok:
            echo(f"{shown_out}/ is up to date with {shown_wf} ({len(report.up_to_date)} files)")
            return True
        echo(f"{shown_out}/ is not up to date with {shown_wf}:")
        for label_, paths in (("stale", report.stale), ("missing", report.missing), ("extra", report.extra)):
            for rel in paths:
                echo(f"  {label_:<8}{shown_out}/{rel}")
        return False
    result = write_output(compiled, out_dir, force=force)
    records.append(
        {
            "workflow": shown_wf,
            "output": shown_out,
            "ok": True,
            "written": list(result.written),
            "unchanged": len(result.unchanged),
            "removed": list(result.removed),
        }
    )
    for rel in result.written:
        echo(f"  wrote    {shown_out}/{rel}")
    for rel in result.removed:
        echo(f"  removed  {shown_out}/{rel}")
    echo(
        f"Compiled {shown_wf} → {shown_out}/: {len(result.written)} written, "
        f"{len(result.unchanged)} unchanged, {len(result.removed)} removed"
    )
    return True


@cli.command()
@click.option(
    "--output",
    "-o",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Write the schema to this file (atomically) instead of printing it.",
)
def schema(output: Path | None) -> int:
    """Print the JSON Schema of workflow files (for editors).

    \b
    Save it beside your workflows and point yaml-language-server at it with a first line
    such as: # yaml-language-server: $schema=workflow.schema.json
    """
    with _paused_gc():
        from ..workflow import json_schema

    text = json.dumps(json_schema(), indent=2) + "\n"
    if output is None:
        click.echo(text, nl=False)
        return EXIT_OK
    with _paused_gc():
        from ..errors import ProjectError
        from ..fileio import atomic_write

    try:
        atomic_write(output.absolute(), text.encode("utf-8"))
    except OSError as exc:
        raise ProjectError(
            f"can't write {_shown(output.absolute())}: {exc.strerror or exc}", hint="check that its folder is writable"
        ) from exc
    click.echo(f"Wrote the workflow schema to {_shown(output.absolute())}")
    return EXIT_OK
