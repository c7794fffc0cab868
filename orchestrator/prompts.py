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
from typing import Any, Protocol

from .audit import verdict_schema
from .cost import estimate_range
from .fingerprint import digest, request_fingerprint
from .outcomes import Progress, StageInput
from .params import param_text
from .runners import StageRequest

__all__ = ["RunInputs", "request_builder"]

from .compiler import Compiled


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


def request_builder(
    prepared: RunInputs, rejected: Mapping[str, str] | None = None
) -> Callable[[str, Progress], StageInput]:
    """The function the engine calls to build a stage's input once its needs are done.

    ``rejected`` maps stages whose last output a person rejected to the note: such a
    stage is told so (and why) when it runs again.
    """
    plan = prepared.compiled.plan
    workflow = plan.workflow
    rendered = {agent.agent: agent for agent in prepared.compiled.rendered if not agent.coordinator}
    system_sha = {name: digest(agent.text, 64) for name, agent in rendered.items()}
    agent_inputs = {
        name: {"system": system_sha[name][:16], **{f"source:{src}": digest(data) for src, data in agent.sources}}
        for name, agent in rendered.items()
    }
    schema = verdict_schema()
    settings = {
        audit: digest(json.dumps([workflow.defaults.max_tokens, schema if audit else None], sort_keys=True))
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
        runner_keys = dict.fromkeys(plan.order, "anthropic")
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
            and (progress.decisions[gate].note or (gate in needs and not plan.stages[gate].runs_agent))
        ]

    def build(sid: str, progress: Progress) -> StageInput:
        stage = plan.stages[sid]
        outcomes = progress.outcomes
        if not stage.runs_agent:  # an approval gate: what flowed into it is what a person approves
            gate_inputs = {f"need:{n}": digest(outcomes[n].output) for n in stage.needs}
            gate_inputs["gate_message"] = digest(stage.approval_message)
            return StageInput.gate(gate_inputs)
        agent = stage.agent or ""
        audit = sid == plan.audit_stage
        referenced = checker.stages_read(sid)
        prompt = ""
        if stage.prompt:
            values = {
                "params": prepared.params,
                "task": prepared.task,
                "workflow": {"name": workflow.name, "description": workflow.description},
                "stage": {"id": sid, "agent": agent, "model": models[sid]},
                "stages": {
                    other: {
                        "output": outcomes[other].output,
                        "data": outcomes[other].data,
                        "status": outcomes[other].status,
                    }
                    for other in set(stage.needs) | referenced
                },
            }
            prompt = prepared.compiled.renderer.render_prompt(sid, values)
        shown = [o for o in plan.order if o != sid and plan.stages[o].runs_agent] if audit else stage.needs
        shown = [o for o in shown if o not in referenced and plan.stages[o].runs_agent]
        inputs: dict[str, str] = {
            **agent_inputs[agent],
            "model": models[sid],
            "settings": settings[audit],
            "runner": runner_keys[sid],
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
            else:
                text = outcome.output.strip() if outcome is not None else ""
                parts.append(f"## Output of stage `{other}` ({folder}/stages/{other}.md)\n\n{text or '(empty)'}")
            inputs[f"need:{other}"] = digest(parts[-1])
        for other in referenced:
            inputs[f"need:{other}"] = digest(outcomes[other].output if other in outcomes else "")
        for gate in approvals_above(sid, progress):
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
            model=models[sid],
            system=rendered[agent].text,
            prompt=message,
            max_tokens=workflow.defaults.max_tokens,
            task=prepared.task,
            structured=schema if audit else None,
        )
        cost = estimate_range(len(request.system) + len(message), request.max_tokens, models[sid], workflow.pricing)
        fingerprint = digest(request_fingerprint(request, system_sha[agent]) + runner_keys[sid], 64)
        return StageInput(request, inputs, fingerprint, cost[0] if cost else 0.0)

    return build
