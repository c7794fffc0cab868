"""How a run reads to people: ``workflow-state.md``, and the summary printed at the end and by ``status``.

Both are pure functions of a ``RunState``, so the markdown is always regenerated
from ``state.json`` and never parsed back, and ``status`` shows the same picture
as the run did.
"""

from __future__ import annotations

import re

from ..drawing import Drawing, render
from ..params import param_text
from .model import RunState, StageState

__all__ = ["format_cost", "format_duration", "format_tokens", "next_steps", "render_markdown", "summary_lines"]


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes}m {rest:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m"


def format_cost(cost: float | None) -> str:
    if cost is None:
        return "unknown"
    return f"${cost:.4f}" if cost < 1 else f"${cost:,.2f}"


def format_tokens(stage_or_run: StageState | RunState) -> str:
    tokens = stage_or_run.tokens
    text = f"{tokens.input:,} in / {tokens.output:,} out"
    if tokens.cache_read or tokens.cache_write:
        text += f" (cache {tokens.cache_read:,} read, {tokens.cache_write:,} written)"
    return text


def _cell(text: str) -> str:
    return " ".join(text.replace("|", "\\|").split())


def _param_lines(name: str, value: object) -> list[str]:
    """A param as given, spaces and line breaks kept (``two  words`` is not ``two words``)."""
    text = param_text(value)
    if "\n" not in text and "`" not in text:
        return [f"  - `{name}`: `{text}`" if text.strip() == text and text else f"  - `{name}`: `` {text} ``"]
    fence = "`" * max(3, max((len(run) for run in re.findall(r"`+", text)), default=0) + 1)
    return [f"  - `{name}`:", f"    {fence}", *(f"    {line}" for line in text.splitlines()), f"    {fence}"]


def _names(ids: list[str]) -> str:
    return ", ".join(ids)


def _headline(state: RunState) -> str:
    counts = state.counts()
    if state.status == "running":
        done = sum(counts.get(k, 0) for k in ("succeeded", "failed", "skipped"))
        return f"running: {done} of {len(state.stages)} stages done, {counts.get('running', 0)} running"
    if state.status == "succeeded":
        rounds = f" (after {len(state.rounds)} audit rounds)" if len(state.rounds) > 1 else ""
        return f"succeeded: every stage succeeded and the audit passed{rounds}"
    if state.status == "interrupted":
        return "interrupted before it finished"
    if state.status == "waiting_approval":
        waiting = [s.id for s in state.stages.values() if s.status == "waiting_approval"]
        return f"waiting for approval: {_names(waiting)}"
    if state.status == "budget_exceeded":
        return f"stopped at its budget of {format_cost(state.budget_usd)}: {format_cost(state.cost_usd)} spent"
    if state.status == "partial":
        return "partly run: only the stages asked for ran"
    if counts.get("failed"):
        failed = [s.id for s in state.stages.values() if s.status == "failed"]
        return f"failed: {_names(failed)} failed" + (
            f", {counts['skipped']} stage{'s' if counts['skipped'] > 1 else ''} skipped"
            if counts.get("skipped")
            else ""
        )
    if state.audit is not None and state.audit.verdict == "fail":
        rounds = f" after {len(state.rounds)} rounds" if len(state.rounds) > 1 else ""
        return f"failed: the audit said fail{rounds} ({len(state.audit.findings)} findings)"
    return "failed"


def next_steps(state: RunState) -> list[str]:
    """What a person (or agent) reading the state should do now."""
    rerun = f"`{state.command}`" if state.command else "the same `orchestrate run` command"
    if state.driver == "state" and state.status in ("running", "failed", "interrupted"):
        driven = [
            f"This run is driven stage by stage: `orchestrate state next {state.task}` lists what may start; "
            f"`orchestrate state start {state.task} STAGE` starts one."
        ]
        driven += [
            f"Stage `{s.id}` failed: {' '.join((s.error or '').split())}. Start it again to retry."
            for s in state.stages.values()
            if s.status == "failed"
        ]
        return driven
    if state.status == "running":
        return [f"Wait for the run, or follow it with `orchestrate status {state.task}`."]
    if state.status == "succeeded":
        return [
            "Review the stage outputs in `stages/` and the changes in your working tree, then commit them.",
        ]
    if state.status == "interrupted":
        return [f"Continue with {rerun}: finished stages are kept, the interrupted ones run again."]
    if state.status == "waiting_approval":
        gate_steps: list[str] = []
        for stage in state.stages.values():
            if stage.status != "waiting_approval":
                continue
            what = f"read `{stage.output}`, then " if stage.output else ""
            message = f" ({stage.approval.message})" if stage.approval and stage.approval.message else ""
            gate_steps.append(
                f"Stage `{stage.id}` waits for approval{message}: {what}run "
                f"`orchestrate approve {state.task} {stage.id} [--note TEXT]` or "
                f"`orchestrate reject {state.task} {stage.id} --note TEXT`."
            )
        gate_steps.append(f"Then continue with {rerun}.")
        return gate_steps
    if state.status == "budget_exceeded":
        return [
            f"{state.note}." if state.note else "The run's budget is spent.",
            f"Raise `budget.usd` in the workflow (or pass `--budget USD`), then continue with {rerun}; "
            "finished stages are kept.",
        ]
    if state.status == "partial":
        return [f"Run {rerun} to bring the stages downstream up to date."]
    steps: list[str] = []
    failed = [s for s in state.stages.values() if s.status == "failed"]
    for stage in failed:
        steps.append(f"Stage `{stage.id}` failed: {' '.join((stage.error or '').split())}. Fix the cause.")
    if not failed and state.audit is not None and state.audit.verdict == "fail":
        owners = sorted({f.stage for f in state.audit.findings if f.severity in ("critical", "major")})
        steps.append(
            "The audit failed: fix the critical and major findings above"
            + (f" (stages {', '.join(f'`{o}`' for o in owners)})" if owners else "")
            + "."
        )
    steps.append(
        f"Then run {rerun} again: unchanged finished stages are kept; `--from STAGE` redoes a stage and "
        "what follows it."
    )
    return steps


def _detail(stage: StageState) -> str:
    if stage.status == "waiting_approval":
        message = stage.approval.message if stage.approval and stage.approval.message else "waiting for approval"
        link = f" — [{stage.output}]({stage.output})" if stage.output else ""
        return _cell(message) + link
    if stage.output and stage.status == "succeeded":
        kept = f" (kept from run `{stage.from_run}`)" if stage.reused and stage.from_run else ""
        approved = ""
        if stage.approval is not None and stage.approval.status == "approved":
            approved = " — approved" + (f" by {stage.approval.by}" if stage.approval.by else "")
        return f"[{stage.output}]({stage.output}){kept}{approved}"
    if stage.gate and stage.approval is not None and stage.approval.status == "approved":
        who = f" by {stage.approval.by}" if stage.approval.by else ""
        return _cell(f"approved{who}" + (f": {stage.approval.note}" if stage.approval.note else ""))
    return _cell(stage.error or "")


def render_markdown(state: RunState) -> str:
    """``workflow-state.md``: header, stage table, graph coloured by status, audit, next steps."""
    lines = [f"# {state.workflow}: {state.task}", ""]
    lines.append(f"**Status: {_headline(state)}**")
    lines.append("")
    total = f"{format_tokens(state)}, estimated {format_cost(state.cost_usd)}"
    lines.append(f"- Workflow: `{state.workflow}` ({state.workflow_file}), run `{state.run_id}`")
    if state.params:
        lines.append("- Params:")
        for name, value in state.params.items():
            lines += _param_lines(name, value)
    lines.append(f"- Started {state.started}" + (f", finished {state.finished}" if state.finished else ""))
    lines.append(f"- Duration: {format_duration(state.duration)}; tokens: {total}")
    if state.budget_usd is not None:
        lines.append(f"- Budget: {format_cost(state.budget_usd)}, {format_cost(state.cost_usd)} spent")
    if state.resumed:
        lines.append(f"- Continued {state.resumed} time{'s' if state.resumed > 1 else ''} after stopping")
    if state.offline:
        lines.append("- Offline run: no model was called; outputs are placeholders or canned replies.")
    if state.command:
        lines.append(f"- Command: `{state.command}`")
    lines += ["", "## Stages", ""]
    lines.append("| Stage | Agent | Model | Status | Tries | Duration | Tokens | Cost | Output or reason |")
    lines.append("|---|---|---|---|---|---|---|---|---|")
    for stage in state.stages.values():
        detail = _detail(stage)
        runs = stage.agent or ("approval" if stage.gate else "command")
        lines.append(
            # Tries: the stage's own (retries count); a tool loop's many requests are one try.
            f"| `{stage.id}` | {runs} | {stage.model} | {stage.status} | {stage.tries or ''} | "
            f"{format_duration(stage.duration) if stage.duration is not None else ''} | "
            f"{format_tokens(stage) if stage.attempts else ''} | "
            f"{format_cost(stage.cost_usd) if stage.attempts else ''} | {detail} |"
        )
    drawn = [s for s in state.stages.values() if s.instance_of is None]  # instances show in the table only
    drawing = Drawing(
        name=state.workflow,
        order=[s.id for s in drawn],
        needs={s.id: s.needs for s in drawn},
        agents={s.id: s.agent or ("approval" if s.gate else "command") for s in drawn},
        audit_stage=state.audit_stage,
    )
    status = {s.id: s.status for s in state.stages.values()}
    lines += ["", "## Graph", "", "```mermaid", render(drawing, "mermaid", status), "```", ""]
    lines += ["## Audit", ""]
    if state.audit is None:
        audit = state.stages.get(state.audit_stage)
        lines.append(f"No verdict yet (stage `{state.audit_stage}` is {audit.status if audit else 'missing'}).")
    else:
        verdict = state.audit
        lines.append(f"**Verdict: {verdict.verdict}.** {_cell(verdict.summary)}")
        if verdict.findings:
            lines += ["", "| Severity | Stage | Finding | Evidence | Fix |", "|---|---|---|---|---|"]
            for finding in verdict.findings:
                lines.append(
                    f"| {finding.severity} | `{finding.stage}` | {_cell(finding.title)} | "
                    f"{_cell(finding.evidence)} | {_cell(finding.fix)} |"
                )
        if verdict.checklist:
            lines += ["", "Checklist: " + ", ".join(f"{c.item} {c.result}" for c in verdict.checklist) + "."]
    if len(state.rounds) > 1 or (state.rounds and state.rounds[-1].rework):
        lines += ["", f"Rounds (at most {state.max_rounds}):", ""]
        for item in state.rounds:
            sent = f"; sent back {', '.join(item.rework)}" if item.rework else ""
            lines.append(f"{item.round}. {item.verdict} — {item.findings} findings{sent}. {_cell(item.summary)}")
    noted = [(s.id, note) for s in state.stages.values() for note in s.notes]
    if noted:
        lines += ["", "## Notes", ""]
        lines += [
            f"- `{sid}` ({note.time}{', ' + note.by if note.by else ''}): {_cell(note.text)}" for sid, note in noted
        ]
    lines += ["", "## What next", ""]
    lines += [f"- {step}" for step in next_steps(state)]
    return "\n".join(lines) + "\n"


def summary_lines(state: RunState, folder: str) -> list[str]:
    """The plain-text summary a terminal gets at the end of a run and from ``status``."""
    width = max((len(s) for s in state.stages), default=5)
    lines = [f"{state.workflow}: {state.task}: {_headline(state)}", ""]
    for stage in state.stages.values():
        tokens = format_tokens(stage) if stage.attempts else ""
        extra = f"  {stage.error}" if stage.error and stage.status in ("failed", "skipped", "interrupted") else ""
        if stage.status == "succeeded" and stage.reused:
            extra = f"  kept ({stage.reason})" if stage.reason else "  kept"
        elif stage.status == "waiting_approval":
            extra = f"  {stage.approval.message}" if stage.approval and stage.approval.message else ""
        took = format_duration(stage.duration) if stage.duration is not None and not stage.reused else ""
        status = stage.status.replace("_", " ")
        lines.append(f"  {stage.id:<{width}}  {status:<16}  {took:>8}  {tokens}{extra}".rstrip())
    lines.append("")
    budget = f" of a {format_cost(state.budget_usd)} budget" if state.budget_usd is not None else ""
    lines.append(
        f"Total: {format_duration(state.duration)}, {format_tokens(state)}, estimated "
        f"{format_cost(state.cost_usd)}{budget}"
    )
    if state.audit is not None:
        lines.append(f"Audit: {state.audit.verdict}: {state.audit.summary}")
        for finding in state.audit.findings:
            lines.append(f"  - {finding.severity} [{finding.stage}] {finding.title}")
    lines.append(f"State: {folder}/workflow-state.md")
    lines += next_steps(state)
    return lines
