"""Commands about a workflow file: validate, graph, compile and schema."""

from __future__ import annotations

import json
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
@workflow_argument
@root_option
@click.option("--out", type=click.Path(path_type=Path, file_okay=False), help="Output folder (default: output/).")
@click.option(
    "--target",
    type=click.Choice(["opencode", "claude", "all"]),
    default="all",
    show_default=True,
    help="Which tool's agent files to write.",
)
@click.option("--check", is_flag=True, help="Write nothing; exit 1 if the output folder is not up to date.")
@click.option("--force", is_flag=True, help="Overwrite files in the output folder that orchestrate did not write.")
def compile_(workflow: Path, root: Path | None, out: Path | None, target: str, check: bool, force: bool) -> int:
    """Render every agent's instructions and write OpenCode and Claude Code agent files."""
    with _paused_gc():
        from ..compiler import check_output, write_output

    compiled = _compile(workflow, root, target)
    out_dir = out.absolute() if out else compiled.project.output_dir
    shown_out = _shown(out_dir)
    shown_wf = _shown(workflow.absolute())
    _print_notes(compiled.plan.notices, compiled.warnings)
    if check:
        report = check_output(compiled, out_dir)
        if report.ok:
            click.echo(f"{shown_out}/ is up to date with {shown_wf} ({len(report.up_to_date)} files)")
            return EXIT_OK
        click.echo(f"{shown_out}/ is not up to date with {shown_wf}:")
        for label, paths in (("stale", report.stale), ("missing", report.missing), ("extra", report.extra)):
            for rel in paths:
                click.echo(f"  {label:<8}{shown_out}/{rel}")
        _err(f"Run: orchestrate compile {shown_wf}" + (f" --out {shown_out}" if out else ""))
        return EXIT_FAILED
    result = write_output(compiled, out_dir, force=force)
    for rel in result.written:
        click.echo(f"  wrote    {shown_out}/{rel}")
    for rel in result.removed:
        click.echo(f"  removed  {shown_out}/{rel}")
    click.echo(
        f"Compiled {shown_wf} → {shown_out}/: {len(result.written)} written, "
        f"{len(result.unchanged)} unchanged, {len(result.removed)} removed"
    )
    return EXIT_OK


@cli.command()
def schema() -> int:
    """Print the JSON Schema of workflow files (for editors)."""
    with _paused_gc():
        from ..workflow import json_schema

    click.echo(json.dumps(json_schema(), indent=2))
    return EXIT_OK
