"""The request of a stage: its system prompt, its user message, and what went into them.

The system prompt is the agent's compiled instructions (the same text as in the
generated configs). The user message holds the task and stage, the params, the
needs' outputs (every stage's, for the audit), approval notes from gates above,
audit findings the stage was sent back with, a rejection note, and the rendered
stage prompt. Each part also becomes a short digest in the stage's inputs, so a
changed fingerprint can be explained in words.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any, Protocol

from ..audit import verdict_schema
from ..cost import token_range
from ..fingerprint import digest, request_fingerprint
from ..manifest import Manifests
from ..params import param_text
from ..runners import ShellCommand, StageRequest
from ..runners.registry import kind_of
from .outcomes import Progress, StageInput

__all__ = [
    "RunInputs",
    "decide_condition",
    "foreach_items",
    "outcomes_read",
    "request_builder",
    "run_time_values",
    "workspace_section",
]

from ..compiler import Compiled


class RunInputs(Protocol):
    """What a request is made of, as a prepared run holds it."""

    @property
    def compiled(self) -> Compiled: ...
    @property
    def task(self) -> str: ...
    @property
    def params(self) -> dict[str, Any]: ...
    @property
    def offline(self) -> bool: ...
    @property
    def responses(self) -> dict[str, Any]: ...


def workspace_section(sid: str, tools: tuple[str, ...], bash: tuple[str, ...], shell: bool) -> str:
    """What a tool-using stage is told about its tools and their limits."""
    lines = [
        "## Your tools\n",
        f"You work in the project folder through these tools: {', '.join(tools)}. Paths are relative to the "
        "project root; nothing outside it can be read or changed.",
    ]
    if "bash" in tools:
        if bash:
            allowed = ", ".join(f"`{prefix}`" for prefix in bash)
            lines.append(
                f"bash runs only commands that start with: {allowed}"
                + (" (shell syntax allowed)." if shell else " (one plain command, no pipes or redirections).")
            )
        else:
            lines.append("bash is not allowed for this stage: every command will be refused.")
    lines.append("When the work is done, end your turn with a short summary of what you changed and why.")
    return "\n".join(lines)


def _stage_values(prepared: RunInputs, names: set[str], progress: Progress) -> dict[str, Any]:
    """``stages.<id>`` as templates see them: ``output`` is the structured data of a stage with an
    output_schema, else its text; ``text``, ``data`` and ``status`` are always there."""
    out: dict[str, Any] = {}
    for other in names:
        outcome = progress.outcomes.get(other)
        if outcome is None:
            continue
        structured = other in prepared.compiled.schemas
        out[other] = {
            "output": outcome.data if structured and outcome.data is not None else outcome.output,
            "text": outcome.output,
            "data": outcome.data,
            "status": outcome.status,
        }
    return out


def outcomes_read(prepared: RunInputs, spec_id: str) -> set[str]:
    """The stages whose outcomes a stage's request reads: its needs and the stages its prompt names (the audit:
    every stage)."""
    plan = prepared.compiled.plan
    if spec_id == plan.audit_stage:
        return set(plan.order)
    return set(plan.stages[spec_id].needs) | set(prepared.compiled.renderer.checker.stages_read(spec_id))


def run_time_values(prepared: RunInputs, sid: str, spec_id: str, progress: Progress) -> dict[str, Any]:
    """What a stage's prompt, ``if``, ``foreach`` and write scope can read when it starts."""
    plan = prepared.compiled.plan
    stage = plan.stages[spec_id]
    read = set(stage.needs) | set(prepared.compiled.renderer.checker.stages_read(spec_id))
    values: dict[str, Any] = {
        "params": prepared.params,
        "task": prepared.task,
        "workflow": {"name": plan.workflow.name, "description": plan.workflow.description},
        "stage": {"id": sid, "agent": stage.agent or "", "model": plan.model_for(spec_id)},
        "stages": _stage_values(prepared, read, progress),
    }
    instance = progress.instances.get(sid)
    if instance is not None:
        values["item"] = instance.item
    return values


