"""The compile pipeline: workflow file -> plan -> checked, rendered agents -> agent files.

``compile_workflow`` does every check ``validate`` promises and renders every
agent, without touching the output folder; ``write_output`` and ``check_output``
then write or compare the files. Each CLI command calls one of these.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from .agent_config import (
    TARGETS,
    CheckReport,
    GeneratedFile,
    Target,
    WriteReport,
    build_files,
    check_files,
    write_files,
)
from .contracts import schema_problems
from .errors import WorkflowError, WorkflowErrors
from .graph import Plan, build_plan
from .loader import load_mapping, load_workflow
from .models import facts_for, setting_problems
from .project import Project
from .render import RenderedAgent, Renderer
from .render.context import COORDINATOR
from .runners.registry import kind_of

__all__ = ["Compiled", "check_output", "compile_workflow", "load_plan", "model_problems", "write_output"]


@dataclass(frozen=True)
class Compiled:
    """A workflow checked and rendered: everything needed to write or compare its agent files."""

    project: Project
    source: str
    plan: Plan
    rendered: tuple[RenderedAgent, ...]
    targets: tuple[Target, ...]
    warnings: tuple[str, ...]
    renderer: Renderer
    schemas: Mapping[str, dict[str, Any]] = field(default_factory=dict)  # stage id -> its output_schema

    @cached_property
    def files(self) -> tuple[GeneratedFile, ...]:
        """The agent files, built on first use (validate and run never need them)."""
        return tuple(build_files(self.plan.workflow, self.rendered, self.source, self.targets))

    def summary(self) -> dict[str, Any]:
        """The plan as ``validate --json`` prints it."""
        plan = self.plan
        return {
            "valid": True,
            "workflow": plan.workflow.name,
            "file": self.source,
            "stages": len(plan.order),
            "agents": [
                {"name": a.agent, "config_name": a.name, "model": a.model, "coordinator": a.coordinator}
                for a in self.rendered
            ],
            "waves": [list(wave) for wave in plan.waves],
            "critical_path": list(plan.critical_path),
            "audit_stage": plan.audit_stage,
            "notices": list(plan.notices),
            "warnings": list(self.warnings),
        }


def load_plan(workflow_path: Path, project: Project) -> tuple[Plan, str, bytes]:
    """Load, validate and plan a workflow; returns the plan, the file's display name and its bytes."""
    source = project.display(workflow_path)
    plan = build_plan(load_workflow(workflow_path, display=source))
    WorkflowErrors.raise_if_any(model_problems(plan))
    return plan, source, plan.workflow.source.data


def model_problems(plan: Plan) -> list[WorkflowError]:
    """What the workflow asks of its models that they refuse (``models.setting_problems``), each at the
    key that asked for it, once per agent and model."""
    workflow = plan.workflow
    errors: list[WorkflowError] = []
    seen: set[tuple[str, str, str]] = set()
    for index, stage in enumerate(workflow.stages):
        agent = stage.agent
        if agent is None or stage.id not in plan.stages:
            continue
        spec = workflow.agent_spec(agent)
        model = plan.model_for(stage.id)
        where: dict[str, tuple[str | int, ...]] = {
            "model": ("stages", index, "model")
            if stage.model
            else (("agents", agent, "model") if spec.model else ("defaults", "model")),
            "effort": ("agents", agent, "effort") if spec.effort else ("defaults", "effort"),
            "thinking": ("agents", agent, "thinking") if spec.thinking else ("defaults", "thinking"),
            "max_tokens": ("defaults", "max_tokens"),
        }
        problems = setting_problems(
            model,
            effort=plan.effort_for_agent(agent),
            thinking=plan.thinking_for_agent(agent),
            max_tokens=workflow.defaults.max_tokens,
        )
        if spec.opencode is not None and not facts_for(model).sampling and facts_for(model).known:
            for name in ("temperature", "top_p"):
                if getattr(spec.opencode, name) is not None:
                    where[name] = ("agents", agent, "opencode", name)
                    problems.append(
                        (name, f"{facts_for(model).name} refuses {name}; OpenCode would send it", "remove it")
                    )
        for setting, problem, hint in problems:
            # max_tokens and the model are set where every agent of the model reads them: say it once.
            key = (
                ("", model, setting)
                if setting in ("max_tokens", "model") and where[setting][0] == "defaults"
                else (
                    agent,
                    model,
                    setting,
                )
            )
            if key in seen:
                continue
            seen.add(key)
            errors.append(WorkflowError(problem, location=workflow.locate(*where[setting]), hint=hint))
        if stage.batch:
            if plan.tools_for(stage.id):
                errors.append(
                    WorkflowError(
                        f"stage {stage.id!r} has batch: true, but its agent {agent!r} uses tools",
                        location=workflow.locate("stages", index, "batch"),
                        hint="a batched request can't call tools turn by turn; drop batch or the agent's tools",
                    )
                )
            elif not kind_of(plan.runner_for(stage.id)).batches:
                errors.append(
                    WorkflowError(
                        f"stage {stage.id!r} has batch: true, but it runs with {plan.runner_for(stage.id)}",
                        location=workflow.locate("stages", index, "batch"),
                        hint="only the API runner (runner: anthropic) can batch requests",
                    )
                )
    return errors


