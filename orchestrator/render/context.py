"""The variables templates see: plain dicts and lists built from a plan, no Jinja here.

Instructions (compile time) see ``workflow``, ``agent``, ``agents``, ``state``,
``context`` and ``commands``; stage prompts (run time) see ``params``, ``task``,
``stage``, ``stages`` (upstream outputs) and ``workflow``. Keeping the values
plain data is part of the sandbox: templates get nothing with methods to abuse.
"""

from __future__ import annotations

from typing import Any

from ..graph import Plan
from ..workflow import StageSpec

__all__ = [
    "COMPILE_TIME_NAMES",
    "COORDINATOR",
    "PROMPT_NAMES",
    "RUN_TIME_ONLY_NAMES",
    "STATE_PATTERN",
    "config_name",
    "instruction_context",
]

COORDINATOR = "coordinator"
COMPILE_TIME_NAMES = frozenset({"workflow", "agent", "agents", "state", "context", "commands"})
PROMPT_NAMES = frozenset({"params", "task", "stage", "stages", "workflow"})
RUN_TIME_ONLY_NAMES = frozenset({"params", "task", "stages", "outputs", "item", "stage"})
STATE_PATTERN = "docs/ai/<task>"


def config_name(workflow_name: str, agent: str) -> str:
    """The name an agent gets in OpenCode and Claude Code: namespaced by its workflow.

    Workflows share agent types (every one has an auditor) but render them with
    their own plan; the prefix keeps them apart in one ``.opencode/agents/`` and
    away from the tools' built-in ``plan`` and ``build`` agents.
    """
    return f"{workflow_name}-{agent}"


def agent_description(plan: Plan, agent: str) -> str:
    """The agent's own description, or one generated from the stages it runs."""
    spec = plan.workflow.agent_spec(agent)
    if spec.description:
        return spec.description
    stages = ", ".join(s.id for s in plan.stages_of(agent))
    return f"{agent} agent of the {plan.workflow.name} workflow (stages: {stages})"


def coordinator_description(plan: Plan) -> str:
    wf = plan.workflow
    return f"Runs the {wf.name} workflow: " + (
        wf.description or "delegates each stage to its agent and tracks progress"
    )


def stage_dict(plan: Plan, stage: StageSpec) -> dict[str, Any]:
    return {
        "id": stage.id,
        "agent": stage.agent or "",
        "agent_config_name": config_name(plan.workflow.name, stage.agent) if stage.agent else "",
        "kind": stage.kind,
        "run": stage.run or "",
        "foreach": stage.foreach or "",
        "condition": stage.condition or "",
        "writes": list(stage.writes or ()),
        "approval": stage.gated,
        "approval_message": stage.approval_message,
        "needs": list(stage.needs),
        "dependents": list(plan.dependents[stage.id]),
        "description": stage.description or "",
        "prompt": stage.prompt or "",
        "model": plan.model_for(stage.id),
        "outputs": list(stage.outputs),
        "wave": plan.wave_of(stage.id) + 1,
        "audit": stage.id == plan.audit_stage,
        "output_file": f"{STATE_PATTERN}/stages/{stage.id}.md",
    }


def stage_dicts(plan: Plan) -> dict[str, dict[str, Any]]:
    """Every stage as templates see it, in plan order; build it once per plan and share it."""
    return {sid: stage_dict(plan, plan.stages[sid]) for sid in plan.order}


def _downstream(plan: Plan, agent: str) -> list[str]:
    mine = {s.id for s in plan.stages_of(agent)}
    later = plan.descendants(mine) - mine
    return [sid for sid in plan.order if sid in later]


def instruction_context(
    plan: Plan,
    agent: str,
    *,
    coordinator: bool,
    source: str,
    context_files: list[dict[str, str]],
    stages: dict[str, dict[str, Any]],
) -> dict[str, Any]:
    """Everything an instructions template may use (``COMPILE_TIME_NAMES``); ``stages`` from ``stage_dicts``."""
    wf = plan.workflow
    if coordinator:
        agent_ctx = {
            "name": COORDINATOR,
            "config_name": config_name(wf.name, COORDINATOR),
            "description": coordinator_description(plan),
            "model": wf.defaults.model,
            "template": f"{COORDINATOR}.md",
            "stages": list(stages.values()),
            "downstream": list(stages.values()),
            "coordinator": True,
            "description_given": True,
        }
    else:
        agent_ctx = {
            "name": agent,
            "config_name": config_name(wf.name, agent),
            "description": agent_description(plan, agent),
            "model": plan.model_for_agent(agent),
            "template": wf.agent_spec(agent).template_name(agent),
            "stages": [stages[s.id] for s in plan.stages_of(agent)],
            "downstream": [stages[sid] for sid in _downstream(plan, agent)],
            "coordinator": False,
            "description_given": bool(wf.agent_spec(agent).description),
        }
    return {
        "workflow": {
            "name": wf.name,
            "description": wf.description,
            "source": source,
            "params": [
                {
                    "name": name,
                    "description": spec.description,
                    "type": spec.type,
                    "required": spec.required,
                    "default": spec.default,
                }
                for name, spec in wf.params.items()
            ],
            "stages": list(stages.values()),
            "waves": [list(w) for w in plan.waves],
            "order": list(plan.order),
            "critical_path": list(plan.critical_path),
            "audit_stage": plan.audit_stage,
            "coordinator": config_name(wf.name, COORDINATOR),
            "max_parallel": wf.defaults.max_parallel,
            "concurrent": wf.defaults.max_parallel > 1 and any(len(w) > 1 for w in plan.waves),
            "agent_of": {sid: plan.stages[sid].agent or "" for sid in plan.order},
            "index_of": {sid: index for index, sid in enumerate(plan.order)},
        },
        "agent": agent_ctx,
        "agents": [
            {
                "name": name,
                "config_name": config_name(wf.name, name),
                "description": agent_description(plan, name),
                "model": plan.model_for_agent(name),
                "stages": [s.id for s in plan.stages_of(name)],
                "description_given": bool(wf.agent_spec(name).description),
            }
            for name in plan.agents
        ],
        "state": {
            "dir": STATE_PATTERN,
            "file": f"{STATE_PATTERN}/workflow-state.md",
            "json": f"{STATE_PATTERN}/state.json",
            "events": f"{STATE_PATTERN}/events.jsonl",
            "stages_dir": f"{STATE_PATTERN}/stages",
            "task_placeholder": "<task>",
        },
        "context": context_files,
        "commands": {
            "run": f"orchestrate run {source} --task <task>",
            "status": "orchestrate status <task>",
            "validate": f"orchestrate validate {source}",
            "begin": f"orchestrate state begin {source} --task <task>",
            "next": "orchestrate state next <task>",
            "start": "orchestrate state start <task> <stage>",
            "done": "orchestrate state done <task> <stage> --output <file>",
            "fail": "orchestrate state fail <task> <stage> --reason <text>",
            "note": "orchestrate state note <task> <stage> <text>",
        },
    }