def decide_condition(prepared: RunInputs) -> Callable[[str, Progress], str | None]:
    """A stage's ``if``: None to run it, else the reason it is skipped."""
    renderer = prepared.compiled.renderer

    def decide(sid: str, progress: Progress) -> str | None:
        expression = prepared.compiled.plan.stages[sid].condition
        if expression is None:
            return None
        value = renderer.evaluate(sid, "if", expression, run_time_values(prepared, sid, sid, progress))
        return None if value else f"its condition is false: if: {expression.strip()}"

    return decide


def foreach_items(prepared: RunInputs) -> Callable[[str, Progress], Any]:
    """The items a ``foreach`` stage fans out over."""
    renderer = prepared.compiled.renderer

    def items(sid: str, progress: Progress) -> Any:
        expression = prepared.compiled.plan.stages[sid].foreach or "[]"
        return renderer.evaluate(sid, "foreach", expression, run_time_values(prepared, sid, sid, progress))

    return items


def request_builder(
    prepared: RunInputs, rejected: Mapping[str, str] | None = None, workspace: Manifests | None = None
) -> Callable[[str, Progress], StageInput]:
    """The function the engine calls to build a stage's input once its needs are done.

    ``rejected`` maps stages whose last output a person rejected to the note: such a
    stage is told so (and why) when it runs again. ``workspace`` takes the manifests of
    what stages that act (tools, commands, agent CLIs) see; without it their fingerprint
    is their request alone.
    """
    plan = prepared.compiled.plan
    workflow = plan.workflow
    rendered = {agent.agent: agent for agent in prepared.compiled.rendered if not agent.coordinator}
    system_sha = {name: digest(agent.text, 64) for name, agent in rendered.items()}
    brief_sha = {name: digest(agent.brief, 64) for name, agent in rendered.items()}
    agent_inputs = {
        name: {
            "system": digest(system_sha[name] + brief_sha[name]),
            **{f"source:{src}": digest(data) for src, data in agent.sources},
        }
        for name, agent in rendered.items()
    }
    verdict = verdict_schema()
    schemas = prepared.compiled.schemas
    settings = {
        audit: digest(json.dumps([workflow.defaults.max_tokens, verdict if audit else None], sort_keys=True))
        for audit in (True, False)
    }
    folder = f"docs/ai/{prepared.task}"
    models = {sid: plan.model_for(sid) for sid in plan.order}
    checker = prepared.compiled.renderer.checker
    params_inputs = {f"param:{k}": digest(repr(v)) for k, v in prepared.params.items()}
    if prepared.offline:  # canned replies stand in for the model: a different script is a different model
        runner_keys = {
            sid: "offline:" + digest(json.dumps(prepared.responses.get(sid), sort_keys=True, default=str))
            for sid in plan.order
        }
    else:
        runner_keys = {sid: plan.runner_for(sid) for sid in plan.order}
    kinds = {sid: kind_of(plan.runner_for(sid)) for sid in plan.order if plan.runner_for(sid)}
    rejected = dict(rejected or {})
    ancestors: dict[str, set[str]] = {}

    def approvals_above(sid: str, progress: Progress) -> list[str]:
        if not progress.decisions:
            return []
        if sid not in ancestors:
            ancestors[sid] = plan.ancestors(sid)
        above = ancestors[sid]
        needs = set(plan.stages[sid].needs)
        return [
            gate
            for gate in plan.order
            if gate in progress.decisions
            and gate in above
            and (progress.decisions[gate].note or (gate in needs and plan.stages[gate].kind != "agent"))
        ]

    def build(sid: str, progress: Progress) -> StageInput:
        instance = progress.instances.get(sid)
        spec_id = instance.parent if instance is not None else sid
        stage = plan.stages[spec_id]
        outcomes = progress.outcomes
        if stage.kind == "approval":  # an approval gate: what flowed into it is what a person approves
            gate_inputs = {f"need:{n}": digest(outcomes[n].output) for n in stage.needs}
            gate_inputs["gate_message"] = digest(stage.approval_message)
            return StageInput.gate(gate_inputs)
        if stage.kind == "command":
            return shell_input(sid, spec_id, progress)
        agent = stage.agent or ""
        audit = spec_id == plan.audit_stage
        referenced = checker.stages_read(spec_id)
        prompt = ""
        if stage.prompt:
            prompt = prepared.compiled.renderer.render_prompt(
                spec_id, run_time_values(prepared, sid, spec_id, progress)
            )
        shown = [o for o in plan.order if o != sid and plan.stages[o].kind != "approval"] if audit else stage.needs
        shown = [o for o in shown if o not in referenced and plan.stages[o].kind != "approval"]
        inputs: dict[str, str] = {
            **agent_inputs[agent],
            "model": models[spec_id],
            "settings": settings[audit],
            "runner": runner_keys[spec_id],
            "template": digest(stage.prompt or ""),
            **params_inputs,
        }
        parts = [f"# Task `{prepared.task}`: stage `{sid}` of workflow `{workflow.name}`"]
        if audit:
            parts.append(
                "## What this workflow is for\n\n"
                + (workflow.description or "(the workflow has no description)")
                + "\n\nYou audit the output of every other stage, shown below in the order they ran."
            )
        if prepared.params:
            parts.append("## Params\n\n" + "\n".join(f"- {k}: {param_text(v)}" for k, v in prepared.params.items()))
        for other in shown:
            outcome = outcomes.get(other)
            if outcome is not None and outcome.status == "failed":
                text = f"(stage `{other}` failed: {outcome.error}; it may continue on failure, so work around it)"
                parts.append(f"## Stage `{other}` failed\n\n{text}")
            elif outcome is not None and outcome.conditional:
                parts.append(f"## Stage `{other}` was skipped\n\n({outcome.error})")
            else:
                text = outcome.output.strip() if outcome is not None else ""
                # A stage's description lives here, beside its output, rather than in every agent's instructions.
                purpose = (plan.stages[other].description or "").strip()
                about = f"Its purpose: {' '.join(purpose.split())}\n\n" if purpose else ""
                parts.append(f"## Output of stage `{other}` ({folder}/stages/{other}.md)\n\n{about}{text or '(empty)'}")
            inputs[f"need:{other}"] = digest(parts[-1])
        for other in referenced:
            inputs[f"need:{other}"] = digest(outcomes[other].output if other in outcomes else "")
        if instance is not None:
            shown_item = json.dumps(instance.item, indent=2, ensure_ascii=False, default=str)
            parts.append(
                f"## Your item\n\nThis stage runs once per item of a list; you are instance `{sid}` "
                f"(item {instance.index + 1}). Work on this item only:\n\n```json\n{shown_item}\n```"
            )
            inputs["item"] = digest(shown_item)
        for gate in approvals_above(spec_id, progress):
            decision = progress.decisions[gate]
            who = f" by {decision.by}" if decision.by else ""
            parts.append(
                f"## Approval of stage `{gate}`\n\nApproved{who}."
                + (f" Note: {decision.note}" if decision.note else "")
            )
            inputs[f"note:{gate}"] = digest(decision.note)
        findings = progress.feedback.get(sid)
        if findings:
            lines = [
                f"- [{f.severity}] {f.title}"
                + (f" — evidence: {f.evidence}" if f.evidence else "")
                + (f" — fix: {f.fix}" if f.fix else "")
                for f in findings
            ]
            parts.append(
                f"## The audit sent this stage back (round {progress.round})\n\n"
                "Your earlier output did not pass the audit. Address every finding below, and say how.\n\n"
                + "\n".join(lines)
            )
            inputs["feedback"] = digest(parts[-1])
        if sid in rejected:
            note = rejected[sid]
            parts.append(
                "## Your previous output was rejected\n\nA person reviewed it and rejected it"
                + (f": {note}" if note else ".")
                + " Do the stage again with that in mind."
            )
            inputs["rejected"] = digest(note)
        tools = plan.tools_for(spec_id) if kinds[spec_id].tools or prepared.offline else ()
        permissions = plan.permissions_for(spec_id)
        if tools:
            parts.append(workspace_section(spec_id, tools, permissions.bash, permissions.shell))
        schema = schemas.get(spec_id)
        if schema is not None:
            parts.append(
                "## Output format\n\nReply with one JSON object that matches this JSON Schema (it is checked):"
                f"\n\n```json\n{json.dumps(schema, indent=2)}\n```"
            )
        problem = progress.contract.get(sid)
        if problem:
            parts.append(
                f"## Your previous try broke the stage's contract\n\n{problem}\n\nFix exactly this in this try."
            )
            inputs["contract"] = digest(problem)
        if prompt.strip():
            task_text = prompt.strip()
        elif audit:
            task_text = (
                "Audit the work above against the workflow's purpose, the params and the plan, and submit your verdict."
            )
        else:
            task_text = (
                f"Stage `{sid}` has no prompt of its own: do the part of the work that the upstream outputs "
                "assign to it, as your instructions describe."
            )
        parts.append("## Your stage\n\n" + task_text)
        message = "\n\n".join(parts) + "\n"
        inputs["message"] = digest(message)
        request = StageRequest(
            stage_id=sid,
            agent=agent,
            model=models[spec_id],
            system=rendered[agent].text,
            prompt=message,
            max_tokens=workflow.defaults.max_tokens,
            task=prepared.task,
            output_schema=verdict if audit else schema,
            verdict=audit,
            brief=rendered[agent].brief,
            effort=plan.effort_for_agent(agent),
            thinking=plan.thinking_for_agent(agent),
            batch=stage.batch,
            tools=tuple(tools),
            max_turns=plan.max_turns_for(spec_id) if tools else 1,
            bash=permissions.bash if "bash" in tools else (),
            shell=permissions.shell if "bash" in tools else False,
            bash_timeout=permissions.bash_timeout if "bash" in tools else 120.0,
            writes=plan.writes_for(spec_id) if "bash" in tools else ("**",),
            network=plan.network_for(spec_id) if "bash" in tools else False,
        )
        extra = request.settings()
        if extra:
            inputs["settings"] = digest(json.dumps([inputs["settings"], extra], sort_keys=True))
        # The fewest tokens it can send: the budget's check before a stage starts prices them at the cheapest
        # (read from the cache); each request's worst case is reserved when it is sent.
        low, _ = token_range(len(request.brief) + len(request.system) + len(message))
        base = request_fingerprint(request, system_sha[agent], brief_sha[agent]) + runner_keys[spec_id]
        acts = (bool(tools) and not prepared.offline) or kinds[spec_id].acts
        return seeing(request, inputs, base, low) if acts else StageInput(request, inputs, digest(base, 64), low)

    def seeing(request: StageRequest, inputs: dict[str, str], base: str, low: int = 0) -> StageInput:
        """The input of a stage that acts in the workspace: what it sees there is part of its fingerprint. It is
        recorded as the stage left the workspace (``settle``), so an unchanged rerun finds what it left."""
        if workspace is None:
            return StageInput(request, inputs, digest(base, 64), low)

        def settle() -> StageInput:
            key, _ = workspace.take()
            return StageInput(request, {**inputs, "workspace": key}, digest(base + key, 64), low)

        return replace(settle(), settle=settle)

    def shell_input(sid: str, spec_id: str, progress: Progress) -> StageInput:
        stage = plan.stages[spec_id]
        command = ShellCommand(stage.run or "", tuple(sorted(stage.env.items())), stage.cwd or ".")
        request = StageRequest(
            stage_id=sid,
            agent="",
            model="",
            system="",
            prompt=f"$ {command.command}",
            max_tokens=0,
            task=prepared.task,
            command=command,
            writes=plan.writes_for(spec_id),
            network=plan.network_for(spec_id),
        )
        inputs = {
            "runner": "shell",
            "command": digest(json.dumps(request.settings(), sort_keys=True)),
            **{f"need:{n}": digest(progress.outcomes[n].output) for n in stage.needs if n in progress.outcomes},
        }
        return seeing(request, inputs, request_fingerprint(request) + "shell")

    return build
