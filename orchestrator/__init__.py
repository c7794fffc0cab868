"""orchestrate: a declarative runner for AI-agent pipelines.

Workflow YAML -> checked DAG -> rendered agent instructions -> agent configs for
OpenCode and Claude Code, and runs (``prepare_workflow``, ``run_workflow``). The
public API is the names in ``__all__`` (see docs/python-api.md); anything not
listed may change. Names load on first use, so ``import orchestrator`` (and the
CLI's start-up) costs only what a command actually needs.

    workflow/, loader.py     the workflow file: its models, and YAML with file:line errors
    graph.py                 Workflow -> Plan: the checked DAG, waves, order, critical path
    render/                  sandboxed Jinja for instructions and stage prompts
    agent_config.py, compiler.py, watcher.py, scaffold.py   compile, watch, init
    run/                     one run: options, session, the Scheduler and the engine around it
    state/                   docs/ai/<task>/: model, reducer, repository, store, memo, approvals
    runners/                 what runs a try: the registry, anthropic, agent CLIs, shell, offline
    models.py, api_request.py, cost.py   what each Claude model accepts, request bodies, prices
    cli/                     the command line, a thin layer over the above
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "Compiled": "compiler",
    "check_output": "compiler",
    "compile_workflow": "compiler",
    "load_plan": "compiler",
    "write_output": "compiler",
    "Location": "errors",
    "OrchestrateError": "errors",
    "ProjectError": "errors",
    "RunFailedError": "errors",
    "RunnerError": "errors",
    "StateError": "errors",
    "WorkflowError": "errors",
    "WorkflowErrors": "errors",
    "Plan": "graph",
    "build_plan": "graph",
    "render_graph": "graph",
    "load_workflow": "loader",
    "parse_workflow": "loader",
    "Project": "project",
    "find_project": "project",
    "RenderedAgent": "render",
    "Renderer": "render",
    "StageSpec": "workflow",
    "Workflow": "workflow",
    "json_schema": "workflow",
    "RunRequest": "run.options",
    "PreparedRun": "run.options",
    "RunOutcome": "run.outcomes",
    "RunControl": "run.engine",
    "prepare_workflow": "run.prepare",
    "run_workflow": "run.prepare",
    "run_workflow_async": "run.prepare",
}

__all__ = [
    "Compiled",
    "Location",
    "OrchestrateError",
    "Plan",
    "PreparedRun",
    "Project",
    "ProjectError",
    "RenderedAgent",
    "Renderer",
    "RunControl",
    "RunFailedError",
    "RunOutcome",
    "RunRequest",
    "RunnerError",
    "StageSpec",
    "StateError",
    "Workflow",
    "WorkflowError",
    "WorkflowErrors",
    "__version__",
    "build_plan",
    "check_output",
    "compile_workflow",
    "find_project",
    "json_schema",
    "load_plan",
    "load_workflow",
    "parse_workflow",
    "prepare_workflow",
    "render_graph",
    "run_workflow",
    "run_workflow_async",
    "write_output",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'orchestrator' has no attribute {name!r}")
    value = getattr(import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


if TYPE_CHECKING:
    from .compiler import Compiled, check_output, compile_workflow, load_plan, write_output
    from .errors import (
        Location,
        OrchestrateError,
        ProjectError,
        RunFailedError,
        RunnerError,
        StateError,
        WorkflowError,
        WorkflowErrors,
    )
    from .graph import Plan, build_plan, render_graph
    from .loader import load_workflow, parse_workflow
    from .project import Project, find_project
    from .render import RenderedAgent, Renderer
    from .run.engine import RunControl
    from .run.options import PreparedRun, RunRequest
    from .run.outcomes import RunOutcome
    from .run.prepare import prepare_workflow, run_workflow, run_workflow_async
    from .workflow import StageSpec, Workflow, json_schema