def compile_workflow(workflow_path: Path, project: Project, targets: tuple[Target, ...] = TARGETS) -> Compiled:
    """Check everything and render every agent; raise every problem found, write nothing."""
    plan, source, data = load_plan(workflow_path, project)
    _check_config_names(plan)
    renderer = Renderer(project, plan, source, data)
    errors = renderer.check()
    schemas = _load_schemas(plan, project, errors)
    WorkflowErrors.raise_if_any(errors)
    rendered = tuple(renderer.render_agents())
    return Compiled(
        project=project,
        source=source,
        plan=plan,
        rendered=rendered,
        targets=targets,
        warnings=(*plan.warnings, *renderer.warnings),
        renderer=renderer,
        schemas=schemas,
    )


def write_output(compiled: Compiled, out_dir: Path, *, force: bool = False) -> WriteReport:
    return write_files(out_dir, list(compiled.files), compiled.source, compiled.targets, force=force)


def check_output(compiled: Compiled, out_dir: Path) -> CheckReport:
    return check_files(out_dir, list(compiled.files), compiled.source, compiled.targets)


def _check_config_names(plan: Plan) -> None:
    """The coordinator's generated name is taken: no agent of the workflow may be called that."""
    workflow = plan.workflow
    for index, stage in enumerate(workflow.stages):
        if stage.agent == COORDINATOR:
            raise WorkflowError(
                f"agent name {COORDINATOR!r} is reserved for the coordinator orchestrate generates",
                location=workflow.locate("stages", index, "agent"),
                hint="rename the agent (its template can still be any file via agents.<name>.template)",
            )


def _load_schemas(plan: Plan, project: Project, errors: list[WorkflowError]) -> dict[str, dict[str, Any]]:
    """Each stage's output_schema, read from its file if it names one, and checked as a JSON Schema."""
    workflow = plan.workflow
    out: dict[str, dict[str, Any]] = {}
    for index, stage in enumerate(workflow.stages):
        if stage.output_schema is None:
            continue
        location = workflow.locate("stages", index, "output_schema")
        schema: Any = stage.output_schema
        shown = "output_schema"
        if isinstance(schema, str):
            path = project.root / schema
            shown = schema
            try:
                schema = load_mapping(path, display=project.display(path), what="output schema")
            except WorkflowError as exc:
                errors.append(WorkflowError(exc.message, location=exc.location or location, hint=exc.hint))
                continue
        problems = schema_problems(schema)
        if problems:
            errors.append(
                WorkflowError(
                    f"stage {stage.id!r}: {shown} is not a usable JSON Schema: " + "; ".join(problems[:3]),
                    location=location,
                    hint="structured outputs take a JSON Schema whose top level is {type: object, properties: ...}",
                )
            )
            continue
        out[stage.id] = dict(schema)
    return out
