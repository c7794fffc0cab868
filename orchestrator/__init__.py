"""orchestrate: a declarative runner for AI-agent pipelines.

Workflow YAML -> checked DAG -> rendered agent instructions -> agent configs for
OpenCode and Claude Code. The public API is the names in ``__all__``; anything
not listed may change. Names load on first use, so ``import orchestrator`` (and
the CLI's start-up) costs only what a command actually needs.
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
}

__all__ = [
    "Compiled",
    "Location",
    "OrchestrateError",
    "Plan",
    "Project",
    "ProjectError",
    "RenderedAgent",
    "Renderer",
    "RunFailedError",
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
    "render_graph",
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
    from .workflow import StageSpec, Workflow, json_schema
